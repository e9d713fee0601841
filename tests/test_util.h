// Shared test helpers: the Python reference data, tolerance checks, temporary directories.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <string>

#include "core/config.h"
#include "core/error.h"

namespace adafocus::test {

/// The directory of reference files written by tests/python/reference.py (PyTorch + torchvision). ctest generates
/// it once before the tests (fixture); a test binary run alone generates it on first use.
const std::string& reference_dir();
/// reference_dir() + "/" + name
std::string reference(const std::string& name);

/// Runs tests/python/reference.py with `args` under /usr/bin/python3; returns its exit status.
int run_reference_script(const std::string& args);

/// max |actual - expected| <= rtol * max |expected|, and equal shapes.
::testing::AssertionResult AllCloseRelative(const torch::Tensor& actual, const torch::Tensor& expected,
                                            double rtol = 1e-4);

/// A small AdaFocus model (model.method = `method`): 4 frames of 64 px, narrow ResNet-10s, 24 px patches or
/// frame-wise cubes, no dropout; AdaFocus V1's and V2's policy with 8 channels and a 16-unit GRU, V3's with 4 channels.
Config tiny_adafocus(const std::string& method);

/// A tiny built-in benchmark in `out`: 8 training and 4 val videos of 8 frames at 64 px (frame folders), seed 3.
void make_tiny_benchmark(const std::string& out);

/// A fresh directory under the system temp dir, removed with everything in it at scope end.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

 private:
  std::filesystem::path dir_;
};

/// Runs `f`, which must throw adafocus::Error, and returns the error's full text (message, where, hint).
template <typename F>
std::string error_of(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no adafocus::Error thrown";
  return "";
}

/// Writes `bytes` to `path`.
void write_bytes(const std::string& path, const std::string& bytes);

}  // namespace adafocus::test
