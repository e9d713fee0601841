// AdaFocusV2 for Something-Something and Jester, as the official TSM-based code: the glance network (TSN over TSM
// MobileNetV2) sees T glance frames, a feed-forward policy reads their feature maps stacked on channels and places ONE
// patch for the whole video, applied to every one of Tf separately sampled focus frames, which the local network
// (TSN over TSM ResNet-50) sees. Prediction = mean glance logits + mean local logits, from heads on detached features;
// the networks learn through auxiliary heads on live features. Training: a random-patch branch and a policy branch.
//
// Legend: B videos, T glance frames, Tf focus frames, S input side, P patch side, C classes.
#pragma once

#include "methods/baselines.h"
#include "methods/options.h"
#include "methods/registry.h"

namespace adafocus::methods {

struct AdaFocusV2TSMOptions {
  explicit AdaFocusV2TSMOptions(GlanceFocusOptions base) : base_(std::move(base)) {}

  static AdaFocusV2TSMOptions from_config(const Config& config);

  TORCH_ARG(GlanceFocusOptions, base);          ///< focus_frames > 0: the local network's own clip
  TORCH_ARG(int64_t, policy_hidden2) = 512;     ///< model.policy_hidden2: the policy MLP's second layer
};

class AdaFocusV2TSMImpl : public MethodImpl {
 public:
  AdaFocusV2TSMImpl(const AdaFocusV2TSMOptions& options, int64_t num_classes);

  Prediction predict(const Clips& clips) override;
  Losses loss(const Clips& clips, const torch::Tensor& target, const StepContext& context) override;
  std::vector<ParamGroup> param_groups() override;
  nn::StateDict import_state_dict(const nn::StateDict& state) const override;
  nn::StateDict export_official_state_dict(const nn::StateDict& state) const override;
  void load_pretrained(const Config& config) override;
  void set_policy(const std::string& policy) override;

  TSN global_CNN{nullptr}, local_CNN{nullptr};
  torch::nn::Sequential policy_stn;  // conv, BN, tanh, flatten, (linear, BN1d, tanh) x 2, linear, sigmoid

 private:
  struct Glance {
    torch::Tensor logits, aux_logits;  // (B, C): mean over frames of new_fc (detached input) and new_new_fc
    torch::Tensor maps;                // (B, T*Cg, h, w)
  };
  Glance glance(const torch::Tensor& clip);
  /// The two TSNs by their official names.
  std::vector<std::pair<std::string, const TSNImpl*>> networks() const;
  torch::Tensor actions(const Glance& g, int64_t videos, const std::string& policy);
  /// Mean local logits and auxiliary logits (B, C) of the patch at `actions` (B, 2) in every focus frame.
  std::pair<torch::Tensor, torch::Tensor> focus(const torch::Tensor& focus_clip, const torch::Tensor& actions);

  int64_t frames_, focus_frames_, patch_;
  std::string policy_;
  LearningRates lr_;
};

/// adafocus_v2_tsm in the registry.
MethodInfo adafocus_v2_tsm_method();

}  // namespace adafocus::methods
