#include "methods/adafocus_v3.h"

#include <cmath>
#include <set>
#include <tuple>

#include "core/error.h"
#include "methods/baselines.h"
#include "nn/cube_crop.h"
#include "nn/kernels.h"

namespace adafocus::methods {

namespace {

torch::nn::Sequential mlp(int64_t in, int64_t hidden) {
  return torch::nn::Sequential(torch::nn::Linear(in, hidden), torch::nn::BatchNorm1d(hidden), torch::nn::ReLU());
}

// Choice: before training, cubes start at the centre of the frame and spread over the clip in time, coarse to fine
// (the middle slot first, then each time the one farthest from those taken - like V2's input_order), so that an
// untrained policy covers the video instead of stacking every cube on one frame. The slots are the cube's start
// positions that tile the `frames` the cubes are cut from without overlap (each frame for frame-wise cubes; 0 and 12
// for two cubes of 12 frames in 24) when the cubes fit side by side, else every start position. Returns K time
// fractions of the start range [0, frames - length].
std::vector<double> spread_times(int64_t cubes, int64_t frames, int64_t length) {
  const int64_t positions = frames - length + 1, tiles = frames / length;
  const int64_t slots = cubes <= tiles ? tiles : positions;
  const double span = static_cast<double>(std::max<int64_t>(1, positions - 1));
  auto start = [&](int64_t slot) {  // the slot's start frame: slots evenly spread over [0, frames - length]
    return slots > 1 ? std::round(static_cast<double>(slot) * static_cast<double>(positions - 1) / static_cast<double>(slots - 1)) : 0.0;
  };
  std::vector<int64_t> taken;
  std::vector<double> out;
  for (int64_t k = 0; k < cubes; ++k) {
    int64_t best = slots > 1 ? (slots - 1) / 2 : 0, best_distance = -1;
    for (int64_t p = 0; !taken.empty() && p < slots; ++p) {
      int64_t distance = slots;
      for (int64_t t : taken) distance = std::min(distance, std::abs(p - t));
      if (distance > best_distance) best = p, best_distance = distance;
    }
    taken.push_back(best);
    // A fraction strictly inside (0, 1), 0.4 of a position away from the ends, so that the sigmoid can reach it.
    out.push_back(std::clamp(start(best) / span, 0.4 / span, 1.0 - 0.4 / span));
  }
  return out;
}

}  // namespace

CubePolicyImpl::CubePolicyImpl(int64_t map_channels, int64_t frames, int64_t map_h, int64_t map_w, int64_t channels,
                               const std::vector<double>& start_times)
    : cubes_(static_cast<int64_t>(start_times.size())) {
  namespace nn = torch::nn;
  encoder->push_back(nn::Conv3d(nn::Conv3dOptions(map_channels, channels, 1).bias(false)));
  encoder->push_back(nn::BatchNorm3d(channels));
  encoder->push_back(nn::ReLU());
  for (int i = 0; i < 2; ++i) {
    encoder->push_back(nn::Conv3d(nn::Conv3dOptions(channels, channels, 3).padding(1).bias(false)));
    encoder->push_back(nn::BatchNorm3d(channels));
    encoder->push_back(nn::ReLU());
  }
  register_module("encoder", encoder);
  fc = register_module("fc", nn::Linear(channels * frames * map_h * map_w, 3 * cubes_));
  torch::NoGradGuard no_grad;
  fc->weight.zero_();
  auto bias = torch::zeros({cubes_, 3});  // rows and columns: sigmoid(0) = the centre
  for (int64_t k = 0; k < cubes_; ++k) {
    const double t = start_times[static_cast<size_t>(k)];
    bias[k][2] = std::log(t / (1 - t));
  }
  fc->bias.copy_(bias.flatten());
}

torch::Tensor CubePolicyImpl::forward(const torch::Tensor& maps) {
  torch::Tensor x;
  if (torch::GradMode::is_enabled()) {
    x = encoder->forward(maps.permute({0, 2, 1, 3, 4}));  // (B, c, T, h, w)
  } else {
    // Inference: the 1x1x1 convolution as a linear layer over each cell's channels, its output (B, T, h, w, c)
    // viewed as (B, c, T, h, w) in channels-last-3d, where the 3x3x3 ones follow: the same products. LibTorch's
    // conv3d takes this 1x1x1 at batch 8 (1.2 GMACs at the ActivityNet preset's size) at a tenth of its usual rate:
    // in PyTorch (the same LibTorch) 93 ms, the whole encoder 191 ms against 55 so.
    const auto& first = *encoder[0]->as<torch::nn::Conv3d>();
    x = torch::linear(maps.permute({0, 1, 3, 4, 2}), first.weight.flatten(1)).permute({0, 4, 1, 2, 3});
    for (auto layer = std::next(encoder->begin()); layer != encoder->end(); ++layer) {
      // Choice: the 3x3x3 convolutions straight through oneDNN (at::mkldnn_convolution) on CPU floats: at batch 1
      // LibTorch's conv3d ran them without oneDNN, at about 2.7x the time (PyTorch with the same LibTorch, at the
      // ActivityNet preset's size); at batch 8 both run oneDNN's.
      const auto* conv = layer->ptr()->as<torch::nn::Conv3d>();
      const auto* padding = conv ? c10::get_if<torch::ExpandingArray<3>>(&conv->options.padding()) : nullptr;
      if (padding && x.is_cpu() && x.scalar_type() == torch::kFloat && at::hasMKLDNN())
        x = at::mkldnn_convolution(x, conv->weight, conv->bias, *padding, conv->options.stride(),
                                   conv->options.dilation(), conv->options.groups());  // (B, c, T, h, w)
      else
        x = layer->forward(x);
    }
  }
  return torch::sigmoid(nn::small_batch_linear(x.flatten(1), fc->weight, fc->bias)).view({-1, cubes_, 3});  // (B, K, 3)
}

CubeClassifierImpl::CubeClassifierImpl(int64_t glance_dim, int64_t local_dim, int64_t hidden, int64_t cubes,
                                       int64_t num_classes, double dropout, bool concat)
    : concat_(concat) {
  global_mlp = register_module("global_mlp", mlp(glance_dim, hidden));
  local_mlp = register_module("local_mlp", mlp(local_dim, hidden));
  classifiers->push_back(dropout_linear(dropout, hidden, num_classes));
  for (int64_t k = 1; k <= cubes; ++k) classifiers->push_back(dropout_linear(dropout, concat ? 2 * hidden : hidden, num_classes));
  register_module("classifiers", classifiers);
}

torch::Tensor CubeClassifierImpl::glance(const torch::Tensor& features) {
  const int64_t b = features.size(0), t = features.size(1);
  return std::get<0>(nn::sequential_forward(*global_mlp, features.reshape({b * t, -1})).view({b, t, -1}).max(1));  // (B, H)
}

torch::Tensor CubeClassifierImpl::local(const torch::Tensor& features) {
  return nn::sequential_forward(*local_mlp, features);
}

torch::Tensor CubeClassifierImpl::head(int64_t k, const torch::Tensor& local, const torch::Tensor& glance) {
  const auto& h = classifiers[static_cast<size_t>(k)]->as<torch::nn::Sequential>();
  if (k == 0) return nn::sequential_forward(*h, glance);
  return nn::sequential_forward(*h, concat_ ? torch::cat({local, glance}, 1) : local);  // (B, C)
}

torch::Tensor CubeClassifierImpl::forward(const torch::Tensor& glance_features, const torch::Tensor& local_features) {
  const int64_t b = local_features.size(0), k = local_features.size(1);
  const auto zg = glance(glance_features);                                                          // (B, H)
  const auto zl = std::get<0>(torch::cummax(local(local_features.reshape({b * k, -1})).view({b, k, -1}), 1));  // (B, K, H)
  std::vector<torch::Tensor> logits{head(0, {}, zg)};
  for (int64_t i = 1; i <= k; ++i) logits.push_back(head(i, zl.select(1, i - 1), zg));
  return torch::stack(logits, 1);  // (B, K + 1, C)
}

AdaFocusV3Options AdaFocusV3Options::from_config(const Config& c) {
  const std::string gradient =
      c.get_string("model.policy_gradient") == "paper" ? "feature" : c.get_string("model.policy_gradient");
  if (gradient != "feature" && gradient != "pixel")
    throw Error("model.policy_gradient must be feature, pixel or paper, not '" + gradient + "'",
                c.origin("model.policy_gradient"));
  if (c.get_bool("data.input_order"))
    throw Error("adafocus_v3 places cubes in time: it needs the frames in time order", c.origin("data.input_order"),
                "set data.input_order=false");
  const int64_t length = c.get_int("model.cube_frames"), cubes = c.get_int("model.cubes");
  const int64_t source_frames = c.get_int("data.focus_segments") > 0 ? c.get_int("data.focus_segments")
                                                                       : c.get_int("data.segments");
  if (length < 1 || length > source_frames)
    throw Error("model.cube_frames must be in [1, " + std::to_string(source_frames) + "] (the frames cubes are cut from)",
                c.origin("model.cube_frames"));
  if (length == 1 && cubes > source_frames)
    throw Error("model.cubes " + std::to_string(cubes) + ": frame-wise cubes take each frame at most once, and the clip has " +
                    std::to_string(source_frames),
                c.origin("model.cubes"));
  if (gradient == "feature" && length + 1 > source_frames)
    throw Error("the deep-feature gradient cuts cubes one frame longer (" + std::to_string(length + 1) +
                    " frames): they do not fit in the " + std::to_string(source_frames) + " frames cubes are cut from",
                c.origin("model.policy_gradient"), "use fewer model.cube_frames or model.policy_gradient=pixel");
  if (c.get_string("model.fuse") != "concat" && c.get_string("model.fuse") != "local")
    throw Error("model.fuse must be concat or local", c.origin("model.fuse"));
  return AdaFocusV3Options(GlanceFocusOptions::from_config(c, length))
      .cube_frames(length)
      .cubes(cubes)
      .policy_gradient(gradient)
      .fuse(c.get_string("model.fuse"));
}

AdaFocusV3Impl::AdaFocusV3Impl(const AdaFocusV3Options& options, int64_t num_classes)
    : frames_(options.base().frames()),
      source_frames_(options.base().focus_frames() > 0 ? options.base().focus_frames() : frames_),
      length_(options.cube_frames()),
      patch_(options.base().patch_size()),
      glance_size_(options.base().glance_size()),
      resize_(options.base().resize()),
      gradient_(options.policy_gradient()),
      lr_(options.base().lr()) {
  const GlanceFocusOptions& o = options.base();
  set_policy(o.policy());
  // Choice: by default as many cubes as fit side by side in time (frame-wise: one per frame; 12 of 24: 2).
  cubes_ = options.cubes() > 0 ? options.cubes() : source_frames_ / length_;
  global_CNN = register_module("global_CNN", nn::make_backbone(o.glance()));
  local_CNN = register_module("local_CNN", nn::make_backbone(o.local()));
  global_CNN_fc = register_module("global_CNN_fc", dropout_linear(o.fc_dropout(), global_CNN->feature_dim(), num_classes));
  local_CNN_fc = register_module("local_CNN_fc", dropout_linear(o.fc_dropout(), local_CNN->feature_dim(), num_classes));
  torch::Tensor map;
  {
    torch::NoGradGuard no_grad;
    global_CNN->eval();
    map = global_CNN->feature_map(torch::zeros({frames_, 3, glance_size_, glance_size_}));  // (T, Cg, h, w)
    global_CNN->train();
  }
  policy = register_module("policy", CubePolicy(map.size(1), frames_, map.size(2), map.size(3), o.policy_channels(),
                                                spread_times(cubes_, source_frames_, length_)));
  classifier = register_module("classifier",
                               CubeClassifier(global_CNN->feature_dim(), local_CNN->feature_dim(), o.classifier_hidden(),
                                              cubes_, num_classes, o.dropout(), options.fuse() == "concat"));
}

void AdaFocusV3Impl::set_policy(const std::string& p) {
  if (p != "learned" && p != "random" && p != "center" && p != "time_only" && p != "space_only")
    throw Error("model.policy must be learned, random, center, time_only or space_only for adafocus_v3, not '" + p + "'");
  policy_ = p;
}

AdaFocusV3Impl::Glance AdaFocusV3Impl::glance(const torch::Tensor& clip) {
  TORCH_CHECK(clip.dim() == 5 && clip.size(1) == frames_, "AdaFocusV3: expected clips (B, ", frames_,
              ", 3, S, S), got ", clip.sizes());
  const int64_t b = clip.size(0);
  const auto frames = clip.reshape({-1, clip.size(2), clip.size(3), clip.size(4)});     // (B*T, 3, S, S)
  const auto maps = global_CNN->feature_map(resize_frames(frames, glance_size_, resize_));  // (B*T, Cg, h, w)
  return {maps.view({b, frames_, maps.size(1), maps.size(2), maps.size(3)}), global_CNN->pool(maps).view({b, frames_, -1})};
}

const torch::Tensor& AdaFocusV3Impl::source(const Clips& clips) const {
  return clips.focus.defined() ? clips.focus : clips.frames;
}

torch::Tensor AdaFocusV3Impl::actions(const Glance& g, const std::string& p) {
  const int64_t b = g.maps.size(0), starts = source_frames_ - length_ + 1;  // where a cube can start in time
  const auto o = g.maps.options();
  if (p == "center") {
    auto a = torch::full({b, cubes_, 3}, 0.5, o);
    a.select(2, 2).copy_(torch::tensor(spread_times(cubes_, source_frames_, length_), o).unsqueeze(0).expand({b, cubes_}));
    return a;
  }
  torch::Tensor learned;
  if (p != "random") learned = policy->forward(g.maps.detach());  // (B, K, 3); stop-gradient on the glance, as V2
  if (p == "learned") return learned;
  // Random: uniform in space; in time distinct frames for frame-wise cubes (what test-time removal would give),
  // uniform starts otherwise.
  const auto space = torch::rand({b, cubes_, 2}, o);
  const torch::Tensor time =
      (length_ == 1 ? torch::rand({b, starts}, o).argsort(/*dim=*/1, /*descending=*/false).narrow(1, 0, cubes_).to(o.dtype()) /
                          static_cast<double>(std::max<int64_t>(1, starts - 1))
                    : torch::rand({b, cubes_}, o))
          .unsqueeze(2);  // (B, K, 1)
  if (p == "random") return torch::cat({space, time}, 2);
  if (p == "time_only") return torch::cat({space, learned.narrow(2, 2, 1)}, 2);
  return torch::cat({learned.narrow(2, 0, 2), time}, 2);  // space_only
}

torch::Tensor AdaFocusV3Impl::test_corners(const torch::Tensor& actions, const torch::Tensor& source) const {
  auto q = nn::cube_corners(actions, source.size(3), source.size(4), source_frames_, patch_, length_);  // (B, K, 3)
  // Whole frames at test time (no frames mixed); frame-wise cubes never take a frame twice.
  const auto t = length_ == 1 ? nn::assign_frames(q.select(2, 2), source_frames_).to(q.dtype())
                              : torch::round(q.select(2, 2));
  return torch::cat({q.narrow(2, 0, 2), t.unsqueeze(2)}, 2);
}

torch::Tensor AdaFocusV3Impl::cube_features(const torch::Tensor& cubes) {
  const int64_t n = cubes.size(0), frames = cubes.size(1);
  nn::TemporalShiftSegments segments(*local_CNN, frames);  // a TSM cube shortened at test time is its own clip
  const auto maps = local_CNN->feature_map(cubes.reshape({n * frames, cubes.size(2), cubes.size(3), cubes.size(4)}));
  return local_CNN->pool(maps).view({n, frames, -1}).mean(1);  // (N, Cl)
}

torch::Tensor AdaFocusV3Impl::train_features(const torch::Tensor& source, const torch::Tensor& actions, bool learned) {
  const int64_t b = source.size(0), s = source.size(3);
  auto q = nn::cube_corners(actions, s, source.size(4), source_frames_, patch_, length_);  // (B, K, 3)
  if (!learned || gradient_ == "pixel") {
    // Fixed placements are cut at whole frames; the pixel estimator (Eq. 2-4) interpolates between frames.
    if (!learned) q = torch::cat({q.narrow(2, 0, 2), torch::round(q.narrow(2, 2, 1))}, 2);
    const auto cubes = nn::sample_cubes(source, q, patch_, length_);  // (B, K, L, 3, P, P)
    return cube_features(cubes.reshape({b * cubes_, length_, 3, patch_, patch_})).view({b, cubes_, -1});
  }
  // Eq. 5-6: features of cubes one cell larger, interpolated at the real position.
  const nn::EnlargedCubes e = nn::enlarge_cubes(q, source_frames_, patch_, length_, local_CNN->stride());
  const auto cubes = nn::sample_cubes(source, e.corners, e.side, e.length);  // (B, K, L+1, 3, P+s, P+s)
  const int64_t n = b * cubes_;
  torch::Tensor maps;
  {
    nn::TemporalShiftSegments segments(*local_CNN, e.length);  // TSM local networks see the L+1 frames as one clip
    // Channels-last, as AdaFocusV2's feature gradient: a 1-thread benchmark step 486 -> 402 ms (docs/benchmark.md).
    maps = local_CNN->feature_map(cubes.reshape({n * e.length, 3, e.side, e.side}).contiguous(torch::MemoryFormat::ChannelsLast));  // (N*(L+1), Cl, h+1, w+1)
  }
  const auto cube_maps = nn::interpolate_cube_features(
      maps.view({n, e.length, maps.size(1), maps.size(2), maps.size(3)}), e.offsets.view({n, 3}));  // (N, L, Cl, h, w)
  return cube_maps.mean({3, 4}).mean(1).view({b, cubes_, -1});  // (B, K, Cl)
}

std::pair<torch::Tensor, torch::Tensor> AdaFocusV3Impl::regions(const torch::Tensor& corners) const {
  const auto side = torch::full({corners.size(0), cubes_, 1}, static_cast<double>(patch_), corners.options());
  return {torch::cat({corners.narrow(2, 1, 1), corners.narrow(2, 0, 1), side, side}, 2),     // (B, K, 4) x, y, w, h
          corners.select(2, 2).round().to(torch::kLong).unsqueeze(2) +
              torch::arange(length_, torch::TensorOptions(torch::kLong).device(corners.device()))};  // (B, K, L)
}

Losses AdaFocusV3Impl::loss(const Clips& clips, const torch::Tensor& target, const StepContext& context) {
  namespace F = torch::nn::functional;
  const bool learns = policy_ == "learned" || policy_ == "time_only" || policy_ == "space_only";
  const bool policy_joined = learns && context.epoch >= context.policy_from_epoch;
  const bool policy_alone = policy_joined && context.policy_only;
  if (policy_alone)  // the paper's second stage: everything but the policy frozen, BN statistics included; the
                     // gradient still flows through the frozen networks to the policy
    for (torch::nn::Module* m : std::initializer_list<torch::nn::Module*>{
             global_CNN.get(), local_CNN.get(), classifier.get(), global_CNN_fc.get(), local_CNN_fc.get()}) {
      m->eval();
      for (auto& p : m->parameters()) p.requires_grad_(false);
    }
  const Glance g = glance(clips.frames);
  const auto& src = source(clips);
  const int64_t b = src.size(0);
  std::vector<std::string> branches;
  if (policy_alone)
    branches = {policy_};
  else if (policy_joined)
    branches = {policy_, "random"};  // V2's pipeline: the policy's cubes and random ones
  else
    branches = {learns ? "random" : policy_};
  // The auxiliary glance head (V2's pipeline), trained with the networks, not in the policy's own stage.
  const auto glance_ce = policy_alone ? torch::Tensor()
                                      : F::cross_entropy(global_CNN_fc->forward(g.features.reshape({b * frames_, -1})),
                                                         target.repeat_interleave(frames_));
  Losses out;
  torch::Tensor total = torch::zeros({}, g.features.options());
  for (const auto& branch : branches) {
    const bool learned = branch != "random" && branch != "center";
    const auto a = actions(g, branch);                                   // (B, K, 3)
    const auto local = train_features(src, a, learned);                  // (B, K, Cl)
    if (learned)
      std::tie(out.regions, out.region_frames) =
          regions(nn::cube_corners(a.detach(), src.size(3), src.size(4), source_frames_, patch_, length_));
    const auto logits = classifier->forward(g.features, local);          // (B, K + 1, C)
    // Eq. 1: cross-entropy of every exit's prediction (averaged over exits, as V2 averages over frames).
    const auto exits_ce = F::cross_entropy(logits.reshape({b * (cubes_ + 1), -1}), target.repeat_interleave(cubes_ + 1));
    total = total + exits_ce;
    out.terms.emplace_back(branch + "_exits", exits_ce.detach());
    if (!policy_alone) {
      const auto local_ce = F::cross_entropy(local_CNN_fc->forward(local.reshape({b * cubes_, -1})),
                                             target.repeat_interleave(cubes_));
      total = total + glance_ce + local_ce;
      out.terms.emplace_back(branch + "_local", local_ce.detach());
    }
    if (!out.logits.defined()) out.logits = logits.select(1, cubes_).detach();
  }
  if (!policy_alone) out.terms.emplace_back("glance", glance_ce.detach());
  out.total = total / static_cast<double>(branches.size());
  return out;
}

std::vector<ParamGroup> AdaFocusV3Impl::param_groups() {
  return {{"policy", prefixed_parameters("policy", *policy), lr_.policy()},
          {"glance", prefixed_parameters({{"global_CNN", global_CNN.get()}, {"global_CNN_fc", global_CNN_fc.ptr().get()}}),
           lr_.glance()},
          {"local", prefixed_parameters({{"local_CNN", local_CNN.get()}, {"local_CNN_fc", local_CNN_fc.ptr().get()}}),
           lr_.local()},
          {"classifier", prefixed_parameters("classifier", *classifier), lr_.classifier()}};
}

// The one test-time forward, exit by exit (predict() runs every exit for every video). Exit 0 predicts from the
// glance alone; exit 1 runs the policy for the videos still present, then cube 1 - as Uni-AdaFocus counts the policy's
// cost from exit 1 on, so a video leaving at p_0 has paid for the glance and its head only; exit k cuts cube k. No
// frame is processed twice (the paper's frame removal): frame-wise cubes get distinct frames (test_corners), and a
// longer cube leaves out the frames an earlier cube took, running on the rest as a shorter clip.
//
// Frame-wise cubes (length 1): without exits (predict) every cube runs in one call of the local network; with exits,
// one cube a step for the videos present. Choice: no cubes run ahead of the exits. Run ahead in calls of 1, 2, 4, ...
// cubes (a video leaving at exit k had run up to 2k - 1), they paid while a ResNet-50 reordered its weights on every
// call, which made one 128 px patch to a call twice as long per patch as 16; with the weights packed once per
// layout (nn::FoldedConv) it is 1.25x, and the cubes run ahead cost more than they saved.
class V3Stepper : public ExitStepper {
 public:
  V3Stepper(AdaFocusV3Impl& m, const Clips& clips, bool all_exits)
      : m_(m), source_(m.source(clips)), glance_(m.glance(clips.frames)), all_exits_(all_exits) {
    pooled_ = m.classifier->glance(glance_.features);  // (n, H)
    present_ = torch::arange(source_.size(0), torch::TensorOptions(torch::kLong).device(source_.device()));
  }

