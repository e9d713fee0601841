// AdaFocusV3 (Wang et al., ECCV 2022): a glance network sees every frame of the clip at once; a non-recurrent policy
// reads all their feature maps and places K video cubes (P x P pixels x L frames) in one shot; a local network reads
// the cubes one after another, and a classifier gives a prediction p_0 from the glance alone and p_k after each cube,
// so that inference can stop at any exit. No official code exists: the paper's equations are followed, and where it
// is silent the choice (marked "Choice:") is the AdaFocusV2 / Uni-AdaFocus one (reference facts §4a, §4c).
//
// Settings (both in this class):
//   frame-wise cubes (L = 1, ActivityNet family): cubes are cut from the clip itself, at most one per frame; at test
//     time a frame taken by an earlier cube is never processed again;
//   TSM cubes (L = 12, Something-Something): glance and local networks with the temporal shift; cubes are cut from
//     the focus clip (data.focus_segments candidates), at most 2, side by side before training; at test time a cube
//     leaves out the frames an earlier one took; trained in two stages (train.policy_only).
// Training (Eq. 1, with V2's pipeline): the sum over exits of the cross-entropy of p_k, for the policy's cubes and
// for uniformly random ones, plus auxiliary glance and local heads; the policy reads stop-gradient glance maps and
// learns through the local features by the deep-feature estimator (Eq. 5-6) or the pixel one (Eq. 2-4).
//
// Legend: B videos, T glance frames, Tc frames cubes are cut from, K cubes, L frames per cube, S input side, P cube
// side, Cg / Cl glance / local channels, H classifier hidden size, C classes, n videos still in the batch.
#pragma once

#include "methods/method.h"
#include "methods/options.h"
#include "methods/registry.h"

namespace adafocus::methods {

/// The policy: 3D convolutions over the glance maps of all frames (as Uni-AdaFocus's spatial policy), then one
/// linear layer and a sigmoid giving every cube's corner as (row, column, time) fractions.
class CubePolicyImpl : public torch::nn::Module {
 public:
  /// `start_times` (K) fractions in (0, 1): where each cube starts in time before any training.
  CubePolicyImpl(int64_t map_channels, int64_t frames, int64_t map_h, int64_t map_w, int64_t channels,
                 const std::vector<double>& start_times);
  /// maps (B, T, Cg, h, w) -> actions (B, K, 3) in (0, 1)
  torch::Tensor forward(const torch::Tensor& maps);

  torch::nn::Sequential encoder;  // (conv3d, BN3d, ReLU) x 3: 1x1x1 then 3x3x3 twice
  torch::nn::Linear fc{nullptr};

 private:
  int64_t cubes_;
};
TORCH_MODULE(CubePolicy);

/// FrameExit-style classifier over cubes (Uni-AdaFocus's layout): glance and local MLPs (linear + BN + ReLU), the
/// glance features max-pooled over all frames give p_0, the local ones max-pooled over the cubes seen so far (with
/// the glance's, when `concat`) give p_k; one head per exit.
class CubeClassifierImpl : public torch::nn::Module {
 public:
  CubeClassifierImpl(int64_t glance_dim, int64_t local_dim, int64_t hidden, int64_t cubes, int64_t num_classes,
                     double dropout, bool concat);
  /// glance features (B, T, Cg) -> (B, H), max over the frames
  torch::Tensor glance(const torch::Tensor& features);
  /// local features (N, Cl) -> (N, H)
  torch::Tensor local(const torch::Tensor& features);
  /// exit k: k = 0 from the glance (B, H); k >= 1 from the running max of the local features (B, H) too
  torch::Tensor head(int64_t k, const torch::Tensor& local, const torch::Tensor& glance);
  /// glance features (B, T, Cg), local features (B, K, Cl) -> logits (B, K + 1, C)
  torch::Tensor forward(const torch::Tensor& glance_features, const torch::Tensor& local_features);

