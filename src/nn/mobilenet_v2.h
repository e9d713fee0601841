// MobileNetV2 (Sandler et al. 2018) with torchvision's layer layout and parameter names, a width multiplier, and the
// temporal shift of TSM in the residual inverted blocks. import_state_dict also reads the layout of the official
// AdaFocus / TSM MobileNetV2 (tonylins' `mobilenetv2_1.0-f2a8633.pth.tar`: features.N.conv.{0,1,3,4,6,7},
// classifier.weight).
#pragma once

#include "nn/backbone.h"
#include "nn/fused_conv.h"

namespace adafocus::nn {

/// Conv2d (no bias) + BatchNorm2d + ReLU6, registered as "0" and "1" like torchvision's Conv2dNormActivation.
class ConvBNReLU6Impl : public torch::nn::Module {
 public:
  ConvBNReLU6Impl(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t groups = 1);
  /// x: (N, in, H, W) -> (N, out, ceil(H/stride), ceil(W/stride))
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::Conv2d conv{nullptr};     // "0"
  torch::nn::BatchNorm2d bn{nullptr};  // "1"
  FoldedConv folded;                   // BackboneImpl::fold_batchnorm
};
TORCH_MODULE(ConvBNReLU6);

/// Expand 1x1 (omitted when expand_ratio is 1) -> depthwise 3x3 -> project 1x1, residual when shapes allow.
class InvertedResidualImpl : public torch::nn::Module {
 public:
  InvertedResidualImpl(int64_t in, int64_t out, int64_t stride, int64_t expand_ratio, int64_t tsm_segments,
                       int64_t shift_div);
  /// x: (N, in, H, W) -> (N, out, ceil(H/stride), ceil(W/stride))
  torch::Tensor forward(const torch::Tensor& x);
  /// Whether the temporal shift runs here: as official TSM, only in residual blocks with an expansion, on the input
  /// of the expanding convolution (the residual branch's), never on the identity.
  bool shifts() const { return tsm_segments_ > 0 && use_residual && expand_ratio != 1; }

  torch::nn::Sequential conv;  // "conv": [ConvBNReLU6 expand,] ConvBNReLU6 depthwise, Conv2d project, BatchNorm2d
  torch::nn::Conv2d project{nullptr};         // the last two of `conv`
  torch::nn::BatchNorm2d project_bn{nullptr};
  bool use_residual;
  int64_t expand_ratio;
  int64_t tsm_segments_, shift_div_;  // 0 segments: no temporal shift
  FoldedConv folded_project;          // BackboneImpl::fold_batchnorm (the ConvBNReLU6s hold their own)
  void fold();

 private:
  torch::Tensor branch(const torch::Tensor& x);
};
TORCH_MODULE(InvertedResidual);

class MobileNetV2Impl : public BackboneImpl {
 public:
  explicit MobileNetV2Impl(const BackboneOptions& options);
  /// x: (N, 3, H, W) -> (N, 1280 * max(1, width), ceil(H/32), ceil(W/32)); without gradient, in chunks of frames
  torch::Tensor feature_map(const torch::Tensor& x) override;
  /// pooled: (N, C) -> (N, K); dropout 0.2 then linear
  torch::Tensor classify(const torch::Tensor& pooled) override;
  int64_t feature_dim() const override { return last_channel_; }
  int64_t stride() const override { return 32; }
  std::string classifier_prefix() const override { return "classifier."; }
  StateDict import_state_dict(const StateDict& state) const override;
  StateDict export_official_state_dict(const StateDict& state) const override;
  std::vector<std::string> shifted_layers() const override;
  void fold_batchnorm() override;

  torch::nn::Sequential features;    // "features.0" stem, "features.1".."17" blocks, "features.18" 1x1 conv
  torch::nn::Sequential classifier;  // "classifier.0" Dropout(0.2), "classifier.1" Linear

 private:
  int64_t last_channel_;
  /// Block and classifier keys between torchvision's layout and the official (tonylins') one.
  StateDict rename_keys(const StateDict& state, bool to_official) const;
  std::vector<int64_t> expand_ratios_;  // per entry of `features`; 0 for the stem and the last conv
  /// Once folded, on CPU and without the temporal shift: `features` as one oneDNN chain (ReLU6, each block's
  /// depthwise convolution and its residual fused into the convolutions).
  std::optional<ConvChain> fused_;
  /// features->forward(x), through fused_ where it runs.
  torch::Tensor run_features(const torch::Tensor& x);
};

}  // namespace adafocus::nn