  ExitStep next() override {
    TORCH_CHECK(k_ <= m_.cubes_, "AdaFocusV3 has ", m_.cubes_ + 1, " exits");
    ExitStep step;
    if (k_ == 1) {
      corners_ = m_.test_corners(m_.actions(glance_, m_.policy_), source_);  // (n, K, 3)
      glance_ = {};  // read by the policy only
    }
    if (k_ > 0) {
      const int64_t n = present_.size(0), length = m_.length_;
      const auto corner = corners_.select(1, k_ - 1);  // (n, 3), whole frames in time
      const auto first = corner.select(1, 2).to(torch::kLong);
      const auto frames = first.unsqueeze(1) + torch::arange(length, first.options());  // (n, L)
      if (length == 1) {
        if (!ahead_.defined() || k_ - 1 >= ahead_from_ + ahead_.size(1)) run_ahead(all_exits_ ? m_.cubes_ : 1);
        const auto z = ahead_.select(1, k_ - 1 - ahead_from_);  // (n, H)
        local_ = local_.defined() ? torch::max(local_, z) : z;
      } else {
        auto fresh = torch::ones_like(frames, torch::kBool);  // (n, L): not taken by an earlier cube
        for (int64_t j = 0; j + 1 < k_; ++j) {
          const auto taken = corners_.select(1, j).select(1, 2).to(torch::kLong).unsqueeze(1);  // (n, 1)
          fresh &= (frames < taken) | (frames >= taken + length);
        }
        const auto counts = fresh.sum(1);  // (n,) frames left to run: L, unless an earlier cube took some
        const auto counts_cpu = counts.cpu();
        const std::set<int64_t> distinct(counts_cpu.data_ptr<int64_t>(), counts_cpu.data_ptr<int64_t>() + n);
        torch::Tensor updated = local_.defined() ? local_.clone() : torch::Tensor();
        for (const int64_t r : distinct) {
          if (r == 0) continue;  // every frame already seen: the running max stays
          const auto rows = (counts == r).nonzero().squeeze(1);  // (m,) of the n present
          const int64_t m = rows.size(0);
          // Gather only those frames of the videos concerned, then cut the cube out of them.
          const auto kept = frames.index_select(0, rows).masked_select(fresh.index_select(0, rows)).view({m, r});
          const auto flat = (present_.index_select(0, rows).unsqueeze(1) * source_.size(1) + kept).flatten();
          const auto clips = frame_rows().index_select(0, flat);  // (m r, 3, S, S)
          const auto z = cube_locals(clips.view({m, r, clips.size(1), clips.size(2), clips.size(3)}),
                                     corner.index_select(0, rows));  // (m, H)
          if (!updated.defined()) updated = torch::empty({n, z.size(1)}, z.options());
          updated.index_copy_(0, rows, local_.defined() ? torch::max(local_.index_select(0, rows), z) : z);
        }
        local_ = updated;  // (n, H) running max over the cubes seen
      }
      const auto side = torch::full({n, 1}, static_cast<double>(m_.patch_), corner.options());
      // The region is the cube as placed, over its whole window (frames an earlier cube took included).
      step.regions = torch::cat({corner.narrow(1, 1, 1), corner.narrow(1, 0, 1), side, side}, 1).unsqueeze(1);  // (n, 1, 4)
      step.region_frames = frames.unsqueeze(1);                                                             // (n, 1, L)
    }
    step.logits = m_.classifier->head(k_, local_, pooled_);  // (n, C)
    ++k_;
    return step;
  }

