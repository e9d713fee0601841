#include "infer/predictor.h"

#include "nn/flop_counter.h"

namespace adafocus::infer {

VideoPrediction predict_video(methods::LoadedModel& model, const std::string& video, torch::Device device,
                              const ExitRule* rule) {
  const Config& c = model.config;
  Rng unused(0);  // the test view draws nothing
  const data::Sample s = data::load_clip(video, data::DatasetOptions::from_config(c, "data.val_list", false), unused);
  methods::Clips clips{s.clip.unsqueeze(0).to(device), s.focus.defined() ? s.focus.unsqueeze(0).to(device) : torch::Tensor()};
  torch::NoGradGuard no_grad;
  VideoPrediction out;
  out.exits = model.method->exits();
  out.full_gflops = method_flops(*model.method, c.get_int("data.segments"), c.get_int("data.focus_segments"),
                                 c.get_int("data.input_size"))
                        .report.gflops();
  torch::Tensor logits, regions, region_frames;
  if (rule) {
    const AdaptiveResult r = run_adaptive(*model.method, clips, *rule, true);
    logits = r.logits[0];
    regions = r.regions[0];
    region_frames = r.region_frames[0];
    out.exit = r.exits[0].item<int64_t>();
    out.gflops = static_cast<double>(r.macs) * 1e-9;
  } else {
    const methods::Prediction p = model.method->predict(clips);
    logits = p.logits[0][p.logits.size(1) - 1].to(torch::kFloat);  // the final exit, float also from a bf16 model
    if (p.regions.defined()) regions = p.regions[0], region_frames = p.region_frames[0];
    // A method whose cost depends on the video (AdaFuse) counts this video's own; the others cost what they always do.
    out.gflops = p.gflops.defined() ? p.gflops[0].item<double>() : out.full_gflops;
    auto cpu = [](const torch::Tensor& t) { return t.defined() ? t.cpu() : t; };
    out.outputs = p;
    for (torch::Tensor* t : {&out.outputs.logits, &out.outputs.regions, &out.outputs.region_frames, &out.outputs.gflops})
      *t = cpu(*t);
    for (auto* named : {&out.outputs.outputs, &out.outputs.video_means, &out.outputs.part_logits})
      for (auto& [name, t] : *named) t = cpu(t);
  }
  const auto probs = torch::softmax(logits, 0).cpu();
  const auto order = std::get<1>(probs.sort(0, true));
  for (int64_t i = 0; i < order.size(0); ++i) {
    const int64_t k = order[i].item<int64_t>();
    out.classes.emplace_back(model.classes.at(static_cast<size_t>(k)), probs[k].item<double>());
  }
  out.frames = s.frames;
  if (regions.defined())
    out.regions = data::frame_regions(regions, region_frames, s, static_cast<int>(c.get_int("data.input_size")),
                                static_cast<int>(c.get_int("data.test_resize")));
  return out;
}

}  // namespace adafocus::infer
