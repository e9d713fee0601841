// AdaFocus V1 for Something-Something, as the official TSM-based code (V1s): a glancer (TSM MobileNetV2) sees T glance
// frames whole; a Gaussian actor-critic reads their feature maps stacked on channels and places ONE P x P patch for
// the whole video (a continuous corner in [0, 1]^2, cut hard at floor(a (S - P))), which the focuser (TSN over TSM
// ResNet-50) sees in each of Tf separately sampled focus frames. Prediction = mean glance logits (the glancer's own
// head) + mean focus logits (the top-level classifier). Trained in the stages of adafocus_v1 (StepContext::stage):
//   0  glancer and focuser on whole frames, each with its head, logits averaged over the frames (TSN);
//   1  random patches; glancer frozen; focuser and classifier learn on the summed logits;
//   2  the policy alone by PPO, one action per video: reward = p(label) with the chosen patch - with a random one;
//   3  the classifier alone, with the policy's mean action.
// Module names are the official ones (glancer.net, focuser.net (a TSN: base_model), focuser.policy.policy,
// classifier). The official PPO is a plain object, not a module: its scripts save the policy beside the model's state,
// as 'policy' (import_checkpoint, export_official_checkpoint); its policy_old copy is never saved.
//
// Legend: B videos, T glance frames, Tf focus frames, S input side, P patch side, Cg / Cl glance / focus feature
// channels, H hidden size, C classes.
#pragma once

#include "methods/baselines.h"

namespace adafocus::methods {

/// The continuous PPO actor-critic of V1s: 1x1 conv (no bias) + BN + ReLU on the stacked glance maps, flatten, linear
/// + BN1d + ReLU, a GRU (one step from a zero state: one action per video), an actor (linear + sigmoid: the mean
/// corner (n, 2)) and a critic (linear, the state's value).
class GaussianActorCriticImpl : public torch::nn::Module {
 public:
  GaussianActorCriticImpl(int64_t map_channels, int64_t map_cells, int64_t channels, int64_t hidden);
  /// maps (n, T*Cg, h, w) -> the GRU output (n, H)
  torch::Tensor forward(const torch::Tensor& maps);

  torch::nn::Sequential state_encoder;  // 0 conv, 1 BN, 2 ReLU, 3 flatten, 4 linear, 5 BN1d, 6 ReLU
  torch::nn::GRU gru{nullptr};
  torch::nn::Sequential actor;          // 0 linear, 1 sigmoid -> (n, 2)
  torch::nn::Sequential critic;         // 0 linear -> (n, 1)
};
TORCH_MODULE(GaussianActorCritic);

struct AdaFocusV1TSMOptions {
  explicit AdaFocusV1TSMOptions(GlanceFocusOptions base) : base_(std::move(base)) {}

  static AdaFocusV1TSMOptions from_config(const Config& config);

  TORCH_ARG(GlanceFocusOptions, base);  ///< focus_frames > 0; the glancer keeps its own head, of the model's classes
  TORCH_ARG(double, policy_std) = 0.25;  ///< model.policy_std: the Gaussian policy's spread in training
  TORCH_ARG(PpoOptions, ppo);
};

class AdaFocusV1TSMImpl : public MethodImpl {
 public:
  AdaFocusV1TSMImpl(const AdaFocusV1TSMOptions& options, int64_t num_classes);

  Prediction predict(const Clips& clips) override;
  Losses loss(const Clips& clips, const torch::Tensor& target, const StepContext& context) override;
  std::vector<ParamGroup> param_groups() override;
  nn::StateDict import_state_dict(const nn::StateDict& state) const override;
  nn::StateDict import_checkpoint(const nn::StateDict& model, const NamedStateDicts& entries) const override;
  nn::StateDict export_official_state_dict(const nn::StateDict& state) const override;
  OfficialCheckpoint export_official_checkpoint(const nn::StateDict& state) const override;
  void load_pretrained(const Config& config) override;
  void set_policy(const std::string& policy) override;

  nn::Backbone glancer;                 // glancer.net
  TSN focuser{nullptr};                 // focuser.net
  GaussianActorCritic policy{nullptr};  // focuser.policy.policy
  torch::nn::Linear classifier{nullptr};

 private:
  struct Glance {
    torch::Tensor maps;    // (B, T*Cg, h, w), no gradient
    torch::Tensor logits;  // (B, C), mean over the frames
  };
  Glance glance(const torch::Tensor& clip);
  /// Mean focus logits (B, C) of the patches at corners (B, 2) int64 (row, column) in every focus frame; the
  /// focuser's features without gradient unless `learn_focuser`.
  torch::Tensor focus(const torch::Tensor& focus_clip, const torch::Tensor& corners, bool learn_focuser = true);
  /// Patch actions (B, 2) in [0, 1] for `placement`: the learned policy's mean, or random / center.
  torch::Tensor actions(const Glance& g, const std::string& placement);
  /// Corners (n, 2) int64 of actions (n, 2) in [0, 1]: floor(a (S - P)), as the official get_patch.
  torch::Tensor corners(const torch::Tensor& actions, int64_t side) const;
  /// The boxes (B, 1, 4) (x, y, w, h) of patches at corners (B, 2) and the focus frames (B, 1, Tf) they are in.
  void set_regions(const torch::Tensor& corners, torch::Tensor& regions, torch::Tensor& frames) const;
  /// Our parameters the official model does not have, which keep their values on import: the focuser TSN's new_fc
  /// (V1s's TSN has no head) and its base model's fc (dropped by the official stage scripts).
  nn::StateDict unused_in_official() const;
  Losses backbone_loss(const Clips& clips, const torch::Tensor& target);  // stage 0
  Losses ppo_loss(const Clips& clips, const torch::Tensor& target);       // stage 2

  int64_t frames_, focus_frames_, patch_, glance_size_;
  std::string resize_, policy_;
  double action_std_;
  PpoOptions ppo_;
  LearningRates lr_;
};

/// adafocus_v1_tsm in the registry.
MethodInfo adafocus_v1_tsm_method();

}  // namespace adafocus::methods
