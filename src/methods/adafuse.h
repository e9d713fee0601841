// AdaFuse (Meng et al., ICLR 2021): adaptive temporal fusion of channels. In each gated residual block of a ResNet a
// small policy reads the pooled block input of the current and the previous frame and decides, per channel of the
// block's first convolution, to keep it (compute it), reuse the previous frame's value or skip it (zero). Trained
// with hard Gumbel-softmax and a GFLOPs term in the loss; at inference the skipped and unneeded channels are really
// not computed (the official code only counts them).
//
// Official layout (mengyuest/AdaFuse ops/batenet.py, ops/models_gate.py): a TSN (base_model, new_fc, dropout in
// place of base_model.fc) around a ResNet whose gated blocks hold `policy_net` (gate_fc0, gate_bn, gate_fc1); with
// shared policies the linear layers live once in base_model.gate_fc0s/gate_fc1s, keyed "<in>_<out>". The official
// BateNet names the shortcut downsample0/downsample1 where torchvision (and we) say downsample.0/downsample.1.
//
// Legend: B videos, T frames, N = B*T frames (each clip's adjacent), S input side, R network resolution, Ci block
// input channels, G gated channels of a block, A = 3 actions in the official order [skip, reuse, keep], C classes.
#pragma once

#include <map>

#include "methods/baselines.h"
#include "nn/resnet.h"

namespace adafocus::methods {

/// A gated block's policy: [GAP(x_{t-1}), GAP(x_t)] (zeros before the first frame) -> Linear -> BN1d -> ReLU ->
/// Linear -> G x 3 log-probabilities. With shared linear layers they are not registered here but by the owner.
class GatePolicyImpl : public torch::nn::Module {
 public:
  GatePolicyImpl(torch::nn::Linear fc0, torch::nn::Linear fc1, bool shared);
  /// x: (N, Ci, H, W), the block input (shifted with TSM) -> log-probabilities (N, G, 3)
  torch::Tensor forward(const torch::Tensor& x, int64_t segments);

  torch::nn::Linear gate_fc0{nullptr}, gate_fc1{nullptr};
  torch::nn::BatchNorm1d gate_bn{nullptr};
};
TORCH_MODULE(GatePolicy);

/// conv1 and conv2 of a gated block with their BN folded in, as the skipping paths run them: (G, Ci, k, k) and
/// (G2, G, k, k) for whole-batch convolutions, arranged for nn::sparse_conv2d for frame-by-frame ones.
struct SparseWeights {
  torch::Tensor w1, b1, w2, b2, arranged1, arranged2;
};

/// One residual block's parts, whichever its kind: the gate sits after conv1 (+bn1, ReLU), before conv2.
struct GatedBlock {
  torch::nn::Conv2dImpl *conv1, *conv2, *conv3;  // conv3: null for basic blocks
  torch::nn::BatchNorm2dImpl *bn1, *bn2, *bn3;
  torch::nn::SequentialImpl* downsample;         // null when the shortcut is the identity
  nn::FoldedConv *folded1, *folded2, *folded3, *folded_down;  // the block's BN-folded copies (empty until folded)
  int64_t tsm_segments, shift_div;
  GatePolicy policy{nullptr};                    // null: not gated (every channel kept)
  SparseWeights sparse;                          // AdaFuseImpl::optimize_for_inference; empty: folded per call
};

/// conv1's output (N, G, H, W) fused as the gates say, mask (N, G, 3): keep -> its own value, reuse -> frame t-1's of
/// the same clip (zeros at the first frame), skip -> zero.
torch::Tensor fuse_channels(const torch::Tensor& out1, const torch::Tensor& mask, int64_t segments);

/// How a gated block runs in eval mode (model.adafuse.inference); every way gives the masked dense output.
enum class Inference {
  Dense,   ///< the masked dense forward (training's)
  Frames,  ///< frame by frame (nn::sparse_conv2d where it runs, else as Batch): conv1 only for the channels the frame
           ///< keeps or the next frame reuses, conv2 only on the channels it does not skip - the official count
  Batch,   ///< the whole batch at once on the channels some frame needs (conv1) or does not skip (conv2)
  Auto,    ///< Frames where its kernel runs (CPU, float, no gradient), else Batch
};
/// auto | frames | batch | dense; anything else throws adafocus::Error naming `where` (the key's origin).
Inference parse_inference(const std::string& name, const std::string& where = "");

/// One block on x (N, Ci, H, W) whose conv1 reads xs (x shifted with TSM, else x), gated by `mask` (N, G, 3; undefined:
/// not gated) -> (N, Co, H', W'). Ways other than Dense fold BN into conv1 and conv2: eval mode only.
torch::Tensor gated_block(const GatedBlock& b, const torch::Tensor& x, const torch::Tensor& xs, const torch::Tensor& mask,
                          int64_t segments, Inference how);

/// The decisions of one forward, per gated block.
struct GateMasks {
  std::vector<torch::Tensor> masks;    ///< (B, T, G, 3) one-hot [skip, reuse, keep] (straight-through in training)
  std::vector<double> conv1, conv2;    ///< per frame MACs of the block's conv1 and conv2 at this input size
};

/// Per-frame GFLOPs as the official code counts them from the masks (ops/utils.py compute_gflops_by_mask): `base`
/// the dense network's, real = base - sum(upsave * conv1 + downsave * conv2), upper bound ("upb") = base -
/// sum(downsave * conv2), where downsave = fraction skipped and upsave = fraction of conv1 outputs nobody needs:
/// (1 - keep_t)(1 - reuse_{t+1}); at the last frame 1 - keep_{T-1} (the official code reuses frame T-2's mask there,
/// a quirk not copied). For the batch (scalars) or per video ((B,)).
struct GateFlops {
  torch::Tensor real, upper_bound;
};
GateFlops gate_flops(const GateMasks& gates, double base_gflops, bool per_video);
/// Fractions [skip, reuse, keep] of all gated channels of all frames: per video (B, 3) or for the batch (3,).
torch::Tensor action_fractions(const GateMasks& gates, bool per_video);

struct AdaFuseOptions {
  explicit AdaFuseOptions(FullFrameOptions network) : network_(std::move(network)) {}

