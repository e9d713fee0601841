#include "methods/baselines.h"

#include "core/error.h"

namespace adafocus::methods {

std::vector<std::pair<std::string, torch::Tensor>> prefixed_parameters(const std::string& prefix,
                                                                    const torch::nn::Module& module) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : module.named_parameters()) out.emplace_back(prefix + "." + p.key(), p.value());
  return out;
}

std::vector<std::pair<std::string, torch::Tensor>> prefixed_parameters(
    std::initializer_list<std::pair<std::string, const torch::nn::Module*>> modules) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& [prefix, module] : modules) {
    const auto some = prefixed_parameters(prefix, *module);
    out.insert(out.end(), some.begin(), some.end());
  }
  return out;
}

TSNImpl::TSNImpl(const nn::BackboneOptions& options, int64_t num_classes, double p, bool detached_head) {
  base_model = register_module("base_model", nn::make_backbone(options));
  dropout = register_module("dropout", torch::nn::Dropout(p));
  // TSN initialises its new heads with N(0, 0.001) and zero bias.
  auto head = [&](const char* name) {
    auto fc = register_module(name, torch::nn::Linear(base_model->feature_dim(), num_classes));
    torch::NoGradGuard no_grad;
    fc->weight.normal_(0.0, 0.001);
    fc->bias.zero_();
    return fc;
  };
  new_fc = head("new_fc");
  if (detached_head) new_new_fc = head("new_new_fc");
}

torch::Tensor TSNImpl::features(const torch::Tensor& frames, torch::Tensor* map) {
  auto m = base_model->feature_map(frames);  // (N, Cf, h, w)
  if (map) *map = m;
  return dropout(base_model->pool(m));       // (N, Cf)
}

nn::StateDict TSNImpl::unused_classifier() const {
  nn::StateDict out;
  for (const auto& p : base_model->named_parameters())
    if (p.key().rfind(base_model->classifier_prefix(), 0) == 0) out.insert("base_model." + p.key(), p.value());
  return out;
}

FullFrameOptions FullFrameOptions::from_config(const Config& c) {
  const int64_t frames = c.get_int("data.segments"), resolution = c.get_int("model.backbone.resolution");
  return FullFrameOptions(backbone_options(c, "model.backbone", 1000, frames))
      .frames(frames)
      .resolution(resolution > 0 ? resolution : c.get_int("data.input_size"))
      .resize(c.get_string("model.resize"))
      .dropout(c.get_float("model.dropout"))
      .lr(LearningRates::from_config(c));
}

FullFrameImpl::FullFrameImpl(const FullFrameOptions& o, int64_t num_classes)
    : frames_(o.frames()),
      resolution_(o.resolution()),
      resize_(o.resize()),
      lr_(o.lr()) {
  tsn = TSN(o.backbone(), num_classes, o.dropout(), false);
  // Registered under the official TSN names (base_model.*, new_fc.*), not under "tsn.".
  register_module("base_model", tsn->base_model);
  register_module("dropout", tsn->dropout);
  register_module("new_fc", tsn->new_fc);
}

torch::Tensor FullFrameImpl::logits(const torch::Tensor& clips) {
  TORCH_CHECK(clips.dim() == 5 && clips.size(1) == frames_, "full_frame: expected clips (B, ", frames_,
              ", 3, S, S), got ", clips.sizes());
  const auto frames = resize_frames(clips.reshape({-1, clips.size(2), clips.size(3), clips.size(4)}), resolution_,
                                    resize_);                                  // (B*T, 3, R, R)
  const auto per_frame = tsn->new_fc(tsn->features(frames));                 // (B*T, C)
  return per_frame.view({clips.size(0), frames_, -1}).mean(1);                // (B, C): average consensus
}

Prediction FullFrameImpl::predict(const Clips& clips) {
  Prediction p;
  p.logits = logits(clips.frames).unsqueeze(1);  // (B, 1, C)
  return p;
}

Losses FullFrameImpl::loss(const Clips& clips, const torch::Tensor& target, const StepContext&) {
  const auto l = logits(clips.frames);
  const auto ce = torch::nn::functional::cross_entropy(l, target);
  Losses out;
  out.total = ce;
  out.terms = {{"ce", ce.detach()}};
  out.logits = l.detach();
  return out;
}

std::vector<ParamGroup> FullFrameImpl::param_groups() {
  return {{"backbone", prefixed_parameters("base_model", *tsn->base_model), lr_.local()},
          {"classifier", prefixed_parameters("new_fc", *tsn->new_fc), lr_.classifier()}};
}

nn::StateDict FullFrameImpl::import_state_dict(const nn::StateDict& state) const {
  // Official TSN checkpoints: base_model.* (TSM ".net." wrappers, official MobileNetV2 layout) and new_fc.*.
  nn::StateDict base, out;
  for (const auto& item : state) {
    if (item.key().rfind("base_model.", 0) == 0)
      base.insert(item.key().substr(11), item.value());
    else
      out.insert(item.key(), item.value());
  }
  for (const auto& item : tsn->base_model->import_state_dict(base)) out.insert("base_model." + item.key(), item.value());
  for (const auto& item : tsn->unused_classifier())
    if (!out.contains(item.key())) out.insert(item.key(), item.value());
  return out;
}

MethodInfo full_frame_method() {
  MethodInfo m = method_info_of<FullFrameImpl, FullFrameOptions>("full_frame");
  m.pretrained = {"backbone"};
  m.dense_baseline = [](const Config& c) { return c; };
  return m;
}

Config full_frame_of(const Config& config, const std::string& section) {
  Config c = config;
  c.set("model.method", "full_frame", "the full-frame baseline");
  if (section == "backbone") return c;
  for (const char* key : {"arch", "stem", "width_mult", "base_width", "tsm", "shift_div"})
    c.copy("model." + section + "." + key, std::string("model.backbone.") + key, "the full-frame baseline");
  c.set("model.backbone.resolution", "0", "the full-frame baseline");  // the whole input
  return c;
}

void FullFrameImpl::load_pretrained(const Config& c) {
  if (!c.get_string("model.backbone.weights").empty())
    load_backbone_weights(*tsn->base_model, c.get_string("model.backbone.weights"));
}

}  // namespace adafocus::methods
