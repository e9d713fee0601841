// What an experiment may use of the machine (the CLI's global --threads and --device).
#pragma once

#include <torch/torch.h>

#include <string>

namespace adafocus::experiments {

struct Resources {
  int threads = 1;             ///< intra-op threads of this process
  std::string device = "cpu";  ///< cpu | cuda
  torch::Device torch_device() const { return torch::Device(device); }
};

}  // namespace adafocus::experiments
