#include "methods/adafocus_v1.h"

#include "core/error.h"
#include "methods/baselines.h"
#include "nn/kernels.h"

namespace adafocus::methods {

namespace {

// Eval mode for what does not learn in a stage: its batch norms keep their statistics, its dropout is off.
void freeze(torch::nn::Module& module, bool frozen) { module.train(!frozen); }

}  // namespace

ActorCriticImpl::ActorCriticImpl(int64_t map_channels, int64_t map_cells, int64_t channels, int64_t hidden,
                                 int64_t actions) {
  state_encoder->push_back(torch::nn::Conv2d(torch::nn::Conv2dOptions(map_channels, channels, 1).bias(false)));
  state_encoder->push_back(torch::nn::ReLU());
  state_encoder->push_back(torch::nn::Flatten());
  state_encoder->push_back(torch::nn::Linear(channels * map_cells, hidden));
  state_encoder->push_back(torch::nn::ReLU());
  register_module("state_encoder", state_encoder);
  gru = register_module("gru", torch::nn::GRU(torch::nn::GRUOptions(hidden, hidden)));
  actor->push_back(torch::nn::Linear(hidden, actions));
  actor->push_back(torch::nn::Softmax(1));
  register_module("actor", actor);
  critic->push_back(torch::nn::Linear(hidden, 1));
  register_module("critic", critic);
}

std::pair<torch::Tensor, torch::Tensor> ActorCriticImpl::step(const torch::Tensor& map, const torch::Tensor& hidden) {
  const auto state = state_encoder->forward(map).unsqueeze(0);  // (1, n, H)
  auto [out, h] = nn::gru_forward(*gru, state, hidden);  // undefined hidden: zeros
  return {out.squeeze(0), h};  // (n, H), (1, n, H)
}

torch::Tensor normalised_returns(const torch::Tensor& rewards, double gamma) {
  std::vector<torch::Tensor> returns(static_cast<size_t>(rewards.size(0)));
  torch::Tensor running = torch::zeros_like(rewards[0]);
  for (int64_t t = rewards.size(0) - 1; t >= 0; --t) {
    running = rewards[t] + gamma * running;
    returns[static_cast<size_t>(t)] = running;
  }
  const auto r = torch::stack(returns);    // (T, B)
  return (r - r.mean()) / (r.std() + 1e-5);  // unbiased std over all T*B returns, as torch.std
}

PpoObjective ppo_objective(const torch::Tensor& log_prob, const torch::Tensor& old_log_prob,
                           const torch::Tensor& advantage, const torch::Tensor& value, const torch::Tensor& returns,
                           const torch::Tensor& entropy, double clip, double value_weight, double entropy_weight) {
  const auto ratio = (log_prob - old_log_prob).exp();
  const auto surrogate = torch::min(ratio * advantage, ratio.clamp(1 - clip, 1 + clip) * advantage);
  PpoObjective o;
  o.value_loss = torch::nn::functional::mse_loss(value, returns);
  o.loss = -surrogate.mean() + value_weight * o.value_loss - entropy_weight * entropy.mean();
  o.clip_fraction = ((ratio - 1).abs() > clip).to(torch::kFloat).mean().detach();
  return o;
}

torch::Tensor grid_corners(const torch::Tensor& actions, int64_t grid, int64_t side, int64_t patch) {
  const auto cell = torch::stack({actions.div(grid, "floor"), actions.remainder(grid)}, 1).to(torch::kDouble);
  return (cell / static_cast<double>(grid - 1) * static_cast<double>(side - patch)).floor().to(torch::kLong);
}

torch::Tensor hard_crop(const torch::Tensor& frames, const torch::Tensor& corners, int64_t patch) {
  const int64_t n = frames.size(0);
  const auto span = torch::arange(patch, corners.options());
  const auto rows = (corners.select(1, 0).view({n, 1}) + span).view({n, patch, 1});  // (n, P, 1)
  const auto cols = (corners.select(1, 1).view({n, 1}) + span).view({n, 1, patch});  // (n, 1, P)
  const auto videos = torch::arange(n, corners.options()).view({n, 1, 1});
  return frames.permute({0, 2, 3, 1}).index({videos, rows, cols}).permute({0, 3, 1, 2}).contiguous();  // (n, 3, P, P)
}

PpoOptions PpoOptions::from_config(const Config& c) {
  return PpoOptions()
      .gamma(c.get_float("train.ppo_gamma"))
      .clip(c.get_float("train.ppo_clip"))
      .value(c.get_float("train.ppo_value"))
      .entropy(c.get_float("train.ppo_entropy"));
}

AdaFocusV1Options AdaFocusV1Options::from_config(const Config& c) {
  const int64_t grid = c.get_int("model.policy_grid");
  if (grid < 2) throw Error("model.policy_grid must be at least 2 (official: 7)", c.origin("model.policy_grid"));
  return AdaFocusV1Options(GlanceFocusOptions::from_config(c, c.get_int("data.segments")))
      .grid(grid)
      .ppo(PpoOptions::from_config(c));
}

AdaFocusV1Impl::AdaFocusV1Impl(const AdaFocusV1Options& options, int64_t num_classes)
    : frames_(options.base().frames()),
      patch_(options.base().patch_size()),
      glance_size_(options.base().glance_size()),
      grid_(options.grid()),
      resize_(options.base().resize()),
      policy_(options.base().policy()),
      dropout_(options.base().dropout()),
      ppo_(options.ppo()),
      lr_(options.base().lr()) {
  const GlanceFocusOptions& o = options.base();
  set_policy(policy_);

  // The official wrappers' names: glancer.net, focuser.net, focuser.policy.policy, classifier.gru, classifier.fc.
  // Each backbone keeps its own head for stage 0.
  auto glancer_holder = register_module("glancer", std::make_shared<torch::nn::Module>());
  glancer = glancer_holder->register_module("net", nn::make_backbone(nn::BackboneOptions(o.glance()).num_classes(num_classes)));
  auto focuser_holder = register_module("focuser", std::make_shared<torch::nn::Module>());
  focuser = focuser_holder->register_module("net", nn::make_backbone(nn::BackboneOptions(o.local()).num_classes(num_classes)));

  // The policy reads the whole glance feature map: its size depends on the glancer and the glance resolution.
  torch::Tensor map;
  {
    torch::NoGradGuard no_grad;
    glancer->eval();
    map = glancer->feature_map(torch::zeros({1, 3, glance_size_, glance_size_}));  // (1, Cg, h, w)
    glancer->train();
  }
  auto ppo = focuser_holder->register_module("policy", std::make_shared<torch::nn::Module>());
  policy = ppo->register_module("policy", ActorCritic(map.size(1), map.size(2) * map.size(3), o.policy_channels(),
                                                      o.policy_hidden(), grid_ * grid_));
  auto classifier = register_module("classifier", std::make_shared<torch::nn::Module>());
  const int64_t hidden = o.classifier_hidden();
  classifier_gru = classifier->register_module(
      "gru", torch::nn::GRU(torch::nn::GRUOptions(glancer->feature_dim() + focuser->feature_dim(), hidden)));
  classifier_fc = classifier->register_module("fc", torch::nn::Linear(hidden, num_classes));
}

void AdaFocusV1Impl::set_policy(const std::string& policy) { policy_ = checked_policy(policy); }

torch::Tensor AdaFocusV1Impl::glance_maps(const torch::Tensor& frames) {
  return glancer->feature_map(resize_frames(frames, glance_size_, resize_));  // (N, Cg, h, w)
}

torch::Tensor AdaFocusV1Impl::corners(const torch::Tensor& actions, int64_t side) const {
  return grid_corners(actions, grid_, side, patch_);
}

torch::Tensor AdaFocusV1Impl::fixed_corners(const std::string& policy, int64_t n, int64_t side,
                                            const torch::Device& device) const {
  const auto options = torch::TensorOptions(torch::kLong).device(device);
  // Every corner from 0 to S - P inclusive (the official random crop never draws the last one: not copied).
  if (policy == "random") return torch::randint(side - patch_ + 1, {n, 2}, options);
  return torch::full({n, 2}, (side - patch_) / 2, options);
}

torch::Tensor AdaFocusV1Impl::focus(const torch::Tensor& frames, const torch::Tensor& corners) {
  return focuser->pool(focuser->feature_map(hard_crop(frames, corners, patch_)));  // (n, Cl)
}

std::pair<torch::Tensor, torch::Tensor> AdaFocusV1Impl::classify_step(const torch::Tensor& x,
                                                                      const torch::Tensor& hidden) {
  auto [out, h] = nn::gru_forward(*classifier_gru, x.unsqueeze(0), hidden);  // (1, n, H); undefined: zeros
  const auto dropped = torch::nn::functional::dropout(
      out.squeeze(0), torch::nn::functional::DropoutFuncOptions().p(dropout_).training(is_training() && classifier_gru->is_training()));
  return {classifier_fc->forward(dropped), h};  // (n, C), (1, n, H)
}

torch::Tensor AdaFocusV1Impl::boxes(const torch::Tensor& corners) const {
  const auto c = corners.to(torch::kFloat);
  const auto p = torch::full_like(c.select(1, 0), static_cast<double>(patch_));
  return torch::stack({c.select(1, 1), c.select(1, 0), p, p}, 1);  // (n, 4) x, y, w, h
}

Prediction AdaFocusV1Impl::predict(const Clips& clips) {
  auto stepper = this->stepper(clips);
  std::vector<torch::Tensor> logits, regions;
  for (int64_t t = 0; t < frames_; ++t) {
    ExitStep s = stepper->next();
    logits.push_back(s.logits);
    regions.push_back(s.regions);
  }
  Prediction p;
  p.logits = torch::stack(logits, 1);   // (B, T, C): exit t has seen frames 0..t
  p.regions = torch::cat(regions, 1);   // (B, T, 4)
  p.region_frames = torch::arange(frames_, torch::TensorOptions(torch::kLong).device(p.logits.device()))
                        .view({1, frames_, 1})
                        .expand({p.logits.size(0), frames_, 1});
  return p;
}

// Inference frame by frame, as the official test loop: the glancer's map of frame t, one policy step (its most
// likely cell), the patch there, one classifier step. Exit t is the classifier's prediction after frame t.
class V1Stepper : public ExitStepper {
 public:
  V1Stepper(AdaFocusV1Impl& m, const torch::Tensor& clip) : m_(m), clip_(clip) {
    TORCH_CHECK(clip.dim() == 5 && clip.size(1) == m.frames_, "AdaFocusV1: expected clips (B, ", m.frames_,
                ", 3, S, S), got ", clip.sizes());
  }

