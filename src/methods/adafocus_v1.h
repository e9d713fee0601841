// AdaFocus V1 (Wang et al., ICCV 2021) for ActivityNet, FCVID and Mini-Kinetics, as the official code: a glancer
// (MobileNetV2) sees every frame whole, a recurrent actor-critic reads its feature map and picks one cell of a
// grid x grid lattice of patch corners per frame, a focuser (ResNet-50) sees the P x P patch cut there (hard, not
// differentiable), and a GRU classifier over [glance feature, patch feature] predicts after every frame, the last
// prediction final. The patch choice is learned by reinforcement (PPO), so training runs in stages, each from the
// previous one's model (StepContext::stage):
//   0  glancer and focuser on whole frames, each with its own head, logits averaged over the frames (TSN);
//   1  random patches; glancer frozen; focuser and classifier learn;
//   2  the policy alone by PPO: reward = p(label) with the chosen patch - p(label) with a random one;
//   3  the classifier alone, with the policy's most likely patches.
// Module names are the official ones (glancer.net, focuser.net, focuser.policy.policy, classifier.gru/.fc); the
// official PPO's policy_old copy is not kept: it equals the policy after every update (export writes it back).
//
// Legend: B videos, T frames, S input side, G glance side, P patch side, Cg / Cl glance / focus feature channels,
// H hidden size, A = grid^2 patch positions, C classes.
#pragma once

#include "methods/method.h"
#include "methods/options.h"
#include "methods/registry.h"

namespace adafocus::methods {

/// The PPO actor-critic: 1x1 conv (no bias) + ReLU on the glance map, flatten, linear + ReLU, a GRU over the frames,
/// an actor (linear + softmax over the A positions) and a critic (linear, the state's value).
class ActorCriticImpl : public torch::nn::Module {
 public:
  ActorCriticImpl(int64_t map_channels, int64_t map_cells, int64_t channels, int64_t hidden, int64_t actions);
  /// One frame: map (n, Cg, h, w) and the GRU state (1, n, H) (undefined at the first frame) -> the GRU output
  /// (n, H) and new state (1, n, H).
  std::pair<torch::Tensor, torch::Tensor> step(const torch::Tensor& map, const torch::Tensor& hidden);

  torch::nn::Sequential state_encoder;  // 0 conv, 1 ReLU, 2 flatten, 3 linear, 4 ReLU
  torch::nn::GRU gru{nullptr};
  torch::nn::Sequential actor;          // 0 linear, 1 softmax -> (n, A)
  torch::nn::Sequential critic;         // 0 linear -> (n, 1)
};
TORCH_MODULE(ActorCritic);

/// Returns of per-step rewards (T, B) discounted by gamma over the frames, normalised over all T*B values
/// ((R - mean) / (std + 1e-5)), as the official PPO.
torch::Tensor normalised_returns(const torch::Tensor& rewards, double gamma);

/// The official PPO update's loss (ratio r = exp(log_prob - old_log_prob), all tensors of one shape):
/// mean(-min(r A, clip(r, 1 - clip, 1 + clip) A)) + value_weight MSE(value, returns) - entropy_weight mean(entropy),
/// with the share of ratios outside the clip range.
struct PpoObjective {
  torch::Tensor loss, value_loss, clip_fraction;
};
PpoObjective ppo_objective(const torch::Tensor& log_prob, const torch::Tensor& old_log_prob,
                           const torch::Tensor& advantage, const torch::Tensor& value, const torch::Tensor& returns,
                           const torch::Tensor& entropy, double clip, double value_weight, double entropy_weight);

/// Stage 0's loss: cross-entropy of the glancer's video logits (B, C), plus the focuser's when `focus` is defined;
/// the reported prediction is the sum of their softmaxes.
Losses backbone_losses(const torch::Tensor& glance, const torch::Tensor& focus, const torch::Tensor& target);

/// `state` without the official PPO's policy_old copy (focuser.policy.policy_old.*): it equals the policy after every
/// update, so V1 and V1-TSM keep only the policy.
nn::StateDict without_policy_old(const nn::StateDict& state);

/// The checkpoint file the official V1 scripts save and load (V1a main_dist.py; V1s stage2.py, stage3.py,
/// evaluate.py), of a state dict in the official layout: 'model_state_dict', the model's own state (saved from the
/// unwrapped model: no "module." prefixes; without the PPO's policy when not `policy_in_model`: V1s's PPO is a plain
/// object, not a module), the parts the scripts load one by one ('glancer', 'focuser', 'fc': the classifier,
/// 'policy': focuser.policy.policy) and 'epoch' 0 and 'best_acc' 0, which they read on loading too.
OfficialCheckpoint v1_official_checkpoint(const nn::StateDict& official, bool policy_in_model);

/// Top-left corners (n, 2) int64 (row, column) of P x P patches of S x S frames at cells `actions` (n) int64 of a
/// grid x grid lattice: cell k is row k / grid, column k % grid, each a fraction i / (grid - 1) of S - P, floored.
torch::Tensor grid_corners(const torch::Tensor& actions, int64_t grid, int64_t side, int64_t patch);

/// P x P patches of frames (N, 3, S, S) whose top-left corners are `corners` (N, 2) int64 (row, column).
torch::Tensor hard_crop(const torch::Tensor& frames, const torch::Tensor& corners, int64_t patch);

/// The official PPO's settings (train.ppo_*), shared by V1 and V1-TSM.
struct PpoOptions {
  static PpoOptions from_config(const Config& config);

