#include "viz/visualize.h"

#include <fmt/format.h>

#include <map>

#include "io/frame_source.h"
#include "io/video_writer.h"
#include "viz/draw.h"

namespace adafocus::viz {

void visualize(const std::string& video, const methods::LoadedModel& model, const infer::VideoPrediction& prediction,
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
      draw_box(frame, b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy, {255, 64, 32}, std::max(2, scale));
    draw_text(frame, 2, 2, caption, {255, 255, 255}, std::max(1, height / 128));
    draw_text(frame, 2, height - 11 * std::max(1, height / 128), fmt::format("frame {}", indices[i]),
                   {200, 200, 200}, std::max(1, height / 128));
    writer.write(frame);
  }
  writer.close();
}

}  // namespace adafocus::viz
