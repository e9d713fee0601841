// Folded convolutions run one after another by oneDNN directly - the library LibTorch's own CPU convolutions call -
// so that what follows a convolution runs in the same pass over memory: ReLU6, a 3x3 depthwise convolution with its
// ReLU6 (oneDNN's depthwise post-op: the 1x1 expansion's output is made and consumed in cache-sized tiles, never
// written out whole) and a residual addition. MobileNetV2's inverted residual block becomes two convolutions;
// LibTorch's at::conv2d has none of these fusions, and the block's expanded maps, written and read three times
// there, left the glance bound by memory traffic (docs/performance.md). Every other folded convolution (the ResNets')
// runs as a chain of one in channels-last (nn::FoldedConv).
#pragma once

#include <torch/torch.h>

#include <memory>
#include <optional>
#include <vector>

#include "nn/backbone.h"

namespace adafocus::nn {

/// Whether oneDNN runs its AVX-512 kernels on this CPU (its effective ISA), asked once.
bool onednn_avx512();

/// A folded convolution (weight (Cout, Cin / groups, k, k), padding (k - 1) / 2), ReLU6 when `relu6`; with a
/// `depthwise` ((Cout, 1, 3, 3), padding 1) that convolution and a ReLU6 on its output; `residual` >= 1: the input of
/// layer `residual` of the chain added to the output; ReLU when `relu` (after the rest).
struct ChainLayer {
  FoldedConv conv;
  int64_t stride = 1, groups = 1;
  bool relu6 = false;
  std::optional<FoldedConv> depthwise = std::nullopt;
  int64_t depthwise_stride = 1;
  int64_t residual = -1;
  bool relu = false;
};

class ConvChain {
 public:
  /// `channels_last`: the maps are channels-last (nhwc) from the input to the output, which each layer writes in
  /// place - a ResNet's folded convolution as a chain of one, between LibTorch tensors in channels-last. No depthwise
  /// post-op there (in nhwc, oneDNN 2.6's gives wrong values). Otherwise between the layers the maps stay in oneDNN's
  /// blocked layout (nChw16c with AVX-512, else nChw8c).
  explicit ConvChain(const std::vector<ChainLayer>& layers, bool channels_last = false);
  /// Whether x can take this path: a float CPU tensor (or bf16 under bf16 autocast), no gradient recorded, no
  /// autocast other than bf16, folding on (the FLOPs counter's UnfoldedGuard off), no ChainOffGuard alive. Otherwise
  /// the caller runs its LibTorch layers.
  static bool runs(const torch::Tensor& x);
  /// x: (N, Cin, H, W) -> the last layer's output (N, Cout, H', W'), channels-last; under bf16 autocast computed and
  /// returned in bf16 (weights converted once), as autocast's convolutions would. Each weight is reordered once per
  /// layout a primitive asks for, primitives are made once per input size. Undefined where oneDNN has only its
  /// reference implementation for a layer at these sizes (orders of magnitude slower than LibTorch's path, which the
  /// caller then takes): bf16 on a CPU without AVX-512, for one.
  torch::Tensor operator()(const torch::Tensor& x) const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

/// While alive, no ConvChain runs on this thread: the folded LibTorch layers do, each folded convolution on LibTorch's
/// prepacked weights (fp32; autocast's conv2d in bf16) - to time one against the other.
class ChainOffGuard {
 public:
  ChainOffGuard();
  ~ChainOffGuard();
  ChainOffGuard(const ChainOffGuard&) = delete;
  ChainOffGuard& operator=(const ChainOffGuard&) = delete;

 private:
  bool previous_;
};

}  // namespace adafocus::nn