  static AdaFuseOptions from_config(const Config& config);

  TORCH_ARG(FullFrameOptions, network);         ///< the gated TSN/TSM (model.backbone: a ResNet)
  TORCH_ARG(std::vector<int64_t>, stages) = std::vector<int64_t>{0, 1, 2, 3};  ///< model.adafuse.stages
  TORCH_ARG(int64_t, hidden) = 1024;            ///< model.adafuse.hidden
  TORCH_ARG(int64_t, hidden_quota) = 0;         ///< model.adafuse.hidden_quota (> 0: shared policies)
  TORCH_ARG(double, tau) = 0.67;                ///< model.adafuse.tau
  TORCH_ARG(double, flops_weight) = 0.125;      ///< model.adafuse.flops_weight
  TORCH_ARG(std::string, flops_loss) = "upb";   ///< model.adafuse.flops_loss: upb | real
  TORCH_ARG(bool, argmax_at_test) = false;      ///< model.adafuse.test_gates: argmax (true) | sample
  TORCH_ARG(Inference, inference) = Inference::Auto;  ///< model.adafuse.inference
};

class AdaFuseImpl : public MethodImpl {
 public:
  AdaFuseImpl(const AdaFuseOptions& options, int64_t num_classes);
  /// Also fills Prediction::gflops (per video, real) and video_means kept, reused and skipped.
  Prediction predict(const Clips& clips) override;
  Losses loss(const Clips& clips, const torch::Tensor& target, const StepContext& context) override;
  std::vector<ParamGroup> param_groups() override;
  nn::StateDict import_state_dict(const nn::StateDict& state) const override;
  nn::StateDict export_official_state_dict(const nn::StateDict& state) const override;
  void load_pretrained(const Config& config) override;
  void flops_forward(const Clips& clips) override;
  /// The backbone's BN folded (as every method) and each gated block's SparseWeights prepared; after the weights
  /// are final, as the folded copies do not follow them.
  void optimize_for_inference() override;

  /// frames (N, 3, R, R) -> per-frame logits (N, C) and the gates. Training: hard Gumbel-softmax and the dense
  /// computation; eval: gates as model.adafuse.test_gates, blocks run as `how`.
  torch::Tensor frame_logits(const torch::Tensor& frames, GateMasks& gates, Inference how);
  /// The dense network's per-frame GFLOPs at side `resolution` (gates and classifier included), counted once.
  double base_gflops(int64_t resolution);

  TSN tsn{nullptr};
  std::vector<GatedBlock> blocks;
  Inference inference = Inference::Auto;
  bool argmax_at_test = false;

 private:
  torch::Tensor resized(const torch::Tensor& clips) const;  // (B, T, 3, S, S) -> (B*T, 3, R, R)
  torch::Tensor decide(const torch::Tensor& log_probs) const;  // (N, G, 3) -> one-hot (N, G, 3)

  int64_t frames_, resolution_;
  std::string resize_, flops_loss_;
  double tau_, flops_weight_;
  LearningRates lr_;
  std::map<int64_t, double> base_gflops_;  // by resolution
  bool shared_ = false;
};

/// adafuse in the registry.
MethodInfo adafuse_method();

}  // namespace adafocus::methods
