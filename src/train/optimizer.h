// SGD with momentum and Adam computed as PyTorch 1.13 computes them (L2 weight decay added to the gradient), over
// the methods' named parameter groups. State is kept by parameter name, so a checkpoint holds it as a plain
// {name: tensor} dict that survives rebuilding the model and that Python can read.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "methods/method.h"

namespace adafocus::train {

struct OptimizerOptions {
  std::string kind = "sgd";  ///< sgd | adam
  double momentum = 0.9;
  double weight_decay = 1e-4;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  /// train.optimizer, train.momentum and train.weight_decay of `config`.
  static OptimizerOptions from_config(const Config& config);
};

class Optimizer {
 public:
  Optimizer(std::vector<methods::ParamGroup> groups, OptimizerOptions options);
  void zero_grad();
  /// One update with learning rate `lr` times each group's multiplier; parameters without a gradient are skipped.
  void step(double lr);
  /// Scales all gradients so that their global L2 norm is at most `max_norm`; returns the norm before clipping.
  double clip_grad_norm(double max_norm);
  /// "<param>.momentum_buffer", "<param>.exp_avg", "<param>.exp_avg_sq", "<param>.step".
  torch::OrderedDict<std::string, torch::Tensor> state() const;
  void load_state(const torch::OrderedDict<std::string, torch::Tensor>& state);

 private:
  std::vector<methods::ParamGroup> groups_;
  OptimizerOptions options_;
  std::map<std::string, torch::Tensor> state_;
};

/// Learning rate of step `step` of epoch `epoch` (`steps` per epoch, `epochs` in all):
///   cosine    0.5 lr (1 + cos(pi epoch / epochs)), once per epoch, as the official code
///   onecycle  PyTorch's OneCycleLR (defaults): cosine up from lr/25 over the first `warmup` of all steps, then
///             cosine down to lr/25/1e4
///   step      lr x 0.1 per entry of `lr_steps` <= epoch (official TSM and AdaFuse: 20 40)
///   constant  lr
double learning_rate(const std::string& schedule, double lr, int64_t epoch, int64_t step, int64_t steps,
                     int64_t epochs, double warmup, const std::vector<int64_t>& lr_steps = {});

}  // namespace adafocus::train
