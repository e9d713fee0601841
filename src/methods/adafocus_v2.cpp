#include "methods/adafocus_v2.h"

#include <functional>

#include "core/error.h"
#include "methods/baselines.h"
#include "nn/cube_crop.h"
#include "nn/kernels.h"
#include "nn/patch_crop.h"

namespace adafocus::methods {


PolicySTNImpl::PolicySTNImpl(int64_t map_channels, int64_t map_cells, int64_t channels, int64_t hidden,
                             bool zero_init) {
  encoder->push_back(torch::nn::Conv2d(torch::nn::Conv2dOptions(map_channels, channels, 1).bias(false)));
  encoder->push_back(torch::nn::BatchNorm2d(channels));
  encoder->push_back(torch::nn::Tanh());
  encoder->push_back(torch::nn::Flatten());
  encoder->push_back(torch::nn::Linear(channels * map_cells, hidden));
  encoder->push_back(torch::nn::BatchNorm1d(hidden));
  encoder->push_back(torch::nn::Tanh());
  register_module("encoder", encoder);
  gru = register_module("gru", torch::nn::GRU(torch::nn::GRUOptions(hidden, hidden).batch_first(true)));
  fc->push_back(torch::nn::Linear(hidden, 2));
  fc->push_back(torch::nn::Sigmoid());
  register_module("fc", fc);
  if (zero_init) {  // every patch starts at the centre and moves as the policy learns (benchmark preset)
    torch::NoGradGuard no_grad;
    for (auto& p : fc[0]->parameters()) p.zero_();
  }
}

torch::Tensor PolicySTNImpl::forward(const torch::Tensor& maps, int64_t frames, torch::Tensor* hidden) {
  auto state = nn::sequential_forward(*encoder, maps);          // (B*T, H)
  state = state.view({-1, frames, state.size(1)});              // (B, T, H)
  auto [out, last] = nn::gru_forward(*gru, state, hidden ? *hidden : torch::Tensor());  // undefined h0: zeros
  if (hidden) *hidden = last;                                   // (1, B, H)
  return nn::sequential_forward(*fc, out.reshape({-1, out.size(2)}));  // (B*T, 2)
}

PoolingClassifierImpl::PoolingClassifierImpl(int64_t input_dim, int64_t hidden, int64_t frames, int64_t num_classes,
                                             double dropout) {
  mlp_layers->push_back(torch::nn::Linear(input_dim, hidden));
  mlp_layers->push_back(torch::nn::BatchNorm1d(hidden));
  mlp_layers->push_back(torch::nn::ReLU());
  auto mlp = std::make_shared<torch::nn::Module>();
  mlp->register_module("layers", mlp_layers);
  register_module("mlp", mlp);
  for (int64_t t = 0; t < frames; ++t) classifiers->push_back(dropout_linear(dropout, hidden, num_classes));
  register_module("classifiers", classifiers);
}

torch::Tensor PoolingClassifierImpl::forward(const torch::Tensor& features, int64_t first, torch::Tensor* pooled) {
  const int64_t b = features.size(0), t = features.size(1);
  TORCH_CHECK(first + t <= static_cast<int64_t>(classifiers->size()), "classifier built for ", classifiers->size(),
              " frames, given steps ", first, " to ", first + t - 1);
  auto z = nn::sequential_forward(*mlp_layers, features.reshape({b * t, -1})).view({b, t, -1});  // (B, T', H)
  if (pooled && pooled->defined()) z = torch::max(z, pooled->unsqueeze(1));       // the earlier steps' max
  z = std::get<0>(torch::cummax(z, 1));                                         // max over frames 0..t
  if (pooled) *pooled = z.select(1, t - 1);                                     // (B, H)
  std::vector<torch::Tensor> logits;
  for (int64_t i = 0; i < t; ++i)
    logits.push_back(nn::sequential_forward(*classifiers[first + i]->as<torch::nn::Sequential>(), z.select(1, i)));
  return torch::stack(logits, 1);  // (B, T', C)
}

AdaFocusV2Options AdaFocusV2Options::from_config(const Config& c) {
  const std::string gradient =
      c.get_string("model.policy_gradient") == "paper" ? "pixel" : c.get_string("model.policy_gradient");
  if (gradient != "feature" && gradient != "pixel")
    throw Error("model.policy_gradient must be pixel, feature or paper, not '" + gradient + "'",
                c.origin("model.policy_gradient"));
  const std::string fuse = c.get_string("model.fuse");
  if (fuse != "concat" && fuse != "local")
    throw Error("model.fuse must be concat or local, not '" + fuse + "'", c.origin("model.fuse"));
  return AdaFocusV2Options(GlanceFocusOptions::from_config(c, c.get_int("data.segments")))
      .fuse(fuse)
      .policy_gradient(gradient)
      .policy_zero_init(c.get_bool("model.policy_zero_init"));
}

AdaFocusV2Impl::AdaFocusV2Impl(const AdaFocusV2Options& options, int64_t num_classes)
    : frames_(options.base().frames()),
      patch_(options.base().patch_size()),
      glance_size_(options.base().glance_size()),
      resize_(options.base().resize()),
      policy_(options.base().policy()),
      fuse_(options.fuse()),
      gradient_(options.policy_gradient()),
      lr_(options.base().lr()) {
  const GlanceFocusOptions& o = options.base();
  set_policy(policy_);
  global_CNN = register_module("global_CNN", nn::make_backbone(o.glance()));
  local_CNN = register_module("local_CNN", nn::make_backbone(o.local()));
  global_CNN_fc = register_module("global_CNN_fc", dropout_linear(o.fc_dropout(), global_CNN->feature_dim(), num_classes));
  local_CNN_fc = register_module("local_CNN_fc", dropout_linear(o.fc_dropout(), local_CNN->feature_dim(), num_classes));

  // The policy reads the whole glance feature map: its size depends on the glance network and resolution.
  torch::Tensor map;
  {
    torch::NoGradGuard no_grad;
    global_CNN->eval();
    map = global_CNN->feature_map(torch::zeros({1, 3, glance_size_, glance_size_}));  // (1, Cg, h, w)
    global_CNN->train();
  }
  policy_stn = register_module("policy_stn", PolicySTN(map.size(1), map.size(2) * map.size(3), o.policy_channels(),
                                                       o.policy_hidden(), options.policy_zero_init()));
  const int64_t fused = (fuse_ == "concat" ? global_CNN->feature_dim() : 0) + local_CNN->feature_dim();
  classifier = register_module(
      "classifier", PoolingClassifier(fused, o.classifier_hidden(), frames_, num_classes, o.dropout()));
}

void AdaFocusV2Impl::set_policy(const std::string& policy) { policy_ = checked_policy(policy); }

AdaFocusV2Impl::Glance AdaFocusV2Impl::glance(const torch::Tensor& clips) {
  TORCH_CHECK(clips.dim() == 5 && clips.size(1) == frames_, "AdaFocusV2: expected clips (B, ", frames_,
              ", 3, S, S), got ", clips.sizes());
  return glance_frames(clips.reshape({-1, clips.size(2), clips.size(3), clips.size(4)}));  // (B*T, 3, S, S)
}

AdaFocusV2Impl::Glance AdaFocusV2Impl::glance_frames(const torch::Tensor& frames) {
  Glance g;
  g.frames = frames;                                                               // (B*T', 3, S, S)
  g.map = global_CNN->feature_map(resize_frames(g.frames, glance_size_, resize_));  // (B*T', Cg, h, w)
  g.feature = global_CNN->pool(g.map);                                            // (B*T', Cg)
  return g;
}

torch::Tensor AdaFocusV2Impl::actions(const Glance& g, const std::string& policy, int64_t steps, torch::Tensor* hidden) {
  const int64_t n = g.frames.size(0);
  if (policy != "learned") return fixed_actions(policy, n, g.frames.options());
  // Stop-gradient on the policy's input: the glance network learns from its own head only.
  return policy_stn->forward(g.map.detach(), steps, hidden);  // (B*T', 2)
}

std::pair<torch::Tensor, torch::Tensor> AdaFocusV2Impl::focus(const Glance& g, const torch::Tensor& actions,
                                                               int64_t steps, bool feature_gradient, int64_t first,
                                                               torch::Tensor* pooled) {
  const auto local = feature_gradient ? feature_gradient_local(g.frames, actions)  // (B*T', Cl)
                                      : local_CNN->pool(local_CNN->feature_map(nn::crop_patches(g.frames, actions, patch_)));
  const auto fused = fuse_ == "concat" ? torch::cat({g.feature, local}, 1) : local;  // (B*T', D)
  return {classifier->forward(fused.view({-1, steps, fused.size(1)}), first, pooled), local};  // (B, T', C), (B*T', Cl)
}

torch::Tensor AdaFocusV2Impl::frame_positions(int64_t b, const torch::Device& device) const {
  return torch::arange(frames_, torch::TensorOptions(torch::kLong).device(device)).view({1, frames_, 1}).expand({b, frames_, 1});
}

// AdaFocusV3's deep-feature estimator (Eq. 5-6) on V2's patches, a patch being a one-frame cube: the features of a
// patch one feature cell larger, centred on the real one and cut without gradient, interpolated at the real patch's
// place. The crop's own gradient is the image's spatial gradient inside the patch - zero unless the patch already
// overlaps the item; this one is how the features change across a cell, which a cell's receptive field makes
// reach further. Not in the paper's AdaFocusV2 (model.policy_gradient: pixel there).
torch::Tensor AdaFocusV2Impl::feature_gradient_local(const torch::Tensor& frames, const torch::Tensor& actions) {
  const int64_t n = frames.size(0), s = local_CNN->stride();
  const auto range = torch::tensor({static_cast<double>(frames.size(2) - patch_), static_cast<double>(frames.size(3) - patch_)},
                                   actions.options());
  const auto q = actions * range;  // (N, 2) corners (y, x) in pixels, with the policy's gradient
  const auto fixed = q.detach();
  const auto no_time = torch::zeros({n, 1}, q.options());
  torch::Tensor patches;
  {
    torch::NoGradGuard no_grad;
    const auto corners = torch::cat({fixed - s / 2.0, no_time}, 1).unsqueeze(1);  // (N, 1, 3) half a cell out
    patches = nn::sample_cubes(frames.unsqueeze(1), corners, patch_ + s, 1).view({n, frames.size(1), patch_ + s, patch_ + s});
  }
  // Channels-last: oneDNN runs the small-channel convolutions of these enlarged patches 2-4x faster so (a 1-thread
  // benchmark policy step: 293 -> 255 ms); not for the plain patches, where it was slower (docs/benchmark.md).
  const auto maps = local_CNN->feature_map(patches.contiguous(torch::MemoryFormat::ChannelsLast));  // (N, Cl, h+1, w+1)
  // Eq. 6: the offset's value is half a cell, its gradient that of the real corner. One frame: the map stands in for
  // the enlarged cube's second frame too, at time offset 0, where it has no weight.
  const auto offsets = torch::cat({(q - fixed) / static_cast<double>(s) + 0.5, no_time}, 1);  // (N, 3)
  const auto local = nn::interpolate_cube_features(maps.unsqueeze(1).expand({n, 2, maps.size(1), maps.size(2), maps.size(3)}),
                                                   offsets);  // (N, 1, Cl, h, w)
  return local.mean({1, 3, 4});                                  // (N, Cl)
}

Prediction AdaFocusV2Impl::predict(const Clips& clips) {
  const Glance g = glance(clips.frames);
  const auto a = actions(g, policy_, frames_);
  const auto [logits, local] = focus(g, a, frames_);
  Prediction p;
  p.logits = logits;  // (B, T, C): exit t has seen frames 0..t
  p.regions = nn::patch_boxes(a, g.frames.size(2), g.frames.size(3), patch_).view({-1, frames_, 4});  // (B, T, 4)
  p.region_frames = frame_positions(logits.size(0), logits.device());
  // The official forward runs the auxiliary heads at test time too, and the papers' GFLOPs include them (facts §8).
  const auto glance_logits = global_CNN_fc->forward(g.feature).view({-1, frames_, logits.size(2)});  // (B, T, C)
  p.outputs["glance_logits"] = glance_logits;
  p.outputs["local_logits"] = local_CNN_fc->forward(local).view({-1, frames_, logits.size(2)});  // (B, T, C)
  p.outputs["actions"] = a.view({-1, frames_, 2});  // (B, T, 2) (row, column) in [0, 1], as official
  p.part_logits["glance"] = glance_logits.mean(1);  // (B, C): the glance alone, its head averaged over the frames
  return p;
}

Losses AdaFocusV2Impl::loss(const Clips& clips, const torch::Tensor& target, const StepContext& context) {
  const Glance g = glance(clips.frames);
  const auto global_logits = global_CNN_fc->forward(g.feature);  // (B*T, C)
  // Official: the policy's patches and uniformly random ones, losses averaged. Baselines train with their own
  // fixed placement only; before policy_from_epoch the learned policy sits out and only random patches run.
  std::vector<std::string> branches{policy_};
  if (policy_ == "learned") branches = context.epoch < context.policy_from_epoch
                                           ? std::vector<std::string>{"random"}
                                           : std::vector<std::string>{"learned", "random"};
  Losses out;
  torch::Tensor total = torch::zeros({}, g.frames.options());
  for (const auto& branch : branches) {
    const auto a = actions(g, branch, frames_);              // (B*T, 2)
    const auto [logits, local] = focus(g, a, frames_, branch == "learned" && gradient_ == "feature");  // (B, T, C), (B*T, Cl)
    if (branch == "learned") {
      out.regions = nn::patch_boxes(a.detach(), g.frames.size(2), g.frames.size(3), patch_).view({-1, frames_, 4});
      out.region_frames = frame_positions(logits.size(0), logits.device());
    }
    const auto fused_ce = per_frame_ce(logits.reshape({-1, logits.size(2)}), target, frames_);
    const auto global_ce = per_frame_ce(global_logits, target, frames_);
    const auto local_ce = per_frame_ce(local_CNN_fc->forward(local), target, frames_);
    total = total + fused_ce + global_ce + local_ce;
    out.terms.emplace_back(branch + "_fused", fused_ce.detach());
    out.terms.emplace_back(branch + "_local", local_ce.detach());
    if (!out.logits.defined()) out.logits = logits.select(1, frames_ - 1).detach();
    if (branch == branches.front()) out.terms.emplace_back("glance", global_ce.detach());
  }
  out.total = total / static_cast<double>(branches.size());
  return out;
}

// predict()'s steps (glance, policy, focus) one frame at a time: the policy's GRU state and the classifier's running
// max carry over between frames. The auxiliary heads do not change the prediction and are not run.
class V2Stepper : public ExitStepper {
 public:
  V2Stepper(AdaFocusV2Impl& m, const torch::Tensor& clip) : m_(m), clip_(clip) {
    TORCH_CHECK(clip.dim() == 5 && clip.size(1) == m.frames_, "AdaFocusV2: expected clips (B, ", m.frames_,
                ", 3, S, S), got ", clip.sizes());
  }