  ExitStep next() override {
    TORCH_CHECK(t_ < m_.frames_, "AdaFocusV1 has ", m_.frames_, " exits");
    const auto frame = present_.defined() ? clip_.select(1, t_).index_select(0, present_) : clip_.select(1, t_);  // (n, 3, S, S)
    const auto map = m_.glance_maps(frame);  // (n, Cg, h, w)
    torch::Tensor corners;
    if (m_.policy_ == "learned") {
      auto [out, h] = m_.policy->step(map, policy_hidden_);
      policy_hidden_ = h;
      corners = m_.corners(m_.policy->actor->forward(out).argmax(1), frame.size(2));  // the critic is not needed here
    } else {
      corners = m_.fixed_corners(m_.policy_, frame.size(0), frame.size(2), frame.device());
    }
    const auto x = torch::cat({m_.glancer->pool(map), m_.focus(frame, corners)}, 1);  // (n, Cg + Cl)
    auto [logits, h] = m_.classify_step(x, classifier_hidden_);
    classifier_hidden_ = h;
    ExitStep step;
    step.logits = logits;
    step.regions = m_.boxes(corners).unsqueeze(1);  // (n, 1, 4)
    step.region_frames = torch::full({frame.size(0), 1, 1}, t_, torch::kLong);
    ++t_;
    return step;
  }

