#include "methods/method.h"

#include "core/error.h"
#include "io/pth.h"
#include "nn/kernels.h"

namespace adafocus::methods {

namespace {

// The exit-by-exit path of a method with one exit: predict() itself.
class WholeStepper : public ExitStepper {
 public:
  WholeStepper(MethodImpl& method, Clips clips) : method_(method), clips_(std::move(clips)) {}
  ExitStep next() override {
    TORCH_CHECK(!done_, "this method has one exit");
    done_ = true;
    const Prediction p = method_.predict(clips_);
    return {p.logits.select(1, p.logits.size(1) - 1), p.regions, p.region_frames, p.gflops};
  }
  void keep(const torch::Tensor&) override {}

 private:
  MethodImpl& method_;
  Clips clips_;
  bool done_ = false;
};

}  // namespace

std::unique_ptr<ExitStepper> MethodImpl::stepper(const Clips& clips) {
  return std::make_unique<WholeStepper>(*this, clips);
}

void MethodImpl::set_policy(const std::string& policy) {
  throw Error("this method places no patches: a test-time policy ('" + policy + "') does not apply");
}

nn::StateDict MethodImpl::export_official_state_dict(const nn::StateDict&) const {
  throw Error("no official layout to export this method to", "",
              "the methods with official code export (adafocus_v1, adafocus_v1_tsm, adafocus_v2, adafocus_v2_tsm, "
              "adafuse: each layout checked against the official model's keys); checkpoints of the others load in "
              "Python as they are: torch.load(path)['state_dict']");
}

OfficialCheckpoint MethodImpl::export_official_checkpoint(const nn::StateDict& state) const {
  nn::StateDict parallel;  // the official scripts save the DataParallel wrapper's state
  for (const auto& item : export_official_state_dict(state)) parallel.insert("module." + item.key(), item.value());
  return {{{"state_dict", parallel}}, {}};
}

nn::StateDict sub_state_dict(const nn::StateDict& state, const std::string& prefix) {
  nn::StateDict out;
  for (const auto& item : state)
    if (item.key().rfind(prefix, 0) == 0) out.insert(item.key().substr(prefix.size()), item.value());
  return out;
}

nn::StateDict translate_under(const nn::StateDict& state, const std::string& prefix,
                              const std::function<nn::StateDict(const nn::StateDict&)>& translate) {
  nn::StateDict out;
  for (const auto& item : translate(sub_state_dict(state, prefix))) out.insert(prefix + item.key(), item.value());
  for (const auto& item : state)
    if (item.key().rfind(prefix, 0) != 0) out.insert(item.key(), item.value());
  return out;
}

nn::StateDict without_keys(const nn::StateDict& state, const nn::StateDict& drop) {
  nn::StateDict out;
  for (const auto& item : state)
    if (!drop.contains(item.key())) out.insert(item.key(), item.value());
  return out;
}

nn::BackboneOptions backbone_options(const Config& c, const std::string& section, int64_t num_classes,
                                     int64_t segments) {
  return nn::BackboneOptions(c.get_string(section + ".arch"))
      .width_mult(c.get_float(section + ".width_mult"))
      .base_width(c.get_int(section + ".base_width"))
      .stem(c.get_string(section + ".stem"))
      .num_classes(num_classes)
      .tsm_segments(c.get_bool(section + ".tsm") ? segments : 0)
      .shift_div(c.get_int(section + ".shift_div"));
}

void load_backbone_weights(nn::BackboneImpl& backbone, const std::string& path,
                           const std::function<bool(const std::string&)>& added) {
  // ImageNet weights: everything but the classifier, which has the dataset's number of classes.
  nn::StateDict state = backbone.import_state_dict(nn::strip_module_prefix(io::read_state_dict(path)));
  const std::string classifier = backbone.classifier_prefix();
  auto own = [&](const std::string& key) { return key.rfind(classifier, 0) == 0 || (added && added(key)); };
  nn::StateDict kept;
  for (const auto& item : state)
    if (!own(item.key())) kept.insert(item.key(), item.value());
  for (const auto& item : nn::state_dict(backbone))
    if (own(item.key())) kept.insert(item.key(), item.value());
  nn::load_state_dict(backbone, kept, path);
}

void load_glance_and_local_weights(const Config& c, nn::BackboneImpl& glance, nn::BackboneImpl& local) {
  if (!c.get_string("model.glance.weights").empty()) load_backbone_weights(glance, c.get_string("model.glance.weights"));
  if (!c.get_string("model.local.weights").empty()) load_backbone_weights(local, c.get_string("model.local.weights"));
}

torch::nn::Sequential dropout_linear(double dropout, int64_t in, int64_t out) {
  return torch::nn::Sequential(torch::nn::Dropout(dropout), torch::nn::Linear(in, out));
}

torch::Tensor resize_frames(const torch::Tensor& frames, int64_t side, const std::string& mode) {
  if (frames.size(2) == side && frames.size(3) == side) return frames;
  namespace F = torch::nn::functional;
  if (mode == "area") {
    // Whole factors (the benchmark's 128 -> 32 px) average the same blocks as the adaptive pooling, 3x faster here.
    if (frames.size(2) % side == 0 && frames.size(3) == frames.size(2) && frames.device().is_cpu() &&
        frames.scalar_type() == torch::kFloat && !(torch::GradMode::is_enabled() && frames.requires_grad()))
      return nn::area_downsample(frames, frames.size(2) / side);
    return F::adaptive_avg_pool2d(frames, F::AdaptiveAvgPool2dFuncOptions({side, side}));
  }
  if (mode == "bilinear")
    return F::interpolate(frames, F::InterpolateFuncOptions()
                                      .size(std::vector<int64_t>{side, side})
                                      .mode(torch::kBilinear)
                                      .align_corners(true));
  throw Error("model.resize must be bilinear or area, not '" + mode + "'");
}

const std::string& checked_policy(const std::string& policy) {
  if (policy != "learned" && policy != "random" && policy != "center")
    throw Error("model.policy must be learned, random or center, not '" + policy + "'");
  return policy;
}

torch::Tensor per_frame_ce(const torch::Tensor& logits, const torch::Tensor& target, int64_t frames) {
  return torch::nn::functional::cross_entropy(logits, target.repeat_interleave(frames));
}

void MethodImpl::optimize_for_inference() {
  for (const auto& m : modules())
    if (auto* backbone = dynamic_cast<nn::BackboneImpl*>(m.get())) backbone->fold_batchnorm();
}

torch::Tensor fixed_actions(const std::string& policy, int64_t n, const torch::TensorOptions& options) {
  return policy == "random" ? torch::rand({n, 2}, options) : torch::full({n, 2}, 0.5, options);
}

}  // namespace adafocus::methods
