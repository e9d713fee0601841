// Full-frame baselines: TSN (Wang et al. 2016) and, with the temporal shift, TSM (Lin et al. 2019): a 2D network on
// every frame at a chosen resolution, logits averaged over the frames. Also the TSN wrapper the official AdaFocusV2-TSM
// code builds its glance and local networks from.
//
// Legend: B videos, T frames, S input side, R network resolution, Cf feature channels, C classes.
#pragma once

#include "methods/method.h"
#include "methods/options.h"
#include "methods/registry.h"

namespace adafocus::methods {

/// The official TSN module: `base_model` (a backbone whose own classifier is unused), dropout on the pooled feature,
/// then `new_fc`; with `detached_head`, as in AdaFocusV2-TSM, new_fc reads detached features and a second head
/// `new_new_fc` reads the live ones, so the backbone learns only from the latter.
class TSNImpl : public torch::nn::Module {
 public:
  TSNImpl(const nn::BackboneOptions& options, int64_t num_classes, double dropout, bool detached_head);
  /// frames (N, 3, R, R) -> pooled features after dropout (N, Cf); `map` receives the feature map if given.
  torch::Tensor features(const torch::Tensor& frames, torch::Tensor* map = nullptr);
  /// State-dict entries of base_model's unused classifier, which official checkpoints do not have.
  nn::StateDict unused_classifier() const;

  nn::Backbone base_model;
  torch::nn::Dropout dropout{nullptr};
  torch::nn::Linear new_fc{nullptr}, new_new_fc{nullptr};
};
TORCH_MODULE(TSN);

/// One network on whole frames (TSN, or TSM with the backbone's shift), resized to its resolution: the full-frame
/// baselines, and AdaFuse's network.
struct FullFrameOptions {
  explicit FullFrameOptions(nn::BackboneOptions backbone) : backbone_(std::move(backbone)) {}

  static FullFrameOptions from_config(const Config& config);

  TORCH_ARG(nn::BackboneOptions, backbone);     ///< model.backbone, TSM over the clip's frames
  TORCH_ARG(int64_t, frames) = 16;              ///< data.segments (T)
  TORCH_ARG(int64_t, resolution) = 224;         ///< model.backbone.resolution, else data.input_size (R)
  TORCH_ARG(std::string, resize) = "bilinear";  ///< model.resize: how frames are shrunk to R
  TORCH_ARG(double, dropout) = 0.2;             ///< model.dropout
  TORCH_ARG(LearningRates, lr);                 ///< local: the backbone's multiplier; classifier
};

/// TSN/TSM on whole frames, resized to model.backbone.resolution: full_frame_low_res / full_frame_full_res.
class FullFrameImpl : public MethodImpl {
 public:
  FullFrameImpl(const FullFrameOptions& options, int64_t num_classes);
  Prediction predict(const Clips& clips) override;
  Losses loss(const Clips& clips, const torch::Tensor& target, const StepContext& context) override;
  std::vector<ParamGroup> param_groups() override;
  nn::StateDict import_state_dict(const nn::StateDict& state) const override;
  void load_pretrained(const Config& config) override;

  TSN tsn{nullptr};  // its parts are registered as base_model, dropout, new_fc

 private:
  /// clips (B, T, 3, S, S) -> video logits (B, C), averaged over the frames
  torch::Tensor logits(const torch::Tensor& clips);

  int64_t frames_, resolution_;
  std::string resize_;
  LearningRates lr_;
};

/// full_frame in the registry.
MethodInfo full_frame_method();
/// Configuration of the full-frame network (model.method full_frame) of the `section` backbone of `config` (model.local
/// for the methods with patches: at the full input size), which a method's measured speed is compared with.
Config full_frame_of(const Config& config, const std::string& section);

/// Named parameters of `module` with `prefix.` in front, for ParamGroup.
std::vector<std::pair<std::string, torch::Tensor>> prefixed_parameters(const std::string& prefix,
                                                                       const torch::nn::Module& module);
/// The same for several modules, in order.
std::vector<std::pair<std::string, torch::Tensor>> prefixed_parameters(
    std::initializer_list<std::pair<std::string, const torch::nn::Module*>> modules);

}  // namespace adafocus::methods
