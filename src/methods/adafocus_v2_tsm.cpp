#include "methods/adafocus_v2_tsm.h"

#include "core/error.h"
#include "nn/patch_crop.h"

namespace adafocus::methods {

AdaFocusV2TSMOptions AdaFocusV2TSMOptions::from_config(const Config& c) {
  if (c.get_int("data.focus_segments") <= 0)
    throw Error("adafocus_v2_tsm needs data.focus_segments > 0 (official: 12 focus frames for 8 glance frames)",
                c.origin("data.focus_segments"));
  return AdaFocusV2TSMOptions(GlanceFocusOptions::from_config(c, c.get_int("data.focus_segments")))
      .policy_hidden2(c.get_int("model.policy_hidden2"));
}

AdaFocusV2TSMImpl::AdaFocusV2TSMImpl(const AdaFocusV2TSMOptions& options, int64_t num_classes)
    : frames_(options.base().frames()),
      focus_frames_(options.base().focus_frames()),
      patch_(options.base().patch_size()),
      lr_(options.base().lr()) {
  const GlanceFocusOptions& o = options.base();
  set_policy(o.policy());
  global_CNN = register_module("global_CNN", TSN(o.glance(), num_classes, o.dropout(), true));
  local_CNN = register_module("local_CNN", TSN(o.local(), num_classes, o.dropout(), true));
  torch::Tensor map;
  {
    torch::NoGradGuard no_grad;
    global_CNN->eval();
    global_CNN->features(torch::zeros({frames_, 3, o.input_size(), o.input_size()}), &map);  // (T, Cg, h, w)
    global_CNN->train();
  }
  const int64_t channels = o.policy_channels(), hidden = o.policy_hidden(), hidden2 = options.policy_hidden2();
  policy_stn->push_back(torch::nn::Conv2d(torch::nn::Conv2dOptions(frames_ * map.size(1), channels, 1).bias(false)));
  policy_stn->push_back(torch::nn::BatchNorm2d(channels));
  policy_stn->push_back(torch::nn::Tanh());
  policy_stn->push_back(torch::nn::Flatten());
  policy_stn->push_back(torch::nn::Linear(channels * map.size(2) * map.size(3), hidden));
  policy_stn->push_back(torch::nn::BatchNorm1d(hidden));
  policy_stn->push_back(torch::nn::Tanh());
  policy_stn->push_back(torch::nn::Linear(hidden, hidden2));
  policy_stn->push_back(torch::nn::BatchNorm1d(hidden2));
  policy_stn->push_back(torch::nn::Tanh());
  policy_stn->push_back(torch::nn::Linear(hidden2, 2));
  policy_stn->push_back(torch::nn::Sigmoid());
  register_module("policy_stn", policy_stn);
}

void AdaFocusV2TSMImpl::set_policy(const std::string& policy) { policy_ = checked_policy(policy); }

AdaFocusV2TSMImpl::Glance AdaFocusV2TSMImpl::glance(const torch::Tensor& clip) {
  TORCH_CHECK(clip.dim() == 5 && clip.size(1) == frames_, "adafocus_v2_tsm: expected glance clips (B, ", frames_,
              ", 3, S, S), got ", clip.sizes());
  const int64_t b = clip.size(0);
  torch::Tensor map;
  const auto feature = global_CNN->features(clip.reshape({-1, clip.size(2), clip.size(3), clip.size(4)}), &map);
  Glance g;
  g.logits = global_CNN->new_fc(feature.detach()).view({b, frames_, -1}).mean(1);  // (B, C)
  g.aux_logits = global_CNN->new_new_fc(feature).view({b, frames_, -1}).mean(1);   // (B, C)
  g.maps = map.reshape({b, frames_ * map.size(1), map.size(2), map.size(3)});     // (B, T*Cg, h, w)
  return g;
}

torch::Tensor AdaFocusV2TSMImpl::actions(const Glance& g, int64_t videos, const std::string& policy) {
  if (policy != "learned") return fixed_actions(policy, videos, g.maps.options());
  return policy_stn->forward(g.maps.detach());  // (B, 2), on detached maps as official (also at test time)
}

std::pair<torch::Tensor, torch::Tensor> AdaFocusV2TSMImpl::focus(const torch::Tensor& clip, const torch::Tensor& a) {
  TORCH_CHECK(clip.dim() == 5 && clip.size(1) == focus_frames_, "adafocus_v2_tsm: expected focus clips (B, ",
              focus_frames_, ", 3, S, S), got ", clip.sizes());
  const int64_t b = clip.size(0);
  // One patch per video: crop the frames stacked on channels, as official.
  const auto stacked = clip.reshape({b, focus_frames_ * 3, clip.size(3), clip.size(4)});  // (B, Tf*3, S, S)
  const auto patches = nn::crop_patches(stacked, a, patch_).reshape({b * focus_frames_, 3, patch_, patch_});
  const auto feature = local_CNN->features(patches);                                      // (B*Tf, Cl)
  return {local_CNN->new_fc(feature.detach()).view({b, focus_frames_, -1}).mean(1),
          local_CNN->new_new_fc(feature).view({b, focus_frames_, -1}).mean(1)};           // (B, C) x 2
}

Prediction AdaFocusV2TSMImpl::predict(const Clips& clips) {
  const Glance g = glance(clips.frames);
  const auto a = actions(g, clips.frames.size(0), policy_);
  Prediction p;
  p.logits = (g.logits + focus(clips.focus, a).first).unsqueeze(1);  // (B, 1, C)
  p.regions = nn::patch_boxes(a, clips.focus.size(3), clips.focus.size(4), patch_).unsqueeze(1);  // (B, 1, 4)
  p.region_frames = torch::arange(focus_frames_, torch::kLong).view({1, 1, -1}).expand({a.size(0), 1, focus_frames_});
  return p;
}

Losses AdaFocusV2TSMImpl::loss(const Clips& clips, const torch::Tensor& target, const StepContext& context) {
  const Glance g = glance(clips.frames);
  std::vector<std::string> branches{policy_};
  if (policy_ == "learned") branches = context.epoch < context.policy_from_epoch
                                           ? std::vector<std::string>{"random"}
                                           : std::vector<std::string>{"random", "learned"};
  namespace F = torch::nn::functional;
  Losses out;
  torch::Tensor total = torch::zeros({}, g.logits.options());
  const auto glance_ce = F::cross_entropy(g.aux_logits, target);
  for (const auto& branch : branches) {
    const auto [local_logits, local_aux] = focus(clips.focus, actions(g, clips.frames.size(0), branch));
    const auto logits = g.logits + local_logits;
    const auto ce = F::cross_entropy(logits, target), local_ce = F::cross_entropy(local_aux, target);
    total = total + ce + glance_ce + local_ce;
    out.terms.emplace_back(branch + "_final", ce.detach());
    out.terms.emplace_back(branch + "_local", local_ce.detach());
    out.logits = logits.detach();
  }
  out.terms.emplace_back("glance", glance_ce.detach());
  out.total = total / static_cast<double>(branches.size());
  return out;
}

std::vector<ParamGroup> AdaFocusV2TSMImpl::param_groups() {
  return {{"policy", prefixed_parameters("policy_stn", *policy_stn), lr_.policy()},
          {"glance", prefixed_parameters("global_CNN", *global_CNN), lr_.glance()},
          {"local", prefixed_parameters("local_CNN", *local_CNN), lr_.local()}};
}

std::vector<std::pair<std::string, const TSNImpl*>> AdaFocusV2TSMImpl::networks() const {
  return {{"global_CNN", global_CNN.get()}, {"local_CNN", local_CNN.get()}};
}

nn::StateDict AdaFocusV2TSMImpl::import_state_dict(const nn::StateDict& state) const {
  // Official keys (V2s main.py): {global,local}_CNN.base_model.* with TSM's ".net." wrappers (the glance in tonylins'
  // MobileNetV2 layout), {global,local}_CNN.new_fc / new_new_fc, policy_stn.*. The TSN replaces its base model's
  // classifier by dropout, so ours, unused, keeps its values.
  nn::StateDict out = state;
  for (const auto& network : networks()) {
    const std::string& name = network.first;
    const TSNImpl* tsn = network.second;
    out = translate_under(out, name + ".base_model.",
                          [&](const nn::StateDict& s) { return tsn->base_model->import_state_dict(s); });
    for (const auto& item : tsn->unused_classifier())
      if (!out.contains(name + "." + item.key())) out.insert(name + "." + item.key(), item.value());
  }
  return out;
}

nn::StateDict AdaFocusV2TSMImpl::export_official_state_dict(const nn::StateDict& state) const {
  // import_state_dict's inverse: without the unused classifiers, each base model in its official TSM layout.
  nn::StateDict out = state;
  for (const auto& network : networks()) {
    const std::string& name = network.first;
    const TSNImpl* tsn = network.second;
    nn::StateDict unused;
    for (const auto& item : tsn->unused_classifier()) unused.insert(name + "." + item.key(), item.value());
    out = translate_under(without_keys(out, unused), name + ".base_model.",
                          [&](const nn::StateDict& s) { return tsn->base_model->export_official_state_dict(s); });
  }
  return out;
}

MethodInfo adafocus_v2_tsm_method() {
  MethodInfo m = method_info_of<AdaFocusV2TSMImpl, AdaFocusV2TSMOptions>("adafocus_v2_tsm");
  m.pretrained = {"glance", "local"};
  m.presets = {"sthv1_v2_tsm", "sthv2_v2_tsm", "jester_v2_tsm"};
  m.dense_baseline = [](const Config& c) { return full_frame_of(c, "local"); };
  return m;
}

void AdaFocusV2TSMImpl::load_pretrained(const Config& c) {
  load_glance_and_local_weights(c, *global_CNN->base_model, *local_CNN->base_model);
}

}  // namespace adafocus::methods
