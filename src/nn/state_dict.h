// State dicts of modules, with PyTorch's names and order, and strict loading that explains every mismatch.
#pragma once

#include <torch/torch.h>

#include <string>

namespace adafocus::nn {

using StateDict = torch::OrderedDict<std::string, torch::Tensor>;

/// Parameters and buffers of `module` in PyTorch's state_dict order (module by module, parameters then buffers).
StateDict state_dict(const torch::nn::Module& module);

/// Copies `state` into `module`. Strict: any unknown key, missing key or shape mismatch throws adafocus::Error that
/// lists them (key and both shapes), naming `source` (a file name). A leading "module." (DataParallel) is ignored.
void load_state_dict(torch::nn::Module& module, const StateDict& state, const std::string& source);

/// `state` without the "module." prefix that DataParallel/DDP checkpoints put on every key.
StateDict strip_module_prefix(const StateDict& state);

}  // namespace adafocus::nn