  TORCH_ARG(double, gamma) = 0.7;       ///< train.ppo_gamma: discount of the per-step rewards
  TORCH_ARG(double, clip) = 0.2;        ///< train.ppo_clip: of the probability ratio
  TORCH_ARG(double, value) = 0.5;       ///< train.ppo_value: weight of the critic's squared error
  TORCH_ARG(double, entropy) = 0.01;    ///< train.ppo_entropy: weight of the entropy bonus
};

struct AdaFocusV1Options {
  explicit AdaFocusV1Options(GlanceFocusOptions base) : base_(std::move(base)) {}

  static AdaFocusV1Options from_config(const Config& config);

  TORCH_ARG(GlanceFocusOptions, base);  ///< its backbones keep their own heads, of the model's classes (stage 0)
  TORCH_ARG(int64_t, grid) = 7;         ///< model.policy_grid: patch corners on a grid x grid lattice
  TORCH_ARG(PpoOptions, ppo);
};

class AdaFocusV1Impl : public MethodImpl {
 public:
  AdaFocusV1Impl(const AdaFocusV1Options& options, int64_t num_classes);

  Prediction predict(const Clips& clips) override;
  Losses loss(const Clips& clips, const torch::Tensor& target, const StepContext& context) override;
  std::vector<ParamGroup> param_groups() override;
  int64_t exits() const override { return frames_; }
  /// Choice: V2+'s criterion (the largest raw logit). AdaFocus+ (V1 with exits) was never published; the V2 paper
  /// compares it with V2+ under the same MSDNet-style procedure.
  std::string exit_criterion() const override { return "max_logit"; }
  /// Frame by frame: glance, policy step, patch and classifier step of frame t give exit t.
  std::unique_ptr<ExitStepper> stepper(const Clips& clips) override;
  nn::StateDict import_state_dict(const nn::StateDict& state) const override;
  nn::StateDict export_official_state_dict(const nn::StateDict& state) const override;
  OfficialCheckpoint export_official_checkpoint(const nn::StateDict& state) const override;
  void load_pretrained(const Config& config) override;
  void set_policy(const std::string& policy) override;

  nn::Backbone glancer, focuser;  // registered as glancer.net and focuser.net
  ActorCritic policy{nullptr};    // focuser.policy.policy
  torch::nn::GRU classifier_gru{nullptr};
  torch::nn::Linear classifier_fc{nullptr};

 private:
  friend class V1Stepper;
  /// Glance feature maps (N, Cg, h, w) of frames (N, 3, S, S).
  torch::Tensor glance_maps(const torch::Tensor& frames);
  /// Patch corners (n, 2) int64 (row, column) in pixels: of grid positions `actions` (n) int64, or, for `policy`
  /// random or center, drawn uniformly over every corner or the centre's.
  torch::Tensor corners(const torch::Tensor& actions, int64_t side) const;
  torch::Tensor fixed_corners(const std::string& policy, int64_t n, int64_t side, const torch::Device& device) const;
  /// Focuser features (n, Cl) of the patches at `corners` of frames (n, 3, S, S).
  torch::Tensor focus(const torch::Tensor& frames, const torch::Tensor& corners);
  /// Logits (n, C) and new state of one classifier step on [glance feature, patch feature] (n, Cg + Cl).
  std::pair<torch::Tensor, torch::Tensor> classify_step(const torch::Tensor& x, const torch::Tensor& hidden);
  /// Boxes (n, 4) (x, y, w, h) of patches at corners (n, 2).
  torch::Tensor boxes(const torch::Tensor& corners) const;
  Losses backbone_loss(const Clips& clips, const torch::Tensor& target);  // stage 0
  Losses ppo_loss(const Clips& clips, const torch::Tensor& target);       // stage 2

  int64_t frames_, patch_, glance_size_, grid_;
  std::string resize_, policy_;
  double dropout_;
  PpoOptions ppo_;
  LearningRates lr_;
};

/// adafocus_v1 in the registry.
MethodInfo adafocus_v1_method();

}  // namespace adafocus::methods
