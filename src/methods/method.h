// The one interface every method implements, so that the trainer, evaluator, predictor, FLOPs counter and benchmark
// work over all of them.
//
// Legend: B videos, T frames of the clip, Tf frames of the focus clip, S input side, C classes, K exits,
// R regions looked at per video, F frames a region spans, n videos still in a batch that is leaving exit by exit.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/config.h"
#include "nn/backbone.h"

namespace adafocus::methods {

/// What a method is given: the clip and, for methods that sample their focus frames separately, the focus clip.
struct Clips {
  torch::Tensor frames;  ///< (B, T, 3, S, S), normalised
  torch::Tensor focus;   ///< (B, Tf, 3, S, S) or undefined
};

struct Prediction {
  torch::Tensor logits;   ///< (B, K, C): the prediction after each exit, the last one final
  torch::Tensor regions;  ///< (B, R, 4) boxes (x, y, w, h) in input pixels; undefined for full-frame methods
  torch::Tensor region_frames;  ///< (B, R, F) int64: the clip positions each region spans, in the focus clip when
                                ///< the method has one, else in the clip (V2: R = T, F = 1; V2-TSM: R = 1, F = Tf)
  torch::Tensor gflops;  ///< (B,) double: methods whose cost depends on the video (AdaFuse) - each video's counted
                         ///< GFLOPs; undefined otherwise
  /// What only this method computes, by name, batch first: predict --raw and --output write them under these names
  /// (AdaFocusV2: glance_logits and local_logits (B, T, C), its auxiliary heads' per-frame predictions; actions
  /// (B, T, 2), its policy's (row, column) as official).
  std::map<std::string, torch::Tensor> outputs;
  /// Figures an evaluation reports as their mean over the videos, by name: (B,) double per video (AdaFuse: kept,
  /// reused and skipped, the fractions of its gated channels).
  std::map<std::string, torch::Tensor> video_means;
  /// Predictions of a part of the method alone, by name: (B, C) logits whose top-1 an evaluation reports as
  /// <name>_top1 (AdaFocusV2: glance, its glance head averaged over the frames).
  std::map<std::string, torch::Tensor> part_logits;
};

struct Losses {
  torch::Tensor total;                                     ///< scalar, what is minimised
  std::vector<std::pair<std::string, torch::Tensor>> terms;  ///< named parts of `total`, detached
  /// What the method reports of this step, detached scalars by name (the names its MethodInfo lists): the trainer
  /// averages them per epoch into metrics.jsonl (AdaFocus V1's PPO reward, AdaFuse's GFLOPs and gate fractions).
  std::vector<std::pair<std::string, torch::Tensor>> statistics;
  torch::Tensor logits;                                    ///< (B, C) final prediction of the step (accuracy)
  /// Where the learned policy looked in this step, detached, as Prediction's regions (B, R, 4) and region_frames
  /// (B, R, F): the training log follows the policy. Undefined when no learned policy ran.
  torch::Tensor regions, region_frames;
};

/// What one exit of the exit-by-exit path gives for the n videos still in the batch.
struct ExitStep {
  torch::Tensor logits;         ///< (n, C): the prediction at this exit
  torch::Tensor regions;        ///< (n, R, 4): what this exit looked at, as Prediction; undefined when nothing
  torch::Tensor region_frames;  ///< (n, R, F), as Prediction
  torch::Tensor gflops;         ///< (n,) double: what this exit cost each video, for methods whose cost depends on the
                                ///< video (AdaFuse: Prediction::gflops); undefined otherwise
};

/// Exit-by-exit inference on one batch (eval mode, no gradients), so that videos leave as soon as their prediction
/// is good enough and the work shrinks with the batch: next() runs exit 0, then 1, ... for the videos still present;
/// keep() drops those that left. The logits equal predict()'s.
class ExitStepper {
 public:
  virtual ~ExitStepper() = default;
  virtual ExitStep next() = 0;
  /// Keeps the videos at `rows` (n') int64 of those present, in that order, and drops the rest.
  virtual void keep(const torch::Tensor& rows) = 0;
};

/// Per-step facts a method's training may depend on.
struct StepContext {
  int64_t epoch = 0;
  /// The policy branch is trained from this epoch on; before it only the random-patch branch runs (benchmark
  /// warm-up: the crop's gradient is local, so a policy trained from the start on a weak local network collapses).
  int64_t policy_from_epoch = 0;
  /// From policy_from_epoch on, only the policy learns; the rest is frozen (AdaFocusV3-TSM's second stage).
  bool policy_only = false;
  /// The stage being trained, for methods trained in stages (AdaFocus V1: 0 to 3); -1 otherwise.
  int64_t stage = -1;
};

/// State dicts by name, in order: the entries of a checkpoint file that are state dicts.
using NamedStateDicts = std::vector<std::pair<std::string, nn::StateDict>>;

/// A checkpoint file as the official code saves it: the state dicts its scripts load (V2: 'state_dict'; V1:
/// 'model_state_dict' and the parts 'glancer', 'focuser', 'fc', 'policy') and the other entries they read.
struct OfficialCheckpoint {
  NamedStateDicts state_dicts;
  std::vector<std::pair<std::string, c10::IValue>> values;  ///< V1: 'epoch' and 'best_acc'
};

/// Parameters sharing a learning-rate multiplier (the official per-group ratios) and a weight-decay multiplier.
struct ParamGroup {
  std::string name;
  std::vector<std::pair<std::string, torch::Tensor>> params;  ///< state-dict name, parameter
  double lr_mult = 1.0;
  double decay_mult = 1.0;  ///< x train.weight_decay
};

class MethodImpl : public torch::nn::Module {
 public:
  /// Inference on a batch (call in eval mode, under NoGradGuard).
  virtual Prediction predict(const Clips& clips) = 0;
  /// One training step's losses for `target` (B,) (train mode).
  virtual Losses loss(const Clips& clips, const torch::Tensor& target, const StepContext& context) = 0;
  /// The parameters by learning-rate group; every parameter in exactly one group.
  virtual std::vector<ParamGroup> param_groups() = 0;
  /// K, the number of exits (predict's logits.size(1)).
  virtual int64_t exits() const { return 1; }
  /// How its exits judge a prediction confident unless told otherwise (calibrate --criterion): max_logit |
  /// max_softmax | entropy. Entropy is the AdaFocusV3 paper's.
  virtual std::string exit_criterion() const { return "entropy"; }
  /// The exit-by-exit path on a batch. The default has one exit, predict() itself.
  virtual std::unique_ptr<ExitStepper> stepper(const Clips& clips);
  /// Translates checkpoints written by the official code (names, backbone layouts) to ours.
  virtual nn::StateDict import_state_dict(const nn::StateDict& state) const { return state; }
  /// The model's state dict from a checkpoint file: `model`, the file's model entry without "module." prefixes,
  /// through import_state_dict; `entries`, the file's state dicts by name (official files only), for methods whose
  /// official scripts save part of the model apart (V1-TSM: its PPO policy, which the official model does not hold).
  virtual nn::StateDict import_checkpoint(const nn::StateDict& model, const NamedStateDicts& entries) const {
    return import_state_dict(model);
  }
  /// Ours -> the layout the official code's load_state_dict(strict=True) takes (without "module." prefixes); the
  /// inverse of import_state_dict. Throws adafocus::Error for methods without official code to check it against.
  virtual nn::StateDict export_official_state_dict(const nn::StateDict& state) const;
  /// Ours -> the checkpoint file the official scripts load (import_checkpoint's inverse). The default:
  /// {'state_dict': export_official_state_dict with DataParallel's "module." prefixes}, as V2, V2-TSM and AdaFuse
  /// save and load theirs.
  virtual OfficialCheckpoint export_official_checkpoint(const nn::StateDict& state) const;
  /// Loads ImageNet (torchvision-layout) weights into the backbones named in the config, classifiers excluded.
  virtual void load_pretrained(const Config& config) {}
  /// What the FLOPs of one clip are counted on: predict(); AdaFuse, whose cost depends on the video, runs its dense
  /// upper bound here (every channel computed) and reports each video's real cost in Prediction::gflops.
  virtual void flops_forward(const Clips& clips) { predict(clips); }
  /// Once the weights are final, for inference only: every backbone's BatchNorm folded into its convolutions and
  /// computing in channels-last (nn::BackboneImpl::fold_batchnorm). Predictions agree with the plain model to float
  /// rounding; the state dict, training mode and FLOPs counts are unchanged. AdaFuse folds in its own skipping path.
  virtual void optimize_for_inference();
  /// Changes where patches go at test time (learned | random | center) without retraining; throws if the method
  /// has no patches.
  virtual void set_policy(const std::string& policy);
};

using Method = std::shared_ptr<MethodImpl>;

/// The method the config describes (model.method, methods/registry.h), with `num_classes` outputs, initialised as
/// its paper does.
Method make_method(const Config& config, int64_t num_classes);

/// Options of a backbone section of the config (model.backbone, model.glance or model.local). `segments`: frames
/// per clip, for the temporal shift when the section enables it.
nn::BackboneOptions backbone_options(const Config& config, const std::string& section, int64_t num_classes,
                                     int64_t segments);

/// Loads a torchvision-layout state dict into `backbone`, all but its classifier (whose size differs by dataset) and
/// the parameters `added` names (layers a method adds to the backbone, such as AdaFuse's gates), which keep their
/// initial values.
void load_backbone_weights(nn::BackboneImpl& backbone, const std::string& path,
                           const std::function<bool(const std::string&)>& added = {});
/// The weights model.glance.weights and model.local.weights name, when they do, into the two networks.
void load_glance_and_local_weights(const Config& config, nn::BackboneImpl& glance, nn::BackboneImpl& local);

/// `translate` applied to the keys under `prefix` (one network's: the prefix taken off, then put back on); the other
/// keys pass as they are.
nn::StateDict translate_under(const nn::StateDict& state, const std::string& prefix,
                              const std::function<nn::StateDict(const nn::StateDict&)>& translate);
/// The keys of `state` under `prefix`, without it.
nn::StateDict sub_state_dict(const nn::StateDict& state, const std::string& prefix);
/// `state` without the keys `drop` has.
nn::StateDict without_keys(const nn::StateDict& state, const nn::StateDict& drop);

/// Cross-entropy of per-frame logits (B*T, C) against each video's label (B,) repeated over its T frames, as official.
torch::Tensor per_frame_ce(const torch::Tensor& logits, const torch::Tensor& target, int64_t frames);
/// Dropout then a linear layer: the official heads ("0" dropout, "1" linear).
torch::nn::Sequential dropout_linear(double dropout, int64_t in, int64_t out);

/// Frames (N, 3, H, W) shrunk to side x side: bilinear with align_corners=True (the official glance resize) or
/// area averaging; returned unchanged when already that size.
torch::Tensor resize_frames(const torch::Tensor& frames, int64_t side, const std::string& mode);

/// `policy` when it is learned, random or center; throws otherwise.
const std::string& checked_policy(const std::string& policy);

/// Patch positions (n, 2) in (0, 1)^2 of a fixed placement: uniform random, or the centre (0.5, 0.5).
torch::Tensor fixed_actions(const std::string& policy, int64_t n, const torch::TensorOptions& options);

}  // namespace adafocus::methods
