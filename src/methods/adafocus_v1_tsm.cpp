#include "methods/adafocus_v1_tsm.h"

#include <cmath>
#include <optional>

#include "core/error.h"
#include "methods/adafocus_v1.h"
#include "nn/kernels.h"

namespace adafocus::methods {

namespace F = torch::nn::functional;

GaussianActorCriticImpl::GaussianActorCriticImpl(int64_t map_channels, int64_t map_cells, int64_t channels,
                                                 int64_t hidden) {
  state_encoder->push_back(torch::nn::Conv2d(torch::nn::Conv2dOptions(map_channels, channels, 1).bias(false)));
  state_encoder->push_back(torch::nn::BatchNorm2d(channels));
  state_encoder->push_back(torch::nn::ReLU());
  state_encoder->push_back(torch::nn::Flatten());
  state_encoder->push_back(torch::nn::Linear(channels * map_cells, hidden));
  state_encoder->push_back(torch::nn::BatchNorm1d(hidden));
  state_encoder->push_back(torch::nn::ReLU());
  register_module("state_encoder", state_encoder);
  gru = register_module("gru", torch::nn::GRU(torch::nn::GRUOptions(hidden, hidden)));
  actor->push_back(torch::nn::Linear(hidden, 2));
  actor->push_back(torch::nn::Sigmoid());
  register_module("actor", actor);
  critic->push_back(torch::nn::Linear(hidden, 1));
  register_module("critic", critic);
}

torch::Tensor GaussianActorCriticImpl::forward(const torch::Tensor& maps) {
  const auto state = state_encoder->forward(maps).unsqueeze(0);  // (1, n, H)
  return std::get<0>(nn::gru_forward(*gru, state, {})).squeeze(0);  // (n, H), from a zero state
}

AdaFocusV1TSMOptions AdaFocusV1TSMOptions::from_config(const Config& c) {
  if (c.get_int("data.focus_segments") <= 0)
    throw Error("adafocus_v1_tsm needs data.focus_segments > 0 (official: 12 focus frames for 8 glance frames)",
                c.origin("data.focus_segments"));
  if (c.get_float("model.policy_std") <= 0)
    throw Error("model.policy_std must be > 0 (official: 0.25)", c.origin("model.policy_std"));
  return AdaFocusV1TSMOptions(GlanceFocusOptions::from_config(c, c.get_int("data.focus_segments")))
      .policy_std(c.get_float("model.policy_std"))
      .ppo(PpoOptions::from_config(c));
}

AdaFocusV1TSMImpl::AdaFocusV1TSMImpl(const AdaFocusV1TSMOptions& options, int64_t num_classes)
    : frames_(options.base().frames()),
      focus_frames_(options.base().focus_frames()),
      patch_(options.base().patch_size()),
      glance_size_(options.base().glance_size()),
      resize_(options.base().resize()),
      action_std_(options.policy_std()),
      ppo_(options.ppo()),
      lr_(options.base().lr()) {
  const GlanceFocusOptions& o = options.base();
  set_policy(o.policy());

  auto glancer_holder = register_module("glancer", std::make_shared<torch::nn::Module>());
  glancer = glancer_holder->register_module("net", nn::make_backbone(nn::BackboneOptions(o.glance()).num_classes(num_classes)));
  auto focuser_holder = register_module("focuser", std::make_shared<torch::nn::Module>());
  // Our TSN has a new_fc, unused here (the focus logits come from the top-level classifier); V1s's TSN has none.
  focuser = focuser_holder->register_module(
      "net", TSN(o.local(), num_classes, o.dropout(), false));
  torch::Tensor map;
  {
    torch::NoGradGuard no_grad;
    glancer->eval();
    map = glancer->feature_map(torch::zeros({frames_, 3, glance_size_, glance_size_}));  // (T, Cg, h, w)
    glancer->train();
  }
  auto ppo = focuser_holder->register_module("policy", std::make_shared<torch::nn::Module>());
  policy = ppo->register_module("policy", GaussianActorCritic(frames_ * map.size(1), map.size(2) * map.size(3),
                                                              o.policy_channels(), o.policy_hidden()));
  classifier = register_module("classifier", torch::nn::Linear(focuser->base_model->feature_dim(), num_classes));
}

void AdaFocusV1TSMImpl::set_policy(const std::string& policy) { policy_ = checked_policy(policy); }

AdaFocusV1TSMImpl::Glance AdaFocusV1TSMImpl::glance(const torch::Tensor& clip) {
  TORCH_CHECK(clip.dim() == 5 && clip.size(1) == frames_, "adafocus_v1_tsm: expected glance clips (B, ", frames_,
              ", 3, S, S), got ", clip.sizes());
  const int64_t b = clip.size(0);
  // The glancer learns only in stage 0 (backbone_loss); here it runs without gradient, as official.
  torch::NoGradGuard no_grad;
  const auto map = glancer->feature_map(
      resize_frames(clip.reshape({-1, clip.size(2), clip.size(3), clip.size(4)}), glance_size_, resize_));  // (B*T, Cg, h, w)
  Glance g;
  g.logits = glancer->classify(glancer->pool(map)).view({b, frames_, -1}).mean(1);  // (B, C)
  g.maps = map.reshape({b, frames_ * map.size(1), map.size(2), map.size(3)});        // (B, T*Cg, h, w)
  return g;
}

torch::Tensor AdaFocusV1TSMImpl::corners(const torch::Tensor& actions, int64_t side) const {
  return (actions.detach().to(torch::kDouble) * static_cast<double>(side - patch_)).floor().to(torch::kLong);  // (n, 2)
}

torch::Tensor AdaFocusV1TSMImpl::focus(const torch::Tensor& clip, const torch::Tensor& at, bool learn_focuser) {
  TORCH_CHECK(clip.dim() == 5 && clip.size(1) == focus_frames_, "adafocus_v1_tsm: expected focus clips (B, ",
              focus_frames_, ", 3, S, S), got ", clip.sizes());
  const int64_t b = clip.size(0);
  // One patch per video: cut the frames stacked on channels, as official.
  const auto stacked = clip.reshape({b, focus_frames_ * 3, clip.size(3), clip.size(4)});        // (B, Tf*3, S, S)
  const auto patches = hard_crop(stacked, at, patch_).reshape({b * focus_frames_, 3, patch_, patch_});
  std::optional<torch::NoGradGuard> frozen;
  if (!learn_focuser) frozen.emplace();
  const auto features = focuser->features(patches);  // (B*Tf, Cl)
  frozen.reset();
  return classifier->forward(features).view({b, focus_frames_, -1}).mean(1);  // (B, C)
}

torch::Tensor AdaFocusV1TSMImpl::actions(const Glance& g, const std::string& placement) {
  if (placement != "learned") return fixed_actions(placement, g.maps.size(0), g.maps.options());
  return policy->actor->forward(policy->forward(g.maps));  // (B, 2): the mean action
}

void AdaFocusV1TSMImpl::set_regions(const torch::Tensor& corners, torch::Tensor& regions, torch::Tensor& frames) const {
  const int64_t b = corners.size(0);
  const auto xy = corners.flip(1).to(torch::kFloat);  // (B, 2) x, y
  regions = torch::cat({xy, torch::full_like(xy, static_cast<double>(patch_))}, 1).unsqueeze(1);  // (B, 1, 4)
  frames = torch::arange(focus_frames_, torch::TensorOptions(torch::kLong).device(corners.device()))
               .view({1, 1, -1}).expand({b, 1, focus_frames_});  // (B, 1, Tf): the patch is in every focus frame
}

Prediction AdaFocusV1TSMImpl::predict(const Clips& clips) {
  const Glance g = glance(clips.frames);
  const auto at = corners(actions(g, policy_), clips.focus.size(3));
  Prediction p;
  p.logits = (g.logits + focus(clips.focus, at)).unsqueeze(1);  // (B, 1, C)
  set_regions(at, p.regions, p.region_frames);
  return p;
}

Losses AdaFocusV1TSMImpl::loss(const Clips& clips, const torch::Tensor& target, const StepContext& context) {
  if (context.stage == 0) return backbone_loss(clips, target);
  if (context.stage == 2) return ppo_loss(clips, target);
  if (context.stage != 1 && context.stage != 3)
    throw Error("adafocus_v1_tsm trains in stages 0 to 3, not " + std::to_string(context.stage), "stage");
  // Stage 1: random patches, the focuser and classifier learn. Stage 3: the policy's mean action, only the
  // classifier learns. What does not learn runs in eval mode.
  const bool stage3 = context.stage == 3;
  glancer->eval();
  focuser->train(!stage3);
  policy->eval();
  const Glance g = glance(clips.frames);
  torch::Tensor a;
  {
    torch::NoGradGuard no_grad;
    a = actions(g, stage3 ? policy_ : "random");
  }
  const auto logits = g.logits + focus(clips.focus, corners(a, clips.focus.size(3)), !stage3);  // (B, C)
  Losses l;
  l.total = F::cross_entropy(logits, target);
  l.terms.emplace_back("ce", l.total.detach());
  l.logits = logits.detach();
  return l;
}

Losses AdaFocusV1TSMImpl::backbone_loss(const Clips& clips, const torch::Tensor& target) {
  // Stage 0, as the official TSM pre-training: the glancer on its T glance frames and the focuser (with the
  // classifier as its head) on its Tf whole focus frames, each averaging its logits over its frames. A focuser
  // whose learning rate is 0 (train.lr_local) is not run.
  const auto& clip = clips.frames;
  const int64_t b = clip.size(0);
  const auto frames = clip.reshape({-1, clip.size(2), clip.size(3), clip.size(4)});
  const auto glance = glancer->forward(resize_frames(frames, glance_size_, resize_)).view({b, frames_, -1}).mean(1);
  torch::Tensor focus;  // (B, C)
  if (lr_.local() > 0) {
    const auto& f = clips.focus;
    focus = classifier->forward(focuser->features(f.reshape({-1, f.size(2), f.size(3), f.size(4)})))
                .view({b, focus_frames_, -1}).mean(1);
  }
  return backbone_losses(glance, focus, target);
}

Losses AdaFocusV1TSMImpl::ppo_loss(const Clips& clips, const torch::Tensor& target) {
  // Stage 2: only the policy learns. One action per video, drawn from N(mean, std^2 I) and clamped to [0, 1]; its
  // log-probability is that of the clamped action, as official. The reward is p(label) of the prediction with the
  // chosen patch minus with a random one; returns are the rewards normalised over the batch (one step: the discount
  // does not apply). One PPO update per mini-batch with one epoch: the old policy is the current one.
  glancer->eval();
  focuser->eval();
  policy->train();
  const Glance g = glance(clips.frames);
  const int64_t b = clips.frames.size(0), side = clips.focus.size(3);
  const auto out = policy->forward(g.maps);     // (B, H)
  const auto mean = policy->actor->forward(out);  // (B, 2)
  const auto value = policy->critic->forward(out).squeeze(1);  // (B)
  const auto action = (mean.detach() + action_std_ * torch::randn_like(mean)).clamp(0, 1);
  constexpr double kLogSqrt2Pi = 0.91893853320467274;  // log sqrt(2 pi)
  const double log_std = std::log(action_std_);
  const auto log_prob = (-(action - mean).pow(2) / (2 * action_std_ * action_std_) - log_std - kLogSqrt2Pi).sum(1);
  const double entropy = 2 * (0.5 + kLogSqrt2Pi + log_std);  // of the 2-d Gaussian: a constant of the std
  torch::Tensor reward, logits;
  {
    torch::NoGradGuard no_grad;
    logits = g.logits + focus(clips.focus, corners(action, side));
    const auto random = g.logits + focus(clips.focus, corners(fixed_actions("random", b, mean.options()), side));
    reward = (logits.softmax(1) - random.softmax(1)).gather(1, target.view({b, 1})).squeeze(1);  // (B)
  }
  const auto returns = normalised_returns(reward.unsqueeze(0), 0.0).squeeze(0);  // (B)
  const auto advantage = returns - value.detach();
  const auto o = ppo_objective(log_prob, log_prob.detach(), advantage, value, returns, torch::full_like(value, entropy),
                               ppo_.clip(), ppo_.value(), ppo_.entropy());
  Losses l;
  l.total = o.loss;
  l.statistics = {{"ppo_reward", reward.mean()},
                  {"ppo_advantage", advantage.abs().mean().detach()},
                  {"ppo_entropy", torch::full({}, entropy)},
                  {"ppo_clip_fraction", o.clip_fraction},
                  {"ppo_value_loss", o.value_loss.detach()}};
  l.logits = logits;
  set_regions(corners(action, side), l.regions, l.region_frames);
  return l;
}

std::vector<ParamGroup> AdaFocusV1TSMImpl::param_groups() {
  return {{"glance", prefixed_parameters("glancer.net", *glancer), lr_.glance()},
          {"local", prefixed_parameters("focuser.net", *focuser), lr_.local()},
          {"policy", prefixed_parameters("focuser.policy.policy", *policy), lr_.policy()},
          {"classifier", prefixed_parameters("classifier", *classifier), lr_.classifier()}};
}

namespace {

// The official focuser's base model is a Sequential of the ResNet's children without the last (the stage scripts
// replace it so): ours by their index there, conv1 0, bn1 1, (relu 2, maxpool 3,) layer1-4 4-7, (avgpool 8).
const std::vector<std::pair<std::string, std::string>> kFocuserChildren{
    {"0", "conv1"}, {"1", "bn1"}, {"4", "layer1"}, {"5", "layer2"}, {"6", "layer3"}, {"7", "layer4"}};

// `state` with the first part of each key renamed: official index -> ours, or back with `to_official`.
nn::StateDict rename_children(const nn::StateDict& state, bool to_official) {
  nn::StateDict out;
  for (const auto& item : state) {
    std::string key = item.key();
    const std::string child = key.substr(0, key.find('.'));
    for (const auto& [official, ours] : kFocuserChildren)
      if (child == (to_official ? ours : official)) key = (to_official ? official : ours) + key.substr(child.size());
    out.insert(key, item.value());
  }
  return out;
}

const std::string kGlancer = "glancer.net.", kFocuserBase = "focuser.net.base_model.",
                  kPolicy = "focuser.policy.policy.";

}  // namespace

nn::StateDict AdaFocusV1TSMImpl::unused_in_official() const {
  nn::StateDict out;
  for (const auto& item : focuser->unused_classifier()) out.insert("focuser.net." + item.key(), item.value());
  for (const auto& item : focuser->new_fc->named_parameters())
    out.insert("focuser.net.new_fc." + item.key(), item.value());
  return out;
}

nn::StateDict AdaFocusV1TSMImpl::import_state_dict(const nn::StateDict& state) const {
  // Official keys (V1s gfv_net.py after the stage scripts' Sequential): glancer.net.* in tonylins' MobileNetV2 layout
  // with its classifier and TSM's ".net." wrappers; focuser.net.base_model.<child index>.* with ".net." in each
  // block's conv1; classifier.*; the policy under focuser.policy.policy (import_checkpoint puts it there) and
  // perhaps a policy_old copy (dropped: the same weights).
  nn::StateDict out = translate_under(without_policy_old(state), kGlancer,
                                      [&](const nn::StateDict& s) { return glancer->import_state_dict(s); });
  out = translate_under(out, kFocuserBase, [&](const nn::StateDict& s) {
    return focuser->base_model->import_state_dict(rename_children(s, false));
  });
  for (const auto& item : unused_in_official())
    if (!out.contains(item.key())) out.insert(item.key(), item.value());
  return out;
}

nn::StateDict AdaFocusV1TSMImpl::import_checkpoint(const nn::StateDict& model, const NamedStateDicts& entries) const {
  // The official scripts keep the policy apart ('policy'): V1s's PPO is not a module, so the model's state lacks it.
  nn::StateDict state = model;
  for (const auto& [name, entry] : entries)
    if (name == "policy")
      for (const auto& item : entry)
        if (!state.contains(kPolicy + item.key())) state.insert(kPolicy + item.key(), item.value());
  return import_state_dict(state);
}

nn::StateDict AdaFocusV1TSMImpl::export_official_state_dict(const nn::StateDict& state) const {
  // import_state_dict's inverse, with the policy still under focuser.policy.policy (export_official_checkpoint saves
  // it apart, as the official scripts).
  nn::StateDict out = translate_under(without_keys(state, unused_in_official()), kGlancer,
                                      [&](const nn::StateDict& s) { return glancer->export_official_state_dict(s); });
  return translate_under(out, kFocuserBase, [&](const nn::StateDict& s) {
    return rename_children(focuser->base_model->export_official_state_dict(s), true);
  });
}

OfficialCheckpoint AdaFocusV1TSMImpl::export_official_checkpoint(const nn::StateDict& state) const {
  return v1_official_checkpoint(export_official_state_dict(state), /*policy_in_model=*/false);
}

MethodInfo adafocus_v1_tsm_method() {
  MethodInfo m = method_info_of<AdaFocusV1TSMImpl, AdaFocusV1TSMOptions>("adafocus_v1_tsm");
  const MethodInfo v1 = adafocus_v1_method();  // trained in the same stages, with the same statistics
  m.stages = v1.stages;
  m.pretrained = v1.pretrained;
  m.statistics = v1.statistics;
  m.dense_baseline = v1.dense_baseline;
  m.presets = {"sthv1_v1_tsm", "sthv1_v1_tsm_p160", "sthv1_v1_tsm_p176",
               "sthv2_v1_tsm", "sthv2_v1_tsm_p160", "sthv2_v1_tsm_p176"};
  return m;
}

void AdaFocusV1TSMImpl::load_pretrained(const Config& c) {
  load_glance_and_local_weights(c, *glancer, *focuser->base_model);
}

}  // namespace adafocus::methods
