// Reading and writing PyTorch `torch.save` files without Python.
//
// LibTorch 1.13 cannot read state dicts: torch::pickle_load turns every collections.OrderedDict into None, and
// torch::load only reads TorchScript archives. This reader interprets the pickle itself over LibTorch's zip reader:
// it reads the zip format (PyTorch >= 1.6) and the legacy format (older releases, e.g. the official MobileNetV2
// weights of 2018), state dicts, nested checkpoints such as {'state_dict': ..., 'epoch': ...}, and plain tensors.
// Objects it does not know (argparse.Namespace, numpy scalars, ...) are kept as opaque values, never executed.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace adafocus::io {

using TensorDict = torch::OrderedDict<std::string, torch::Tensor>;

/// A Python value read from a torch.save file.
struct PyValue {
  enum class Kind { None, Bool, Int, Float, String, Bytes, Tensor, List, Tuple, Dict, Global, Object, Storage };
  Kind kind = Kind::None;
  bool boolean = false;
  int64_t integer = 0;
  double number = 0.0;
  std::string text;       // String/Bytes payload; Global/Object: "module.name"
  torch::Tensor tensor;   // Tensor; Storage: the flat storage
  std::shared_ptr<std::vector<PyValue>> items;                         // List, Tuple; Object: its arguments
  std::shared_ptr<std::vector<std::pair<PyValue, PyValue>>> entries;  // Dict, in insertion order

  bool is_dict() const { return kind == Kind::Dict; }
  bool is_tensor() const { return kind == Kind::Tensor; }
  /// The value under string key `key` of a dict, or nullptr.
  const PyValue* get(const std::string& key) const;
  /// A short description for messages: "dict with keys [state_dict, epoch]", "tensor (3, 4)", "int".
  std::string describe() const;
};

/// Reads any torch.save file. Throws adafocus::Error naming the file for missing, empty, truncated or foreign files.
PyValue read_pth(const std::string& path);

/// Reads a file holding one tensor (`torch.save(tensor, path)`).
torch::Tensor read_tensor(const std::string& path);

/// Reads a state dict: the file's top-level dict of tensors, or the one under 'state_dict', 'model_state_dict',
/// 'model' or 'net' (official .pth.tar checkpoints). Keys keep any "module." prefix.
TensorDict read_state_dict(const std::string& path);

/// Writes `value` in the zip torch.save format, atomically (temporary file + rename).
void write_pth(const std::string& path, const c10::IValue& value);
/// Writes a state dict that Python's torch.load returns as a dict and load_state_dict(strict=True) accepts.
void write_state_dict(const std::string& path, const TensorDict& state);
/// Writes one tensor; Python's torch.load returns it as a tensor.
void write_tensor(const std::string& path, const torch::Tensor& tensor);

}  // namespace adafocus::io