  ExitStep next() override {
    TORCH_CHECK(t_ < m_.frames_, "AdaFocusV2 has ", m_.frames_, " exits");
    // Only this frame of the videos still present is gathered: the batch shrinks without copying whole clips.
    const auto frame = present_.defined() ? clip_.select(1, t_).index_select(0, present_) : clip_.select(1, t_);  // (n, 3, S, S)
    const AdaFocusV2Impl::Glance g = m_.glance_frames(frame);
    const auto a = m_.actions(g, m_.policy_, 1, &hidden_);                    // (n, 2)
    ExitStep step;
    step.logits = m_.focus(g, a, 1, false, t_, &pooled_).first.select(1, 0);  // (n, C)
    step.regions = nn::patch_boxes(a, frame.size(2), frame.size(3), m_.patch_).unsqueeze(1);  // (n, 1, 4)
    step.region_frames = torch::full({frame.size(0), 1, 1}, t_, torch::kLong);
    ++t_;
    return step;
  }

  void keep(const torch::Tensor& rows) override {
    present_ = present_.defined() ? present_.index_select(0, rows) : rows;
    if (hidden_.defined()) hidden_ = hidden_.index_select(1, rows);
    if (pooled_.defined()) pooled_ = pooled_.index_select(0, rows);
  }

