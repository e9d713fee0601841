// ResNet-18/34/50 (He et al. 2016) with torchvision's layout and parameter names (v1.5: stride in the 3x3 conv of a
// bottleneck), and TSM's residual shift: the temporal shift wraps conv1 of every block, the identity stays unshifted.
// For the built-in benchmark also ResNet-10 (one basic block per stage), narrower stages and a small-input stem.
#pragma once

#include "nn/backbone.h"

namespace adafocus::nn {

/// Two 3x3 convs (ResNet-18/34).
class BasicBlockImpl : public torch::nn::Module {
 public:
  static constexpr int64_t kExpansion = 1;
  BasicBlockImpl(int64_t in, int64_t planes, int64_t stride, int64_t tsm_segments, int64_t shift_div);
  /// x: (N, in, H, W) -> (N, planes, H/stride, W/stride)
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr};
  torch::nn::Sequential downsample{nullptr};  // "downsample.0" 1x1 conv, "downsample.1" BN; only when shapes change
  int64_t tsm_segments_, shift_div_;          // 0 segments: no temporal shift
  FoldedConv folded1, folded2, folded_down;   // BackboneImpl::fold_batchnorm
  void fold();
};
TORCH_MODULE(BasicBlock);

/// 1x1 reduce, 3x3 (strided), 1x1 expand x4 (ResNet-50).
class BottleneckImpl : public torch::nn::Module {
 public:
  static constexpr int64_t kExpansion = 4;
  BottleneckImpl(int64_t in, int64_t planes, int64_t stride, int64_t tsm_segments, int64_t shift_div);
  /// x: (N, in, H, W) -> (N, 4 * planes, H/stride, W/stride)
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, conv3{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr}, bn3{nullptr};
  torch::nn::Sequential downsample{nullptr};
  int64_t tsm_segments_, shift_div_;  // 0 segments: no temporal shift
  FoldedConv folded1, folded2, folded3, folded_down;
  void fold();
};
TORCH_MODULE(Bottleneck);

/// A block's downsampling shortcut on x: its 1x1 convolution ("downsample.0") and BN ("downsample.1"), one folded
/// convolution when `folded` is set (conv_bn).
torch::Tensor downsample_shortcut(const torch::nn::SequentialImpl& down, const FoldedConv& folded, const torch::Tensor& x);

class ResNetImpl : public BackboneImpl {
 public:
  explicit ResNetImpl(const BackboneOptions& options);
  /// x: (N, 3, H, W) -> (N, 8 * base_width * expansion, ceil(H/32), ceil(W/32)); small stems: H/8, H/16
  torch::Tensor feature_map(const torch::Tensor& x) override;
  /// What precedes layer1: x (N, 3, H, W) -> (N, base_width, H/4, W/4) (small stems: H, H/2)
  torch::Tensor stem(const torch::Tensor& x);
  /// pooled: (N, C) -> (N, K)
  torch::Tensor classify(const torch::Tensor& pooled) override { return fc(pooled); }
  int64_t feature_dim() const override { return feature_dim_; }
  int64_t stride() const override { return stem_ == "imagenet" ? 32 : stem_ == "small" ? 8 : 16; }
  std::string classifier_prefix() const override { return "fc."; }
  std::vector<std::string> shifted_layers() const override;
  void fold_batchnorm() override;

  torch::nn::Conv2d conv1{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr};
  torch::nn::Sequential layer1, layer2, layer3, layer4;
  torch::nn::Linear fc{nullptr};

 private:
  int64_t feature_dim_;
  std::string stem_;
  FoldedConv folded_stem_;
};

}  // namespace adafocus::nn
