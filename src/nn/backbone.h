// The common face of the frame-level CNNs (MobileNetV2, ResNet-18/34/50): last feature map, pooled feature vector,
// class logits. Parameter names follow torchvision, so torchvision .pth files load as they are; official AdaFocus and
// TSM layouts are translated by import_state_dict.
//
// Legend: N frames in the batch (with TSM: clips x T segments, each clip's frames adjacent), C feature channels,
// H x W input size, K classes.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include "nn/state_dict.h"

namespace adafocus::nn {

struct BackboneOptions {
  explicit BackboneOptions(std::string arch) : arch_(std::move(arch)) {}
  /// mobilenet_v2 | resnet10 | resnet18 | resnet34 | resnet50
  TORCH_ARG(std::string, arch);
  /// MobileNetV2 channel multiplier (torchvision rounding to multiples of 8).
  TORCH_ARG(double, width_mult) = 1.0;
  /// Classifier outputs.
  TORCH_ARG(int64_t, num_classes) = 1000;
  /// > 0: temporal shift module over clips of this many frames (0 = plain 2D CNN).
  TORCH_ARG(int64_t, tsm_segments) = 0;
  /// The shift moves 1/shift_div of the channels each way.
  TORCH_ARG(int64_t, shift_div) = 8;
  /// ResNet: channels of the first stage (torchvision: 64); the stages have 1, 2, 4, 8 times this.
  TORCH_ARG(int64_t, base_width) = 64;
  /// ResNet stem: imagenet (7x7 stride 2 + max-pooling, /4), or for inputs of a few dozen pixels small (3x3 stride 1,
  /// no pooling: the network downsamples 8 instead of 32) or small_s2 (3x3 stride 2, no pooling: 16).
  TORCH_ARG(std::string, stem) = "imagenet";
};

class BackboneImpl : public torch::nn::Module {
 public:
  /// x: (N, 3, H, W) -> (N, C, ceil(H/32), ceil(W/32)) (ceil(H/8), ceil(H/16) with the small ResNet stems)
  virtual torch::Tensor feature_map(const torch::Tensor& x) = 0;
  /// map: (N, C, h, w) -> (N, C), global average
  torch::Tensor pool(const torch::Tensor& map) const;
  /// pooled: (N, C) -> (N, K)
  virtual torch::Tensor classify(const torch::Tensor& pooled) = 0;
  /// x: (N, 3, H, W) -> (N, K)
  torch::Tensor forward(const torch::Tensor& x) { return classify(pool(feature_map(x))); }

  /// C, the channels of the feature map.
  virtual int64_t feature_dim() const = 0;
  /// Input pixels per feature-map cell (32; 8 or 16 with the small ResNet stems).
  virtual int64_t stride() const = 0;
  /// Name prefix of the classifier's parameters ("fc." or "classifier.").
  virtual std::string classifier_prefix() const = 0;
  /// Frames per clip of the temporal shift (0: the network has none).
  int64_t tsm_segments();
  /// Makes the temporal shift treat every `segments` consecutive frames as a clip; no-op without the shift.
  void set_tsm_segments(int64_t segments);
  /// Translates a state dict of another layout of this architecture (official AdaFocus MobileNetV2, TSM's
  /// ".net." wrappers) to ours; torchvision keys pass unchanged.
  virtual StateDict import_state_dict(const StateDict& state) const;
  /// Ours -> the official AdaFocus layout of this architecture (import_state_dict's inverse for it): MobileNetV2 in
  /// tonylins' layout; ResNets are already torchvision's, as the official code; with the temporal shift, TSM's
  /// ".net." wrapper inside every shifted convolution (shifted_layers).
  virtual StateDict export_official_state_dict(const StateDict& state) const { return wrap_shifted(state); }
  /// The official names of the convolutions the temporal shift wraps (official TSM: TemporalShift(conv), which keeps
  /// the conv as "net"): ResNet "layerS.B.conv1" of every block, MobileNetV2 "features.N.conv.0" of the residual
  /// blocks with an expansion (tonylins' layout: the expanding conv alone, without its BN); none without the shift.
  virtual std::vector<std::string> shifted_layers() const { return {}; }
  /// For inference: every eval-mode BatchNorm folded into the convolution before it (a copy of the weights beside
  /// the originals, which stay as they are: the state dict, training mode and the FLOPs counter still see conv + BN)
  /// and the network computing in channels-last, where oneDNN's convolutions are fastest (MobileNetV2 3.6x,
  /// ResNet-50 1.5x here, docs/performance.md). Take it after the weights are final: the folded copy does not follow
  /// later changes. No-op for a network without the support.
  virtual void fold_batchnorm() {}