  void keep(const torch::Tensor& rows) override {
    present_ = present_.index_select(0, rows);
    pooled_ = pooled_.index_select(0, rows);
    if (corners_.defined()) {
      corners_ = corners_.index_select(0, rows);
    } else {  // the policy has not run yet: it will read these videos' glance maps
      glance_.maps = glance_.maps.index_select(0, rows);
      glance_.features = glance_.features.index_select(0, rows);
    }
    if (local_.defined()) local_ = local_.index_select(0, rows);
    if (ahead_.defined()) ahead_ = ahead_.index_select(0, rows);
  }

 private:
  torch::Tensor frame_rows() const {  // (B * Tc, 3, S, S)
    return source_.reshape({-1, source_.size(2), source_.size(3), source_.size(4)});
  }

  // clips (m, r, 3, S, S), corner (m, 3): each clip's cube at the corner's (x, y) over all its r frames -> the local
  // network's features (m, H).
  torch::Tensor cube_locals(const torch::Tensor& clips, const torch::Tensor& corner) const {
    const int64_t m = clips.size(0), r = clips.size(1), p = m_.patch_;
    const auto at =
        torch::cat({corner.narrow(1, 0, 2), torch::zeros({m, 1}, corner.options())}, 1).unsqueeze(1);  // (m, 1, 3)
    const auto cube = nn::sample_cubes(clips, at, p, r);  // (m, 1, r, 3, P, P)
    return m_.classifier->local(m_.cube_features(cube.reshape({m, r, 3, p, p})));
  }