  void keep(const torch::Tensor& rows) override {
    present_ = present_.defined() ? present_.index_select(0, rows) : rows;
    if (policy_hidden_.defined()) policy_hidden_ = policy_hidden_.index_select(1, rows);
    if (classifier_hidden_.defined()) classifier_hidden_ = classifier_hidden_.index_select(1, rows);
  }

 private:
  AdaFocusV1Impl& m_;
  torch::Tensor clip_, present_;                  // (B, T, 3, S, S), rows of the n videos still present
  torch::Tensor policy_hidden_, classifier_hidden_;  // (1, n, H) each
  int64_t t_ = 0;
};

std::unique_ptr<ExitStepper> AdaFocusV1Impl::stepper(const Clips& clips) {
  return std::make_unique<V1Stepper>(*this, clips.frames);
}

Losses AdaFocusV1Impl::loss(const Clips& clips, const torch::Tensor& target, const StepContext& context) {
  const auto& clip = clips.frames;  // (B, T, 3, S, S)
  TORCH_CHECK(clip.dim() == 5 && clip.size(1) == frames_, "AdaFocusV1: expected clips (B, ", frames_,
              ", 3, S, S), got ", clip.sizes());
  if (context.stage == 0) return backbone_loss(clips, target);
  if (context.stage == 2) return ppo_loss(clips, target);
  if (context.stage != 1 && context.stage != 3)
    throw Error("AdaFocusV1 trains in stages 0 to 3, not " + std::to_string(context.stage), "stage");
  // Stage 1: random patches, the glancer frozen. Stage 3: the policy's most likely patches, only the classifier
  // learns. What does not learn runs without gradient, in eval mode.
  const bool stage3 = context.stage == 3;
  freeze(*glancer, true);
  freeze(*focuser, stage3);
  freeze(*policy, true);
  const int64_t b = clip.size(0), side = clip.size(3);
  const auto frames = clip.reshape({b * frames_, 3, side, side});  // (B*T, 3, S, S)
  torch::Tensor maps, at, local;  // at: patch corners (B*T, 2)
  {
    torch::NoGradGuard no_grad;
    maps = glance_maps(frames);  // (B*T, Cg, h, w)
    if (stage3 && policy_ == "learned") {
      torch::Tensor hidden;
      std::vector<torch::Tensor> per_frame;
      const auto m = maps.view({b, frames_, maps.size(1), maps.size(2), maps.size(3)});
      for (int64_t t = 0; t < frames_; ++t) {
        auto [out, h] = policy->step(m.select(1, t), hidden);
        hidden = h;
        per_frame.push_back(corners(policy->actor->forward(out).argmax(1), side));
      }
      at = torch::stack(per_frame, 1).view({b * frames_, 2});
    } else {
      at = fixed_corners(stage3 ? policy_ : "random", b * frames_, side, clip.device());
    }
    if (stage3) local = focus(frames, at);
  }
  if (!stage3) local = focus(frames, at);  // (B*T, Cl), learning
  const auto x = torch::cat({glancer->pool(maps), local}, 1).view({b, frames_, -1});  // (B, T, Cg + Cl)
  auto out = std::get<0>(nn::gru_forward(*classifier_gru, x.transpose(0, 1), {}));  // (T, B, H)
  out = torch::nn::functional::dropout(out, torch::nn::functional::DropoutFuncOptions().p(dropout_).training(is_training()));
  const auto logits = classifier_fc->forward(out).transpose(0, 1);                     // (B, T, C)
  Losses l;
  l.total = per_frame_ce(logits.reshape({b * frames_, -1}), target, frames_);  // every step, equally weighted
  l.terms.emplace_back("ce", l.total.detach());
  l.logits = logits.select(1, frames_ - 1).detach();
  if (stage3 && policy_ == "learned") {
    l.regions = boxes(at).view({b, frames_, 4});
    l.region_frames = torch::arange(frames_, torch::TensorOptions(torch::kLong).device(clip.device()))
                          .view({1, frames_, 1}).expand({b, frames_, 1});
  }
  return l;
}

Losses AdaFocusV1Impl::backbone_loss(const Clips& clips, const torch::Tensor& target) {
  // Stage 0, as the official pre-training: each network classifies whole frames (the glancer at its glance
  // resolution), its logits averaged over the frames (TSN).
  const auto& clip = clips.frames;
  const int64_t b = clip.size(0), side = clip.size(3);
  const auto frames = clip.reshape({b * frames_, 3, side, side});
  // A focuser whose learning rate is 0 (train.lr_local) is not run: the benchmark's comes pretrained.
  const auto glance = glancer->forward(resize_frames(frames, glance_size_, resize_)).view({b, frames_, -1}).mean(1);
  return backbone_losses(glance, lr_.local() > 0 ? focuser->forward(frames).view({b, frames_, -1}).mean(1) : torch::Tensor(),
                         target);
}

Losses backbone_losses(const torch::Tensor& glance, const torch::Tensor& focus, const torch::Tensor& target) {
  namespace F = torch::nn::functional;
  Losses l;
  l.total = F::cross_entropy(glance, target);
  l.terms.emplace_back("glancer", l.total.detach());
  l.logits = glance.softmax(1).detach();
  if (focus.defined()) {
    const auto focus_ce = F::cross_entropy(focus, target);
    l.total = l.total + focus_ce;
    l.terms.emplace_back("focuser", focus_ce.detach());
    l.logits = l.logits + focus.softmax(1).detach();
  }
  return l;
}

Losses AdaFocusV1Impl::ppo_loss(const Clips& clips, const torch::Tensor& target) {
  // Stage 2: only the policy learns, everything else in eval mode. At each frame the policy samples a cell; the
  // reward is the classifier's probability of the label after that patch minus after a random one, both from the
  // same classifier state (the random patch does not advance it). One PPO update per mini-batch with one epoch, as
  // the official settings: the old policy is the current one, so the ratio is 1 and the clipping never binds; the
  // policy's GRU is unrolled with gradient over the frames, as the official update re-evaluates whole sequences.
  freeze(*glancer, true);
  freeze(*focuser, true);
  classifier_gru->eval();
  policy->train();
  const auto& clip = clips.frames;
  const int64_t b = clip.size(0), side = clip.size(3);
  std::vector<torch::Tensor> logp, entropy, values, rewards, chosen;
  torch::Tensor policy_hidden, classifier_hidden, logits;
  for (int64_t t = 0; t < frames_; ++t) {
    const auto frame = clip.select(1, t);  // (B, 3, S, S)
    torch::Tensor map;
    {
      torch::NoGradGuard no_grad;
      map = glance_maps(frame);  // (B, Cg, h, w)
    }
    auto [out, h] = policy->step(map, policy_hidden);
    policy_hidden = h;
    const auto probs = policy->actor->forward(out);                  // (B, A)
    const auto action = probs.detach().multinomial(1);               // (B, 1) sampled
    logp.push_back(probs.gather(1, action).squeeze(1).clamp_min(1e-12).log());
    entropy.push_back(-(probs * probs.clamp_min(1e-12).log()).sum(1));
    values.push_back(policy->critic->forward(out).squeeze(1));       // (B)
    torch::NoGradGuard no_grad;
    const auto feature = glancer->pool(map);
    const auto c = corners(action.squeeze(1), side);
    chosen.push_back(c);
    auto [random_logits, unused] = classify_step(torch::cat({feature, focus(frame, fixed_corners("random", b, side, clip.device()))}, 1),
                                                 classifier_hidden);
    auto [step_logits, next] = classify_step(torch::cat({feature, focus(frame, c)}, 1), classifier_hidden);
    classifier_hidden = next;
    logits = step_logits;
    rewards.push_back((step_logits.softmax(1).gather(1, target.view({b, 1})) -
                       random_logits.softmax(1).gather(1, target.view({b, 1}))).squeeze(1));
  }
  const auto returns = normalised_returns(torch::stack(rewards), ppo_.gamma());  // (T, B)
  const auto value = torch::stack(values), log_prob = torch::stack(logp), entropies = torch::stack(entropy);  // (T, B)
  const auto advantage = returns - value.detach();
  // The old policy is the current one: the ratio is 1.
  const auto o = ppo_objective(log_prob, log_prob.detach(), advantage, value, returns, entropies, ppo_.clip(),
                               ppo_.value(), ppo_.entropy());
  Losses l;
  l.total = o.loss;
  l.statistics = {{"ppo_reward", torch::stack(rewards).mean()},
                  {"ppo_advantage", advantage.abs().mean().detach()},
                  {"ppo_entropy", entropies.mean().detach()},
                  {"ppo_clip_fraction", o.clip_fraction},
                  {"ppo_value_loss", o.value_loss.detach()}};
  l.logits = logits;
  l.regions = boxes(torch::stack(chosen, 1).view({b * frames_, 2})).view({b, frames_, 4});
  l.region_frames = torch::arange(frames_, torch::TensorOptions(torch::kLong).device(clip.device()))
                        .view({1, frames_, 1}).expand({b, frames_, 1});
  return l;
}

std::vector<ParamGroup> AdaFocusV1Impl::param_groups() {
  std::vector<ParamGroup> groups{{"glance", {}, lr_.glance()}, {"local", {}, lr_.local()}, {"policy", {}, lr_.policy()},
                                 {"classifier", {}, lr_.classifier()}};
  for (const auto& p : named_parameters()) {
    const std::string& name = p.key();
    const size_t g = name.rfind("glancer.", 0) == 0           ? 0
                     : name.rfind("focuser.policy.", 0) == 0  ? 2
                     : name.rfind("focuser.", 0) == 0         ? 1
                                                              : 3;
    groups[g].params.emplace_back(name, p.value());
  }
  return groups;
}

nn::StateDict without_policy_old(const nn::StateDict& state) {
  nn::StateDict out;
  for (const auto& item : state)
    if (item.key().rfind("focuser.policy.policy_old.", 0) != 0) out.insert(item.key(), item.value());
  return out;
}

OfficialCheckpoint v1_official_checkpoint(const nn::StateDict& official, bool policy_in_model) {
  nn::StateDict model;
  for (const auto& item : official)
    if (policy_in_model || item.key().rfind("focuser.policy.", 0) != 0) model.insert(item.key(), item.value());
  return {{{"model_state_dict", model},
           {"glancer", sub_state_dict(model, "glancer.")},
           {"focuser", sub_state_dict(model, "focuser.")},
           {"fc", sub_state_dict(model, "classifier.")},
           {"policy", sub_state_dict(official, "focuser.policy.policy.")}},
          // epoch 0: a model to start from (V1s's stage 2 runs from the checkpoint's epoch on)
          {{"epoch", c10::IValue(int64_t{0})}, {"best_acc", c10::IValue(0.0)}}};
}

nn::StateDict AdaFocusV1Impl::import_state_dict(const nn::StateDict& state) const { return without_policy_old(state); }

nn::StateDict AdaFocusV1Impl::export_official_state_dict(const nn::StateDict& state) const {
  // import_state_dict's inverse: the official PPO (a module here, V1a ppo.py) also holds policy_old, the policy's copy.
  nn::StateDict out = state;
  const std::string policy = "focuser.policy.policy.";
  for (const auto& item : state)
    if (item.key().rfind(policy, 0) == 0)
      out.insert("focuser.policy.policy_old." + item.key().substr(policy.size()), item.value());
  return out;
}

OfficialCheckpoint AdaFocusV1Impl::export_official_checkpoint(const nn::StateDict& state) const {
  return v1_official_checkpoint(export_official_state_dict(state), /*policy_in_model=*/true);
}

MethodInfo adafocus_v1_method() {
  MethodInfo m = method_info_of<AdaFocusV1Impl, AdaFocusV1Options>("adafocus_v1");
  m.stages = 4;
  m.pretrained = {"glance", "local"};
  m.presets = {"activitynet_v1", "activitynet_v1_p96", "activitynet_v1_p160", "fcvid_v1", "fcvid_v1_p96",
               "fcvid_v1_p160", "minik_v1", "minik_v1_p96", "minik_v1_p160"};
  m.statistics = {{"ppo_reward", "reward {:+.4f}"}, {"ppo_advantage", ""}, {"ppo_entropy", ""},
                  {"ppo_clip_fraction", ""}, {"ppo_value_loss", ""}};
  m.dense_baseline = [](const Config& c) { return full_frame_of(c, "local"); };
  return m;
}

void AdaFocusV1Impl::load_pretrained(const Config& c) { load_glance_and_local_weights(c, *glancer, *focuser); }

}  // namespace adafocus::methods