 protected:
  /// `state` (official names) with ".net." inside each of shifted_layers(): "layer1.0.conv1.weight" ->
  /// "layer1.0.conv1.net.weight"; the inverse of import_state_dict's removal.
  StateDict wrap_shifted(const StateDict& state) const;
};

struct PackedConv;
/// A convolution followed by BatchNorm (and a ReLU when `relu`), folded into one convolution (weight and bias);
/// empty until folded.
struct FoldedConv {
  torch::Tensor weight, bias;
  bool relu = false;
  /// On CPU (float): oneDNN's convolution with the ReLU as its post-op, the weights reordered once for each layout
  /// its kernels ask for, in fp32 and - on first use under bf16 autocast - in bf16 (fp32 users hold no bf16 copy).
  /// at::conv2d reorders them on every call, which cost a ResNet-50 on one 128 px image about a quarter of its time,
  /// and autocast's converts them too.
  std::shared_ptr<PackedConv> packed = {};
};
/// conv's weight scaled and bn's shift as a bias, in channels-last: conv then bn in eval mode as one convolution;
/// with `relu`, the ReLU after them inside it (conv_bn(..., relu = true) only).
FoldedConv fold(const torch::nn::Conv2dImpl& conv, const torch::nn::BatchNorm2dImpl& bn, bool relu = false);
/// bn(conv(x)), relu'd when `relu`, computed as one convolution on channels-last x when `folded` is set, bn is in
/// eval mode and no UnfoldedGuard is alive; under bf16 autocast on CPU, on folded's bf16 weights.
torch::Tensor conv_bn(torch::nn::Conv2dImpl& conv, torch::nn::BatchNorm2dImpl& bn, const FoldedConv& folded,
                      const torch::Tensor& x, bool relu = false);
/// relu(y), hardtanh(y, 0, 6) (ReLU6), y + z, for a y nothing else reads (a conv_bn result): in place when no
/// gradient is recorded, which spares allocating and writing a second map of y's size, and the next layer reads a
/// map still in cache. With a gradient, out of place (autograd may keep y).
torch::Tensor relu_owned(torch::Tensor y);
torch::Tensor relu6_owned(torch::Tensor y);
torch::Tensor add_owned(torch::Tensor y, const torch::Tensor& z);
/// relu(y + z) for such a y, in one pass where it can (nn::add_relu_): a residual block's end.
torch::Tensor add_relu_owned(torch::Tensor y, const torch::Tensor& z);
/// Batch normalisation over the batches of all processes (train.sync_bn): the trainer sets it while several
/// processes train, empty otherwise.
using BatchNormSync = std::function<torch::Tensor(torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x)>;
void set_batch_norm_sync(BatchNormSync sync);
/// bn(x); across processes when a sync is set and bn is in training mode. The backbones' BatchNorm2d layers go
/// through here (conv_bn), so train.sync_bn reaches them all; the policies' and AdaFuse's gates' BatchNorm1d stay per
/// process.
torch::Tensor batch_norm(torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x);
/// Whether folded convolutions run folded on this thread (no UnfoldedGuard alive).
bool folding_enabled();
/// Whether x may take our own oneDNN paths (packed weights, nn::ConvChain): a float CPU tensor, no gradient recorded,
/// no autocast - or, with `bf16_autocast` (a path computing in bf16 itself), none other than bf16, and then a bf16
/// tensor too.
bool onednn_inference(const torch::Tensor& x, bool bf16_autocast = false);
/// While alive, folded convolutions run as conv + BN on this thread: the FLOPs counter counts what the papers count.
class UnfoldedGuard {
 public:
  UnfoldedGuard();
  ~UnfoldedGuard();
  UnfoldedGuard(const UnfoldedGuard&) = delete;
  UnfoldedGuard& operator=(const UnfoldedGuard&) = delete;

 private:
  bool previous_;
};

using Backbone = std::shared_ptr<BackboneImpl>;

/// While alive, `backbone`'s temporal shift (if any) sees clips of `segments` frames: AdaFocusV3's deep-feature
/// gradient runs a TSM network on cubes one frame longer than those it was built for.
class TemporalShiftSegments {
 public:
  TemporalShiftSegments(BackboneImpl& backbone, int64_t segments);
  ~TemporalShiftSegments();
  TemporalShiftSegments(const TemporalShiftSegments&) = delete;
  TemporalShiftSegments& operator=(const TemporalShiftSegments&) = delete;

 private:
  BackboneImpl& backbone_;
  int64_t previous_;
};

/// Builds a backbone with torchvision's initialisation; throws adafocus::Error for an unknown arch.
Backbone make_backbone(const BackboneOptions& options);
/// Builds the backbone `options` describe and loads `state` into it strictly, after translating other layouts
/// (import_state_dict) and dropping "module." prefixes. The number of classes is taken from the classifier in
/// `state`. `source` names the weights in errors.
Backbone load_backbone(BackboneOptions options, const StateDict& state, const std::string& source);
/// The arch names make_backbone accepts.
const std::vector<std::string>& backbone_archs();

/// Frame size rounding that torchvision and the official code share: channels to a multiple of `divisor`, never
/// below 90% of `v`.
int64_t make_divisible(double v, int64_t divisor = 8);

}  // namespace adafocus::nn