 private:
  AdaFocusV2Impl& m_;
  torch::Tensor clip_, present_;          // (B, T, 3, S, S), the rows of the n videos still present (all if undefined)
  torch::Tensor hidden_, pooled_;         // GRU state (1, n, H), running max (n, H)
  int64_t t_ = 0;
};

std::unique_ptr<ExitStepper> AdaFocusV2Impl::stepper(const Clips& clips) {
  return std::make_unique<V2Stepper>(*this, clips.frames);
}

std::vector<ParamGroup> AdaFocusV2Impl::param_groups() {
  // The official groups: policy_stn, global_CNN(+fc), local_CNN(+fc), classifier.
  return {{"policy", prefixed_parameters("policy_stn", *policy_stn), lr_.policy()},
          {"glance", prefixed_parameters({{"global_CNN", global_CNN.get()}, {"global_CNN_fc", global_CNN_fc.ptr().get()}}),
           lr_.glance()},
          {"local", prefixed_parameters({{"local_CNN", local_CNN.get()}, {"local_CNN_fc", local_CNN_fc.ptr().get()}}),
           lr_.local()},
          {"classifier", prefixed_parameters("classifier", *classifier), lr_.classifier()}};
}

nn::StateDict AdaFocusV2Impl::import_state_dict(const nn::StateDict& state) const {
  // The official glance network is tonylins' MobileNetV2 layout; translate its keys under global_CNN.
  return translate_under(state, "global_CNN.", [&](const nn::StateDict& s) { return global_CNN->import_state_dict(s); });
}

nn::StateDict AdaFocusV2Impl::export_official_state_dict(const nn::StateDict& state) const {
  // import_state_dict's inverse: the glance network back to its official layout, the rest as it is.
  return translate_under(state, "global_CNN.",
                         [&](const nn::StateDict& s) { return global_CNN->export_official_state_dict(s); });
}

MethodInfo adafocus_v2_method() {
  MethodInfo m = method_info_of<AdaFocusV2Impl, AdaFocusV2Options>("adafocus_v2");
  m.pretrained = {"glance", "local"};
  m.presets = {"activitynet_v2", "activitynet_v2_p96", "activitynet_v2_p160", "activitynet_v2_res50_glance",
               "fcvid_v2", "minik_v2"};
  m.dense_baseline = [](const Config& c) { return full_frame_of(c, "local"); };
  return m;
}

void AdaFocusV2Impl::load_pretrained(const Config& c) { load_glance_and_local_weights(c, *global_CNN, *local_CNN); }

}  // namespace adafocus::methods
