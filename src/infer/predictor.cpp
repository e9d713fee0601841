#include "infer/predictor.h"

#include <fmt/format.h>

#include "core/error.h"
#include "core/files.h"
#include "io/list_file.h"
#include "nn/flop_counter.h"

namespace adafocus::infer {

data::DatasetOptions prediction_options(const methods::LoadedModel& model) {
  data::DatasetOptions o = data::DatasetOptions::from_config(model.config, "data.val_list", false);
  o.cache.reset();
  return o;
}

VideoPrediction video_prediction(const methods::LoadedModel& model, const data::Sample& s, const torch::Tensor& logits,
                                 const torch::Tensor& regions, const torch::Tensor& region_frames, double gflops) {
  const Config& c = model.config;
  VideoPrediction out;
  const auto probs = torch::softmax(logits.to(torch::kFloat), 0).cpu();  // float also from a bf16 model
  const auto order = std::get<1>(probs.sort(0, true));
  for (int64_t i = 0; i < order.size(0); ++i) {
    const int64_t k = order[i].item<int64_t>();
    out.classes.emplace_back(model.classes.at(static_cast<size_t>(k)), probs[k].item<double>());
  }
  out.frames = s.frames;
  if (regions.defined())
    out.regions = data::frame_regions(regions, region_frames, s, static_cast<int>(c.get_int("data.input_size")),
                                      static_cast<int>(c.get_int("data.test_resize")));
  out.gflops = gflops;
  out.exits = model.method->exits();
  return out;
}

VideoPrediction predict_video(methods::LoadedModel& model, const std::string& video, torch::Device device,
                              const ExitRule* rule) {
  Rng unused(0);  // the test view draws nothing
  return predict_sample(model, data::load_clip(video, prediction_options(model), unused), device, rule);
}

VideoPrediction predict_sample(methods::LoadedModel& model, const data::Sample& s, torch::Device device,
                               const ExitRule* rule) {
  const Config& c = model.config;
  methods::Clips clips{s.clip.unsqueeze(0).to(device), s.focus.defined() ? s.focus.unsqueeze(0).to(device) : torch::Tensor()};
  torch::NoGradGuard no_grad;
  const double full_gflops = method_flops(*model.method, c.get_int("data.segments"), c.get_int("data.focus_segments"),
                                          c.get_int("data.input_size"))
                                 .report.gflops();
  VideoPrediction out;
  if (rule) {
    const AdaptiveResult r = run_adaptive(*model.method, clips, *rule, true);
    out = video_prediction(model, s, r.logits[0], r.regions[0], r.region_frames[0], static_cast<double>(r.macs) * 1e-9);
    out.exit = r.exits[0].item<int64_t>();
  } else {
    const methods::Prediction p = model.method->predict(clips);
    // The final exit; a method whose cost depends on the video (AdaFuse) counts this video's own.
    out = video_prediction(model, s, p.logits[0][p.logits.size(1) - 1],
                           p.regions.defined() ? p.regions[0] : torch::Tensor(),
                           p.regions.defined() ? p.region_frames[0] : torch::Tensor(),
                           p.gflops.defined() ? p.gflops[0].item<double>() : full_gflops);
    auto cpu = [](const torch::Tensor& t) { return t.defined() ? t.cpu() : t; };
    out.outputs = p;
    for (torch::Tensor* t : {&out.outputs.logits, &out.outputs.regions, &out.outputs.region_frames, &out.outputs.gflops})
      *t = cpu(*t);
    for (auto* named : {&out.outputs.outputs, &out.outputs.video_means, &out.outputs.part_logits})
      for (auto& [name, t] : *named) t = cpu(t);
  }
  out.full_gflops = full_gflops;
  return out;
}

nlohmann::json prediction_json(const VideoPrediction& p, const std::string& video, const std::string& method,
                               size_t top_k) {
  nlohmann::json out{{"video", video}, {"method", method}, {"gflops", p.gflops}, {"full_gflops", p.full_gflops},
                     {"frames", p.frames}};
  if (p.exit >= 0) {
    out["exit"] = p.exit;
    out["exits"] = p.exits;
  }
  out["top"] = nlohmann::json::array();
  for (size_t i = 0; i < std::min(top_k, p.classes.size()); ++i)
    out["top"].push_back({{"label", p.classes[i].first}, {"score", p.classes[i].second}});
  out["regions"] = nlohmann::json::array();
  for (const auto& r : p.regions)
    out["regions"].push_back({{"frame", r.frame}, {"x", r.box[0]}, {"y", r.box[1]}, {"w", r.box[2]}, {"h", r.box[3]}});
  return out;
}

namespace {
nlohmann::json to_json(const torch::Tensor& t) {
  const torch::Tensor d = t.to(torch::kDouble).contiguous();
  if (d.dim() == 0) return d.item<double>();
  nlohmann::json out = nlohmann::json::array();
  for (int64_t i = 0; i < d.size(0); ++i) out.push_back(to_json(d[i]));
  return out;
}
}  // namespace

// Everything the model computed, in its own terms (network-input pixels, clip positions), for checks against Python.
nlohmann::json raw_prediction_json(const methods::Prediction& p) {
  nlohmann::json out{{"logits", to_json(p.logits[0])}};  // (K, C): every exit, the last one final
  if (p.regions.defined()) {
    out["regions_input"] = to_json(p.regions[0]);  // (R, 4) x, y, w, h in input pixels
    out["region_frames"] = to_json(p.region_frames[0]);  // (R, F) positions in the (focus) clip
  }
  for (const auto& [name, t] : p.outputs) out[name] = to_json(t[0]);  // the method's own (V2: auxiliary heads, actions)
  return out;
}

ExitTable exit_table(const methods::LoadedModel& model, const std::string& file, const std::string& checkpoint) {
  if (!file.empty()) return ExitTable::from_json(read_file(file), file);
  if (!model.exits_json.empty()) return ExitTable::from_json(model.exits_json, checkpoint + " (its thresholds)");
  throw Error("no early-exit thresholds: the checkpoint carries none and no --thresholds file was given", checkpoint,
              "run adafocus calibrate --checkpoint " + checkpoint + " --embed (or --out F.json, then --thresholds F.json)");
}

void set_class_names(methods::LoadedModel& model, const std::string& class_index) {
  std::vector<std::string> names = io::read_class_index(class_index);
  if (names.size() != model.classes.size())
    throw Error(fmt::format("{} class names for a model of {} classes", names.size(), model.classes.size()),
                class_index, "the classInd.txt of the data the model was trained on");
  model.classes = std::move(names);
}

}  // namespace adafocus::infer
