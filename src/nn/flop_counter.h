// FLOPs as the papers count them (thop's convention, which reproduces the constants hard-coded in the official
// repos): multiply-accumulates of convolutions, linear layers, matrix products and recurrent layers, plus one per
// batch-norm channel per sample. Pooling, activations and element-wise ops count zero.
//
// The counter observes the operators a forward actually runs (LibTorch's RecordFunction), so any model - backbone,
// policy, classifier, a whole method - is measured from its own layers at its real input size, never hard-coded.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include "nn/backbone.h"

namespace adafocus::nn {

struct LayerFlops {
  std::string name;  // module path from the parameter names ("layer1.0.conv1"), else the operator
  std::string op;    // conv, linear, matmul, batch_norm, gru, ...
  std::vector<int64_t> input_shape, output_shape;
  int64_t macs = 0;
};

struct FlopsReport {
  int64_t total = 0;  // MACs (+ BN channels) of the whole forward
  std::vector<LayerFlops> layers;
  double gflops() const { return static_cast<double>(total) * 1e-9; }
};

/// Runs `forward` once and counts what it computes. `module` names the layers (via its parameters); operators on
/// tensors that are not its parameters are named after the operator. Runs on the calling thread only.
FlopsReport count_flops(const torch::nn::Module& module, const std::function<void()>& forward);

/// Whether a count_flops is under way on this thread.
bool counting_flops();

/// Adds the `macs` of one of our own kernels (src/nn/kernels.h), which run no LibTorch operator the counter could
/// observe, to the count under way on this thread, if any, as a layer `op` with that output shape.
void count_kernel(const std::string& op, const std::vector<int64_t>& output_shape, int64_t macs);

/// Per-frame FLOPs of `backbone` without its classifier (feature map + global pooling) on `height` x `width` frames,
/// measured on one clip of `frames` frames (the TSM segment count, else 1) in eval mode.
FlopsReport backbone_flops(BackboneImpl& backbone, int64_t height, int64_t width, int64_t frames = 1);

}  // namespace adafocus::nn