  torch::nn::Sequential global_mlp, local_mlp;  // 0 linear, 1 BN1d, 2 ReLU
  torch::nn::ModuleList classifiers;            // K + 1 x (0 dropout, 1 linear)

 private:
  bool concat_;
};
TORCH_MODULE(CubeClassifier);

struct AdaFocusV3Options {
  explicit AdaFocusV3Options(GlanceFocusOptions base) : base_(std::move(base)) {}

  static AdaFocusV3Options from_config(const Config& config);

  TORCH_ARG(GlanceFocusOptions, base);                 ///< focus_frames > 0: cubes are cut from the focus clip
  TORCH_ARG(int64_t, cube_frames) = 1;                 ///< model.cube_frames (L)
  TORCH_ARG(int64_t, cubes) = 0;                       ///< model.cubes (K; 0: as many as fit side by side in time)
  TORCH_ARG(std::string, policy_gradient) = "feature"; ///< model.policy_gradient: feature (V3's) | pixel
  TORCH_ARG(std::string, fuse) = "concat";             ///< model.fuse: p_k reads concat[local, glance] | local
};

class AdaFocusV3Impl : public MethodImpl {
 public:
  AdaFocusV3Impl(const AdaFocusV3Options& options, int64_t num_classes);

  Prediction predict(const Clips& clips) override;
  Losses loss(const Clips& clips, const torch::Tensor& target, const StepContext& context) override;
  std::vector<ParamGroup> param_groups() override;
  int64_t exits() const override { return cubes_ + 1; }
  /// Exit 0 runs the glance; exit 1 the policy and the local network on cube 1; exit k on cube k. predict() is this
  /// path run to the last exit.
  std::unique_ptr<ExitStepper> stepper(const Clips& clips) override;
  void load_pretrained(const Config& config) override;
  /// learned | random | center (centred in space, spread in time) | time_only | space_only (the other half random).
  void set_policy(const std::string& policy) override;

  nn::Backbone global_CNN, local_CNN;
  torch::nn::Sequential global_CNN_fc, local_CNN_fc;  // auxiliary heads: 0 dropout, 1 linear
  CubePolicy policy{nullptr};
  CubeClassifier classifier{nullptr};

 private:
  friend class V3Stepper;
  struct Glance {
    torch::Tensor maps;      // (B, T, Cg, h, w)
    torch::Tensor features;  // (B, T, Cg)
  };
  Glance glance(const torch::Tensor& clip);
  /// The clip cubes are cut from: the focus clip when there is one.
  const torch::Tensor& source(const Clips& clips) const;
  /// Cube positions (B, K, 3) as fractions for `policy`; learned ones keep their gradient.
  torch::Tensor actions(const Glance& g, const std::string& policy);
  /// Test-time corners (B, K, 3): integral frames (frame-wise cubes: each frame at most once).
  torch::Tensor test_corners(const torch::Tensor& actions, const torch::Tensor& source) const;
  /// Local features (N, Cl) of cubes (N, L', 3, P, P): mean over the cube's frames of the pooled feature maps (a
  /// TSM local network shifts over the L' frames given).
  torch::Tensor cube_features(const torch::Tensor& cubes);
  /// Training: local features (B, K, Cl) of the cubes at `actions`, with the policy's gradient estimator.
  torch::Tensor train_features(const torch::Tensor& source, const torch::Tensor& actions, bool learned);
  /// Prediction's regions (B, K, 4) and region_frames (B, K, L) of cubes at `corners` (B, K, 3).
  std::pair<torch::Tensor, torch::Tensor> regions(const torch::Tensor& corners) const;

  int64_t frames_, source_frames_, cubes_, length_, patch_, glance_size_;
  std::string resize_, policy_, gradient_;
  LearningRates lr_;
};

/// adafocus_v3 in the registry.
MethodInfo adafocus_v3_method();

}  // namespace adafocus::methods
