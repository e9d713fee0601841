// AdaFocusV2 (Wang et al., CVPR 2022) for ActivityNet, FCVID and Mini-Kinetics, as the official code: a glance
// network sees every frame, a recurrent policy reads its (detached) feature maps and places one P x P patch per frame,
// a local network sees only the patches, and a FrameExit-style classifier max-pools the per-frame features over time
// with one head per step, so that every prefix of the clip gives a prediction (an exit). Training runs the policy's
// patches and uniformly random patches in two branches and adds auxiliary glance-only and local-only heads; the
// crop is differentiable, so everything trains end to end in one stage.
//
// Module names are the official ones (global_CNN, local_CNN, global_CNN_fc, local_CNN_fc, policy_stn, classifier);
// official checkpoints load through import_state_dict.
//
// Legend: B videos, T frames, S input side, G glance side, P patch side, Cg / Cl glance / local feature channels,
// D fused feature size, H hidden size, C classes.
#pragma once

#include "methods/method.h"
#include "methods/options.h"
#include "methods/registry.h"

namespace adafocus::methods {

/// The policy: 1x1 conv + BN + tanh on each glance feature map, a linear layer + BN + tanh, a GRU over the frames,
/// then a linear layer + sigmoid giving (row, column) in (0, 1) per frame.
class PolicySTNImpl : public torch::nn::Module {
 public:
  PolicySTNImpl(int64_t map_channels, int64_t map_cells, int64_t channels, int64_t hidden, bool zero_init);
  /// maps (B*T, Cg, h, w) -> actions (B*T, 2); `frames` = T. The GRU starts from `*hidden` (1, B, H) when given and
  /// defined (else from zeros) and leaves its last state there: frame by frame or all at once, the same actions.
  torch::Tensor forward(const torch::Tensor& maps, int64_t frames, torch::Tensor* hidden = nullptr);

  torch::nn::Sequential encoder;  // 0 conv, 1 BN2d, 2 tanh, 3 flatten, 4 linear, 5 BN1d, 6 tanh
  torch::nn::GRU gru{nullptr};
  torch::nn::Sequential fc;       // 0 linear, 1 sigmoid
};
TORCH_MODULE(PolicySTN);

/// FrameExit-style classifier: per-frame MLP (linear + BN + ReLU), cumulative max over time, a head per step.
class PoolingClassifierImpl : public torch::nn::Module {
 public:
  PoolingClassifierImpl(int64_t input_dim, int64_t hidden, int64_t frames, int64_t num_classes, double dropout);
  /// features (B, T', D) of steps first..first+T'-1 -> logits (B, T', C); step t sees frames 0..t. `*pooled` (B, H),
  /// when given and defined, is the max over the earlier steps, and receives the max up to the last step given.
  torch::Tensor forward(const torch::Tensor& features, int64_t first = 0, torch::Tensor* pooled = nullptr);

  torch::nn::Sequential mlp_layers;  // "mlp.layers": 0 linear, 1 BN1d, 2 ReLU
  torch::nn::ModuleList classifiers;  // T x (0 dropout, 1 linear)
};
TORCH_MODULE(PoolingClassifier);

struct AdaFocusV2Options {
  explicit AdaFocusV2Options(GlanceFocusOptions base) : base_(std::move(base)) {}

  static AdaFocusV2Options from_config(const Config& config);

  TORCH_ARG(GlanceFocusOptions, base);
  TORCH_ARG(std::string, fuse) = "concat";             ///< model.fuse: concat (official) | local
  TORCH_ARG(std::string, policy_gradient) = "pixel";   ///< model.policy_gradient: pixel (V2's) | feature (V3's)
  TORCH_ARG(bool, policy_zero_init) = false;           ///< model.policy_zero_init
};

class AdaFocusV2Impl : public MethodImpl {
 public:
  AdaFocusV2Impl(const AdaFocusV2Options& options, int64_t num_classes);

  Prediction predict(const Clips& clips) override;
  Losses loss(const Clips& clips, const torch::Tensor& target, const StepContext& context) override;
  std::vector<ParamGroup> param_groups() override;
  int64_t exits() const override { return frames_; }
  /// The official V2+ criterion, "confidence": the largest raw logit (V2a/ops/early_exit.py).
  std::string exit_criterion() const override { return "max_logit"; }
  /// Frame by frame: glance, policy step, patch and classifier step of frame t give exit t.
  std::unique_ptr<ExitStepper> stepper(const Clips& clips) override;
  nn::StateDict import_state_dict(const nn::StateDict& state) const override;
  nn::StateDict export_official_state_dict(const nn::StateDict& state) const override;
  void load_pretrained(const Config& config) override;
  void set_policy(const std::string& policy) override;

  nn::Backbone global_CNN, local_CNN;
  torch::nn::Sequential global_CNN_fc, local_CNN_fc;  // 0 dropout, 1 linear
  PolicySTN policy_stn{nullptr};
  PoolingClassifier classifier{nullptr};

 private:
  friend class V2Stepper;
  // The steps of the forward, on T' consecutive frames of each video (predict() and the training: the whole clip at
  // once; the exit-by-exit path: one frame at a time, the policy's GRU state and the classifier's running max kept
  // between calls).
  struct Glance {
    torch::Tensor frames;  // (B*T', 3, S, S)
    torch::Tensor map;     // (B*T', Cg, h, w)
    torch::Tensor feature; // (B*T', Cg)
  };
  /// clips (B, T, 3, S, S) -> the glance of every frame.
  Glance glance(const torch::Tensor& clips);
  /// frames (B*T', 3, S, S), each video's adjacent -> their glance.
  Glance glance_frames(const torch::Tensor& frames);
  /// Patch positions (B*T', 2) for `policy` (learned | random | center); the policy's GRU state in `hidden`.
  torch::Tensor actions(const Glance& g, const std::string& policy, int64_t steps, torch::Tensor* hidden = nullptr);
  /// Fused logits of steps first..first+T'-1 (B, T', C) and the local features (B*T', Cl) of the patches at
  /// `actions`; the classifier's running max in `pooled`. With `feature_gradient` the local features come from
  /// feature_gradient_local().
  std::pair<torch::Tensor, torch::Tensor> focus(const Glance& g, const torch::Tensor& actions, int64_t steps,
                                                bool feature_gradient = false, int64_t first = 0,
                                                torch::Tensor* pooled = nullptr);
  /// Training, model.policy_gradient = feature: local features (N, Cl) of the patches at `actions` (N, 2) of frames
  /// (N, 3, S, S), with AdaFocusV3's deep-feature gradient to the policy.
  torch::Tensor feature_gradient_local(const torch::Tensor& frames, const torch::Tensor& actions);
  /// Prediction::region_frames of a patch per frame: (B, T, 1) = t.
  torch::Tensor frame_positions(int64_t b, const torch::Device& device) const;

  int64_t frames_, patch_, glance_size_;
  std::string resize_, policy_, fuse_, gradient_;
  LearningRates lr_;
};

/// adafocus_v2 in the registry.
MethodInfo adafocus_v2_method();

}  // namespace adafocus::methods
