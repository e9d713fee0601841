#include "test_util.h"

#include <unistd.h>

#include <fstream>
#include <random>

#include "core/files.h"
#include "data/synthetic.h"

namespace adafocus::test {

Config tiny_adafocus(const std::string& method) {
  Config c = Config::defaults();
  c.set("model.method=" + method);
  for (const char* kv :
       {"model.glance.arch=resnet10", "model.glance.base_width=4", "model.glance.stem=small",
        "model.glance.resolution=16", "model.local.arch=resnet10", "model.local.base_width=4",
        "model.local.stem=small_s2", "model.patch_size=24", "model.classifier_hidden=32", "model.resize=area",
        "data.segments=4", "data.input_size=64", "model.dropout=0.0", "model.fc_dropout=0.0"})
    c.set(kv);
  if (method == "adafocus_v2" || method == "adafocus_v1") {
    c.set("model.policy_channels=8");
    c.set("model.policy_hidden=16");
  } else {
    c.set("model.policy_channels=4");
  }
  return c;
}

void make_tiny_benchmark(const std::string& out) {
  data::SyntheticOptions o;
  o.out = out;
  o.train = 8;
  o.val = 4;
  o.size = 64;
  o.frames = 8;
  o.seed = 3;
  o.threads = 1;
  data::make_synthetic(o);
}

const std::string& reference_dir() {
  static const std::string dir = [] {
    const char* env = std::getenv("ADAFOCUS_TEST_REFERENCE");
    std::string d = env ? env : ADAFOCUS_BINARY_DIR "/reference";
    if (!std::filesystem::exists(d + "/.done")) {
      const int status = run_reference_script("backbones " + d);
      if (status != 0) throw std::runtime_error("tests/python/reference.py failed; is python3-torchvision installed?");
    }
    return d;
  }();
  return dir;
}

std::string reference(const std::string& name) { return reference_dir() + "/" + name; }

int run_reference_script(const std::string& args) {
  const std::string command = "/usr/bin/python3 " ADAFOCUS_SOURCE_DIR "/tests/python/reference.py " + args;
  return std::system(command.c_str());
}

::testing::AssertionResult AllCloseRelative(const torch::Tensor& actual, const torch::Tensor& expected, double rtol) {
  if (!actual.sizes().equals(expected.sizes()))
    return ::testing::AssertionFailure() << "shape " << actual.sizes() << " != expected " << expected.sizes();
  const auto a = actual.to(torch::kDouble), e = expected.to(torch::kDouble);
  const double scale = e.abs().max().item<double>();
  const double error = (a - e).abs().max().item<double>();
  if (error <= rtol * scale) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max abs error " << error << " > " << rtol << " x max |expected| " << scale;
}

TempDir::TempDir() {
  std::random_device rd;
  dir_ = std::filesystem::temp_directory_path() /
         ("adafocus_test_" + std::to_string(::getpid()) + "_" + std::to_string(rd()));
  std::filesystem::create_directories(dir_);
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

}  // namespace adafocus::test