  // ahead_ <- the local features of the next `c` cubes, from cube k_ on.
  void run_ahead(int64_t c) {
    const int64_t n = present_.size(0), from = k_ - 1;
    c = std::min(c, m_.cubes_ - from);
    const auto corner = corners_.narrow(1, from, c);  // (n, c, 3)
    const auto first = corner.select(2, 2).to(torch::kLong);  // (n, c)
    const auto flat = (present_.unsqueeze(1) * source_.size(1) + first).flatten();  // (n c)
    const auto clips = frame_rows().index_select(0, flat);  // (n c, 3, S, S)
    ahead_ = cube_locals(clips.unsqueeze(1), corner.reshape({n * c, 3})).view({n, c, -1});
    ahead_from_ = from;
  }

  AdaFocusV3Impl& m_;
  torch::Tensor source_, present_;  // (B, Tc, 3, S, S) as given; rows of the n videos still present
  AdaFocusV3Impl::Glance glance_;   // maps (n, T, Cg, h, w), features (n, T, Cg), until the policy has read them
  torch::Tensor pooled_, corners_, local_;  // (n, H) glance features max-pooled, (n, K, 3), running max (n, H)
  bool all_exits_;       // predict(): every cube in one call
  torch::Tensor ahead_;  // (n, A, H) local features of cubes ahead_from_ + 1, ... (frame-wise cubes)
  int64_t ahead_from_ = 0;
  int64_t k_ = 0;
};

Prediction AdaFocusV3Impl::predict(const Clips& clips) {
  V3Stepper steps(*this, clips, true);
  std::vector<torch::Tensor> logits, regions, frames;
  for (int64_t k = 0; k <= cubes_; ++k) {
    const ExitStep s = steps.next();
    logits.push_back(s.logits);
    if (s.regions.defined()) {
      regions.push_back(s.regions);
      frames.push_back(s.region_frames);
    }
  }
  Prediction p;
  p.logits = torch::stack(logits, 1);    // (B, K + 1, C)
  p.regions = torch::cat(regions, 1);    // (B, K, 4)
  p.region_frames = torch::cat(frames, 1);  // (B, K, L)
  return p;
}

std::unique_ptr<ExitStepper> AdaFocusV3Impl::stepper(const Clips& clips) {
  return std::make_unique<V3Stepper>(*this, clips, false);
}

MethodInfo adafocus_v3_method() {
  MethodInfo m = method_info_of<AdaFocusV3Impl, AdaFocusV3Options>("adafocus_v3");
  m.pretrained = {"glance", "local"};
  m.presets = {"activitynet_v3", "activitynet_v3_p96", "fcvid_v3", "minik_v3", "sthv1_v3_tsm", "sthv2_v3_tsm"};
  m.dense_baseline = [](const Config& c) { return full_frame_of(c, "local"); };
  return m;
}

void AdaFocusV3Impl::load_pretrained(const Config& c) { load_glance_and_local_weights(c, *global_CNN, *local_CNN); }

}  // namespace adafocus::methods
