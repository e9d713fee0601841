#include "data/dataset.h"

#include <algorithm>
#include <filesystem>

#include "core/error.h"
#include "data/sampler.h"

namespace adafocus::data {

namespace {

std::string relative_to(const std::string& root, const std::string& path) {
  if (root.empty() || std::filesystem::path(path).is_absolute()) return path;
  return (std::filesystem::path(root) / path).string();
}

std::vector<int64_t> sample_indices(int64_t num_frames, int64_t count, const DatasetOptions& o, Rng& rng) {
  return o.sampling == "dense" ? dense_indices(num_frames, count, o.dense_stride, o.train, rng)
                               : tsn_indices(num_frames, count, o.train, rng);
}

// The decoded frames at `indices`: from the cache where it holds them, the rest decoded (and offered to it).
std::vector<io::Image> read_frames(io::FrameSource& source, const std::string& path,
                                   const std::vector<int64_t>& indices, const DatasetOptions& o) {
  if (!o.cache) return source.read(indices, o.short_side);
  const auto key = [&](int64_t i) { return path + '#' + std::to_string(i) + '@' + std::to_string(o.short_side); };
  std::vector<io::Image> frames(indices.size());
  std::vector<int64_t> missing;
  std::vector<size_t> positions;
  for (size_t p = 0; p < indices.size(); ++p)
    if (!o.cache->get(key(indices[p]), frames[p])) {
      missing.push_back(indices[p]);
      positions.push_back(p);
    }
  if (missing.empty()) return frames;
  std::vector<io::Image> decoded = source.read(missing, o.short_side);
  for (size_t j = 0; j < missing.size(); ++j) {
    o.cache->put(key(missing[j]), decoded[j]);
    frames[positions[j]] = std::move(decoded[j]);
  }
  return frames;
}

// Decodes `indices` and transforms them as one clip; records the crop and the decoded frame size.
torch::Tensor make_clip(io::FrameSource& source, const std::string& path, const std::vector<int64_t>& indices,
                        const DatasetOptions& o, Rng& rng, CropBox& crop, Sample& sample) {
  const std::vector<io::Image> frames = read_frames(source, path, indices, o);
  sample.frame_width = frames[0].width;
  sample.frame_height = frames[0].height;
  if (o.train) {
    crop = sample_train_crop(frames[0].width, frames[0].height, o.transform, rng);
    return train_transform(frames, crop, o.transform);
  }
  const auto [w, h] = io::short_side_size(frames[0].width, frames[0].height, o.transform.test_resize);
  crop = test_crop(w, h, o.transform.input_size);
  return test_transform(frames, o.transform);
}

}  // namespace

DatasetOptions DatasetOptions::from_config(const Config& c, const std::string& list_key, bool train) {
  DatasetOptions o;
  o.root = c.get_string("data.root");
  o.list = relative_to(o.root, c.get_string(list_key));
  o.format = io::parse_list_format(c.get_string("data.format"));
  o.frames.pattern = c.get_string("data.frame_pattern");
  o.frames.start = c.get_int("data.frame_start");
  o.train = train;
  o.segments = c.get_int("data.segments");
  o.sampling = c.get_string("data.sampling");
  if (o.sampling != "tsn" && o.sampling != "dense")
    throw Error("data.sampling must be tsn or dense, not '" + o.sampling + "'", c.origin("data.sampling"));
  o.dense_stride = c.get_int("data.dense_stride");
  o.input_order = c.get_bool("data.input_order");
  o.focus_segments = c.get_int("data.focus_segments");
  o.glance_every = c.get_int("data.glance_every");
  o.short_side = static_cast<int>(c.get_int("data.short_side"));
  const int64_t cache_mb = c.get_int("data.cache_mb");
  if (cache_mb < 0) throw Error("data.cache_mb must be >= 0", c.origin("data.cache_mb"));
  if (cache_mb > 0) o.cache = std::make_shared<io::FrameCache>(static_cast<size_t>(cache_mb) << 20);
  o.transform.input_size = static_cast<int>(c.get_int("data.input_size"));
  o.transform.scales = c.get_floats("data.scales");
  o.transform.max_distort = static_cast<int>(c.get_int("data.max_distort"));
  o.transform.flip = c.get_bool("data.flip");
  o.transform.test_resize = static_cast<int>(c.get_int("data.test_resize"));
  const std::string resize = c.get_string("data.resize");
  if (resize != "pil" && resize != "swscale")
    throw Error("data.resize must be pil or swscale, not '" + resize + "'", c.origin("data.resize"));
  o.transform.resize = resize == "pil" ? io::Resize::kPil : io::Resize::kSwscale;
  const auto mean = c.get_floats("data.mean"), std = c.get_floats("data.std");
  if (mean.size() != 3 || std.size() != 3) throw Error("data.mean and data.std need 3 values (R, G, B)");
  for (int i = 0; i < 3; ++i) {
    o.transform.mean[i] = static_cast<float>(mean[i]);
    o.transform.std[i] = static_cast<float>(std[i]);
  }
  return o;
}

VideoDataset::VideoDataset(DatasetOptions options)
    : options_(std::move(options)), list_(io::read_list(options_.list, options_.format)) {
  const auto n = static_cast<int64_t>(list_.entries.size());
  if (options_.limit > 0 && options_.limit < n) {  // evenly spread: lists are often sorted by class
    std::vector<io::ListEntry> kept;
    for (int64_t i = 0; i < options_.limit; ++i) kept.push_back(list_.entries[static_cast<size_t>(i * n / options_.limit)]);
    list_.entries = std::move(kept);
  }
}

std::string resolve_path(const std::string& root, const io::ListEntry& entry, io::ListFormat format) {
  const std::string direct = relative_to(root, entry.path);
  std::error_code ec;
  if (format == io::ListFormat::Comma && !std::filesystem::exists(direct, ec)) {
    const std::string official = relative_to(root, "frames/" + entry.path);
    if (std::filesystem::exists(official, ec)) return official;
  }
  return direct;
}

std::string VideoDataset::resolve(const io::ListEntry& entry) const {
  return resolve_path(options_.root, entry, list_.format);
}

Sample VideoDataset::get(size_t index, Rng& rng) const {
  const io::ListEntry& e = entry(index);
  Sample sample = load_clip(resolve(e), options_, rng, e.num_frames);
  sample.labels = e.labels;
  if (options_.train && sample.labels.size() > 1) {
    // A multi-label video trains on one of its labels, drawn per fetch among the sorted distinct ones and put first
    // (the training target), as the official loader; the official 2-label branch indexes [1, 0, 2] and recurses, a
    // quirk not copied: any number of labels is drawn uniformly. Evaluation keeps every label (mAP).
    std::sort(sample.labels.begin(), sample.labels.end());
    sample.labels.erase(std::unique(sample.labels.begin(), sample.labels.end()), sample.labels.end());
    std::swap(sample.labels[0], sample.labels[static_cast<size_t>(rng.below(static_cast<int64_t>(sample.labels.size())))]);
  }
  return sample;
}

Sample load_clip(const std::string& path, const DatasetOptions& o, Rng& rng, int64_t known_frames) {
  io::FrameFolderOptions folder = o.frames;
  folder.num_frames = known_frames;
  std::unique_ptr<io::FrameSource> source = io::open_frames(path, folder);
  return load_clip(*source, path, o, rng);
}

Sample load_clip(io::FrameSource& source, const std::string& name, const DatasetOptions& o, Rng& rng) {
  const int64_t n = source.num_frames();
  Sample sample;
  sample.frames = sample_indices(n, o.segments, o, rng);
  if (o.input_order) sample.frames = reorder(sample.frames, data::input_order(o.segments));
  if (o.glance_every > 0) sample.glance = glance_positions(o.segments, o.glance_every, o.train, rng);
  sample.clip = make_clip(source, name, sample.frames, o, rng, sample.crop, sample);
  if (o.focus_segments > 0) {  // sampled and cropped independently, as the official V2-TSM loader does
    sample.focus_frames = sample_indices(n, o.focus_segments, o, rng);
    sample.focus = make_clip(source, name, sample.focus_frames, o, rng, sample.focus_crop, sample);
  }
  return sample;
}

std::vector<Region> frame_regions(const torch::Tensor& regions, const torch::Tensor& region_frames,
                                  const Sample& s, int input_size, int test_resize) {
  const auto r = regions.to(torch::kCPU, torch::kDouble);        // (R, 4)
  const auto positions = region_frames.to(torch::kCPU, torch::kLong);  // (R, F)
  const bool focus = !s.focus_frames.empty();
  const auto& frames = focus ? s.focus_frames : s.frames;
  const CropBox& crop = focus ? s.focus_crop : s.crop;
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

}  // namespace adafocus::data
