#include "infer/predictor.h"

#include <fmt/format.h>

#include "infer/flops.h"
#include "io/video_writer.h"
#include "viz/draw.h"

namespace adafocus::infer {

std::vector<Region> frame_regions(const torch::Tensor& regions, const torch::Tensor& region_frames,
                                  const data::Sample& s, int input_size, int test_resize) {
  const auto r = regions.to(torch::kCPU, torch::kDouble);        // (R, 4)
  const auto positions = region_frames.to(torch::kCPU, torch::kLong);  // (R, F)
  const bool focus = !s.focus_frames.empty();
  const auto& frames = focus ? s.focus_frames : s.frames;
  const data::CropBox& crop = focus ? s.focus_crop : s.crop;
  double scale = 1;  // the crop's frame -> decoded frame
  if (test_resize > 0) scale = static_cast<double>(s.frame_width) / io::short_side_size(s.frame_width, s.frame_height, test_resize).first;
  const double sx = static_cast<double>(crop.width) / input_size, sy = static_cast<double>(crop.height) / input_size;
  std::vector<Region> out;
  for (int64_t i = 0; i < r.size(0); ++i) {
    const auto b = r[i];
    const double w = b[2].item<double>() * sx, h = b[3].item<double>() * sy;
    double x = b[0].item<double>() * sx;
    if (crop.flip) x = crop.width - x - w;
    // Undo the resize of the crop to the input, the flip, the crop, then the resize of the frame.
    const std::array<double, 4> box{(x + crop.x) * scale, (b[1].item<double>() * sy + crop.y) * scale, w * scale,
                                    h * scale};
    for (int64_t j = 0; j < positions.size(1); ++j)
      out.push_back({frames.at(static_cast<size_t>(positions[i][j].item<int64_t>())), box});
  }
  return out;
}

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
    out.outputs = {cpu(p.logits),        cpu(p.regions),      cpu(p.region_frames), cpu(p.glance_logits),
                   cpu(p.local_logits), cpu(p.gflops), cpu(p.gate_fractions)};
  }
  const auto probs = torch::softmax(logits, 0).cpu();
  const auto order = std::get<1>(probs.sort(0, true));
  for (int64_t i = 0; i < order.size(0); ++i) {
    const int64_t k = order[i].item<int64_t>();
    out.classes.emplace_back(model.classes.at(static_cast<size_t>(k)), probs[k].item<double>());
  }
  out.frames = s.frames;
  if (regions.defined())
    out.regions = frame_regions(regions, region_frames, s, static_cast<int>(c.get_int("data.input_size")),
                                static_cast<int>(c.get_int("data.test_resize")));
  return out;
}

void visualize(const std::string& video, const methods::LoadedModel& model, const VideoPrediction& prediction,
               const std::string& out) {
  const Config& c = model.config;
  io::FrameFolderOptions folder;
  folder.pattern = c.get_string("data.frame_pattern");
  folder.start = c.get_int("data.frame_start");
  auto source = io::open_frames(video, folder);
  // Frames in time order, each with the regions the model saw in it (V2-TSM: the same patch in every focus frame).
  std::map<int64_t, std::vector<std::array<double, 4>>> boxes;
  for (int64_t f : prediction.frames) boxes[f];
  for (const auto& r : prediction.regions) boxes[r.frame].push_back(r.box);
  std::vector<int64_t> indices;
  for (const auto& [f, b] : boxes) indices.push_back(f);
  std::vector<io::Image> frames = source->read(indices, static_cast<int>(c.get_int("data.short_side")));
  // Small frames are enlarged so that the label stays legible; sides stay even for the encoders.
  const int scale = std::max(1, 256 / std::max(1, std::min(frames[0].width, frames[0].height)));
  const int width = frames[0].width * scale / 2 * 2, height = frames[0].height * scale / 2 * 2;
  const auto& [label, probability] = prediction.classes.front();
  const std::string caption = fmt::format("{} {:.0f}%", label, 100 * probability);
  io::VideoWriter writer(out, width, height, 2.0);
  for (size_t i = 0; i < frames.size(); ++i) {
    io::Image frame = io::resize(frames[i], width, height);
    const double sx = static_cast<double>(width) / frames[i].width, sy = static_cast<double>(height) / frames[i].height;
    for (const auto& b : boxes[indices[i]])
      viz::draw_box(frame, b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy, {255, 64, 32}, std::max(2, scale));
    viz::draw_text(frame, 2, 2, caption, {255, 255, 255}, std::max(1, height / 128));
    viz::draw_text(frame, 2, height - 11 * std::max(1, height / 128), fmt::format("frame {}", indices[i]),
                   {200, 200, 200}, std::max(1, height / 128));
    writer.write(frame);
  }
  writer.close();
}

}  // namespace adafocus::infer
