#include "data/synthetic.h"

#include <fmt/format.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "core/files.h"
#include "core/rng.h"
#include "io/frame_folder.h"
#include "io/list_file.h"
#include "io/video_writer.h"

namespace adafocus::data {

namespace {

constexpr int kMnistSide = 28;
constexpr double kReferenceSide = 128.0;  // sizes and speeds in the options are pixels at this frame side
const std::vector<std::string> kFashionClasses{"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                               "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
const std::vector<std::string> kDirections{"right", "left", "down", "up"};

// Fashion-MNIST split: 28x28 grey images and labels, from the IDX files (gzip).
struct Mnist {
  std::vector<std::vector<uint8_t>> images;
  std::vector<int> labels;
  std::vector<std::vector<size_t>> by_class;
};

std::string gunzip(const std::string& path) {
  gzFile file = gzopen(path.c_str(), "rb");
  if (!file) throw Error("cannot open", path, "install Debian's dataset-fashion-mnist (scripts/install-deps.sh)");
  std::string out;
  char buffer[1 << 16];
  int n;
  while ((n = gzread(file, buffer, sizeof(buffer))) > 0) out.append(buffer, static_cast<size_t>(n));
  const bool failed = n < 0;
  gzclose(file);
  if (failed) throw Error("corrupt gzip file", path, "reinstall dataset-fashion-mnist");
  return out;
}

uint32_t big_endian(const std::string& bytes, size_t at) {
  uint32_t v = 0;
  for (size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<uint8_t>(bytes.at(at + i));
  return v;
}

Mnist load_mnist(const std::string& dir, const std::string& split) {
  const std::string image_path = dir + "/" + split + "-images-idx3-ubyte.gz";
  const std::string label_path = dir + "/" + split + "-labels-idx1-ubyte.gz";
  const std::string images = gunzip(image_path), labels = gunzip(label_path);
  if (images.size() < 16 || big_endian(images, 0) != 2051 || big_endian(images, 8) != kMnistSide ||
      big_endian(images, 12) != kMnistSide)
    throw Error("not an IDX image file of 28x28 images", image_path);
  if (labels.size() < 8 || big_endian(labels, 0) != 2049) throw Error("not an IDX label file", label_path);
  const size_t count = big_endian(images, 4), pixels = kMnistSide * kMnistSide;
  if (big_endian(labels, 4) != count || images.size() < 16 + count * pixels || labels.size() < 8 + count)
    throw Error("image and label files disagree or are truncated", image_path);
  Mnist m;
  m.by_class.resize(kFashionClasses.size());
  for (size_t i = 0; i < count; ++i) {
    m.images.emplace_back(images.begin() + static_cast<long>(16 + i * pixels),
                          images.begin() + static_cast<long>(16 + (i + 1) * pixels));
    const int label = static_cast<uint8_t>(labels[8 + i]);
    if (label >= static_cast<int>(kFashionClasses.size())) throw Error("label out of range", label_path);
    m.labels.push_back(label);
    m.by_class[static_cast<size_t>(label)].push_back(i);
  }
  return m;
}

// A grey image of floats in [0, 1].
struct Grey {
  int side = 0;
  std::vector<float> v;
};

// Bilinear resize of a 28x28 item to side x side (pixel centres aligned, as align_corners=False).
Grey scale_item(const std::vector<uint8_t>& item, int side) {
  Grey g{side, std::vector<float>(static_cast<size_t>(side) * side)};
  const double ratio = static_cast<double>(kMnistSide) / side;
  auto at = [&](int y, int x) {
    x = std::clamp(x, 0, kMnistSide - 1);
    y = std::clamp(y, 0, kMnistSide - 1);
    return item[static_cast<size_t>(y * kMnistSide + x)] / 255.0f;
  };
  for (int y = 0; y < side; ++y)
    for (int x = 0; x < side; ++x) {
      const double sy = (y + 0.5) * ratio - 0.5, sx = (x + 0.5) * ratio - 0.5;
      const int y0 = static_cast<int>(std::floor(sy)), x0 = static_cast<int>(std::floor(sx));
      const float fy = static_cast<float>(sy - y0), fx = static_cast<float>(sx - x0);
      g.v[static_cast<size_t>(y * side + x)] = (1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1)) +
                                               fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1));
    }
  return g;
}

// Max-composites `g` (or its window at (wx, wy) of side `w`) onto the canvas at (x, y), clipped to the canvas.
void paint(std::vector<float>& canvas, int size, const Grey& g, int x, int y, int wx = 0, int wy = 0, int w = -1) {
  if (w < 0) w = g.side;
  for (int r = 0; r < w; ++r)
    for (int c = 0; c < w; ++c) {
      const int cy = y + r, cx = x + c;
      if (cy < 0 || cx < 0 || cy >= size || cx >= size) continue;
      float& dst = canvas[static_cast<size_t>(cy * size + cx)];
      dst = std::max(dst, g.v[static_cast<size_t>((wy + r) * g.side + wx + c)]);
    }
}

struct Video {
  std::string name;
  int label = 0;
  std::string item_class;
  int first_visible = 0, last_visible = 0;
  std::vector<std::array<double, 4>> boxes;  // x, y, w, h per frame (the item's position, visible or not)
  std::vector<io::Image> frames;
};

int scaled(double pixels_at_128, int size) {
  return std::max(1, static_cast<int>(std::lround(pixels_at_128 * size / kReferenceSide)));
}

Video render(const SyntheticOptions& o, const Mnist& mnist, const std::string& name, Rng& rng) {
  Video v;
  v.name = name;
  const int size = o.size, frames = o.frames;
  const bool motion = o.variant == "motion";

  // The item: appearance labels are balanced over classes; motion items are any item.
  const int item_class = static_cast<int>(rng.below(static_cast<int64_t>(kFashionClasses.size())));
  const auto& pool = mnist.by_class[static_cast<size_t>(item_class)];
  const auto& item_pixels = mnist.images[pool[static_cast<size_t>(rng.below(static_cast<int64_t>(pool.size())))]];
  const int side = static_cast<int>(rng.between(scaled(o.item_size[0], size), scaled(o.item_size[1], size)));
  const Grey item = scale_item(item_pixels, side);
  v.item_class = kFashionClasses[static_cast<size_t>(item_class)];

  // When it is visible: one contiguous run of frames.
  const int run = std::clamp(static_cast<int>(std::lround(rng.uniform(o.visible[0], o.visible[1]) * frames)), 1, frames);
  v.first_visible = static_cast<int>(rng.below(frames - run + 1));
  v.last_visible = v.first_visible + run - 1;

  // How it moves: constant velocity, reflected at the borders (appearance) or straight along one axis (motion).
  const double room = size - side;
  double speed = rng.uniform(o.speed[0], o.speed[1]) * size / kReferenceSide;
  double x, y, vx, vy;
  if (motion) {
    v.label = static_cast<int>(rng.below(static_cast<int64_t>(kDirections.size())));
    speed = std::min(speed, room / std::max(1, run - 1));  // the whole visible run stays inside the frame
    const double along = rng.uniform(0.0, room - speed * (run - 1)), across = rng.uniform(0.0, room);
    const double sign = (v.label == 0 || v.label == 2) ? 1.0 : -1.0;  // right, down: +; left, up: -
    const bool horizontal = v.label < 2;
    const double start = sign > 0 ? along : room - along;
    // Positions are laid out so that the item is at `start` when it appears.
    x = horizontal ? start - sign * speed * v.first_visible : across;
    y = horizontal ? across : start - sign * speed * v.first_visible;
    vx = horizontal ? sign * speed : 0.0;
    vy = horizontal ? 0.0 : sign * speed;
  } else {
    v.label = item_class;
    const double angle = rng.uniform(0.0, 6.283185307179586);
    x = rng.uniform(0.0, room);
    y = rng.uniform(0.0, room);
    vx = speed * std::cos(angle);
    vy = speed * std::sin(angle);
  }

  // The clutter: static fragments of items of other classes (any class for motion), at the item's scale.
  std::vector<float> background(static_cast<size_t>(size) * size, 0.0f);
  const int64_t fragments = rng.between(o.clutter[0], o.clutter[1]);
  for (int64_t i = 0; i < fragments; ++i) {
    int cls = static_cast<int>(rng.below(static_cast<int64_t>(kFashionClasses.size())));
    if (!motion && cls == item_class) cls = (cls + 1 + static_cast<int>(rng.below(9))) % 10;
    const auto& other = mnist.by_class[static_cast<size_t>(cls)];
    const Grey source = scale_item(mnist.images[other[static_cast<size_t>(rng.below(static_cast<int64_t>(other.size())))]],
                                   side);
    const int f = std::min(side, static_cast<int>(rng.between(scaled(o.fragment[0], size), scaled(o.fragment[1], size))));
    const int wx = static_cast<int>(rng.below(side - f + 1)), wy = static_cast<int>(rng.below(side - f + 1));
    paint(background, size, source, static_cast<int>(rng.below(size - f + 1)), static_cast<int>(rng.below(size - f + 1)),
          wx, wy, f);
  }

  for (int t = 0; t < frames; ++t) {
    if (!motion) {  // reflect at the borders
      if (x < 0) x = -x, vx = -vx;
      if (x > room) x = 2 * room - x, vx = -vx;
      if (y < 0) y = -y, vy = -vy;
      if (y > room) y = 2 * room - y, vy = -vy;
    }
    const int px = static_cast<int>(std::lround(x)), py = static_cast<int>(std::lround(y));
    v.boxes.push_back({static_cast<double>(px), static_cast<double>(py), static_cast<double>(side),
                       static_cast<double>(side)});
    std::vector<float> canvas = background;
    if (t >= v.first_visible && t <= v.last_visible) paint(canvas, size, item, px, py);
    io::Image frame(size, size);
    for (size_t i = 0; i < canvas.size(); ++i) {
      const double value = std::clamp(canvas[i] + o.noise * rng.normal(), 0.0, 1.0);
      const auto grey = static_cast<uint8_t>(std::lround(value * 255.0));
      std::fill_n(frame.rgb.begin() + static_cast<long>(3 * i), 3, grey);
    }
    v.frames.push_back(std::move(frame));
    x += vx;
    y += vy;
  }
  return v;
}

void check(const SyntheticOptions& o) {
  auto range = [](const auto& r, const char* key) {
    if (r.size() != 2 || r[0] > r[1] || r[0] < 0) throw Error(std::string(key) + " must be [min, max] with 0 <= min <= max");
  };
  range(o.item_size, "synthetic.item_size");
  range(o.visible, "synthetic.visible");
  range(o.speed, "synthetic.speed");
  range(o.clutter, "synthetic.clutter");
  range(o.fragment, "synthetic.fragment");
  if (o.variant != "appearance" && o.variant != "motion")
    throw Error("unknown variant '" + o.variant + "'", "", "use appearance or motion");
  if (o.format != "video" && o.format != "frames") throw Error("unknown format '" + o.format + "'", "", "use video or frames");
  if (o.size < 32 || o.size % 2) throw Error("size must be even and at least 32");
  if (o.frames < 2) throw Error("at least 2 frames per video");
  if (o.visible[1] > 1.0) throw Error("synthetic.visible is a fraction of the frames, at most 1");
  if (scaled(o.item_size[1], o.size) >= o.size) throw Error("the item does not fit in the frame");
  if (o.train < 1 || o.val < 1 || o.calib < 0) throw Error("need at least one train and one val video");
}

}  // namespace

std::pair<torch::Tensor, torch::Tensor> item_images(const SyntheticOptions& o, int side, int64_t count,
                                                    uint64_t seed) {
  const Mnist mnist = load_mnist(o.source, "train");
  constexpr float kMean[3] = {0.485f, 0.456f, 0.406f}, kStd[3] = {0.229f, 0.224f, 0.225f};
  auto images = torch::empty({count, 3, side, side});
  auto labels = torch::empty({count}, torch::kLong);
  const size_t plane = static_cast<size_t>(side) * side;
  for (int64_t i = 0; i < count; ++i) {
    Rng rng = Rng::derive(seed, {3, static_cast<uint64_t>(i)});
    const int cls = static_cast<int>(rng.below(static_cast<int64_t>(kFashionClasses.size())));
    const auto& pool = mnist.by_class[static_cast<size_t>(cls)];
    const int item_side = std::min(side, static_cast<int>(rng.between(scaled(o.item_size[0], o.size),
                                                                      scaled(o.item_size[1], o.size))));
    std::vector<float> canvas(plane, 0.0f);
    // A fragment of another item now and then, as patches on the benchmark's clutter would show.
    if (rng.coin()) {
      const auto& other = mnist.by_class[static_cast<size_t>((cls + 1 + rng.below(9)) % 10)];
      const Grey source = scale_item(mnist.images[other[static_cast<size_t>(rng.below(static_cast<int64_t>(other.size())))]],
                                     item_side);
      const int f = std::min(item_side, static_cast<int>(rng.between(scaled(o.fragment[0], o.size),
                                                                     scaled(o.fragment[1], o.size))));
      paint(canvas, side, source, static_cast<int>(rng.below(side - f + 1)), static_cast<int>(rng.below(side - f + 1)),
            static_cast<int>(rng.below(item_side - f + 1)), static_cast<int>(rng.below(item_side - f + 1)), f);
    }
    paint(canvas, side, scale_item(mnist.images[pool[static_cast<size_t>(rng.below(static_cast<int64_t>(pool.size())))]],
                                   item_side),
          static_cast<int>(rng.below(side - item_side + 1)), static_cast<int>(rng.below(side - item_side + 1)));
    float* out = images[i].data_ptr<float>();
    for (size_t p = 0; p < plane; ++p) {
      const float v = std::round(std::clamp(canvas[p] + static_cast<float>(o.noise * rng.normal()), 0.0f, 1.0f) * 255) / 255;
      for (int c = 0; c < 3; ++c) out[c * plane + p] = (v - kMean[c]) / kStd[c];
    }
    labels[i] = cls;
  }
  return {images, labels};
}

std::vector<std::string> synthetic_classes(const std::string& variant) {
  if (variant == "motion") return kDirections;
  std::vector<std::string> names;
  for (const auto& c : kFashionClasses) names.push_back(c);  // "T-shirt/top": a class name, not a path
  return names;
}

std::map<std::string, VideoTruth> read_synthetic_truth(const std::string& meta_path) {
  std::map<std::string, VideoTruth> out;
  std::istringstream in(read_file(meta_path));
  int line_number = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_number;
    if (line.empty()) continue;
    try {
      const auto row = nlohmann::json::parse(line);
      VideoTruth t;
      t.size = row.at("size");
      t.first_visible = row.at("visible").at(0);
      t.last_visible = row.at("visible").at(1);
      for (const auto& b : row.at("boxes")) t.boxes.push_back(b.get<std::array<double, 4>>());
      out[row.at("video").get<std::string>()] = std::move(t);
    } catch (const nlohmann::json::exception& e) {
      throw Error(std::string("malformed ground truth: ") + e.what(), meta_path + ":" + std::to_string(line_number),
                  "regenerate it with adafocus make-synthetic");
    }
  }
  return out;
}

SyntheticOptions SyntheticOptions::from_config(const Config& c) {
  SyntheticOptions o;
  o.variant = c.get_string("synthetic.variant");
  o.size = static_cast<int>(c.get_int("synthetic.size"));
  o.frames = static_cast<int>(c.get_int("synthetic.frames"));
  o.format = c.get_string("synthetic.format");
  o.fps = c.get_float("synthetic.fps");
  o.item_size = c.get_floats("synthetic.item_size");
  o.visible = c.get_floats("synthetic.visible");
  o.speed = c.get_floats("synthetic.speed");
  o.clutter = c.get_ints("synthetic.clutter");
  o.fragment = c.get_floats("synthetic.fragment");
  o.noise = c.get_float("synthetic.noise");
  o.crf = static_cast<int>(c.get_int("synthetic.crf"));
  o.source = c.get_string("synthetic.source");
  return o;
}

void make_synthetic(const SyntheticOptions& o, const std::function<void(int64_t)>& progress) {
  check(o);
  const Mnist train_items = load_mnist(o.source, "train"), val_items = load_mnist(o.source, "t10k");
  struct Job {
    std::string split;
    int64_t index;
  };
  std::vector<Job> jobs;
  for (int64_t i = 0; i < o.train; ++i) jobs.push_back({"train", i});
  for (int64_t i = 0; i < o.val; ++i) jobs.push_back({"val", i});
  for (int64_t i = 0; i < o.calib; ++i) jobs.push_back({"calib", i});

  std::vector<io::ListEntry> entries(jobs.size());
  std::vector<std::string> meta(jobs.size());
  std::atomic<size_t> next{0};
  std::atomic<int64_t> written{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto worker = [&] {
    for (size_t j; (j = next++) < jobs.size();) {
      try {
        const Job& job = jobs[j];
        // Every video has its own stream: the output is the same whatever the thread count.
        const uint64_t stream = job.split == "train" ? 1 : job.split == "val" ? 2 : 4;  // 3: item_images
        Rng rng = Rng::derive(o.seed, {stream, static_cast<uint64_t>(job.index)});
        const std::string name = fmt::format("{}_{:05d}", job.split, job.index);
        Video v = render(o, job.split == "val" ? val_items : train_items, name, rng);
        io::ListEntry& e = entries[j];
        e.labels = {v.label};
        if (o.format == "video") {
          e.path = "videos/" + name + ".mp4";
          io::VideoWriter writer(o.out + "/" + e.path, o.size, o.size, o.fps, o.crf);
          for (const auto& f : v.frames) writer.write(f);
          writer.close();
        } else {
          e.path = "frames/" + name;
          e.num_frames = o.frames;
          for (int t = 0; t < o.frames; ++t)
            io::write_jpeg(fmt::format("{}/{}/image_{:05d}.jpg", o.out, e.path, t + 1), v.frames[static_cast<size_t>(t)]);
        }
        nlohmann::json boxes = nlohmann::json::array();
        for (const auto& b : v.boxes) boxes.push_back(b);
        meta[j] = nlohmann::json{{"video", e.path},
                                 {"split", job.split},
                                 {"label", v.label},
                                 {"class", synthetic_classes(o.variant)[static_cast<size_t>(v.label)]},
                                 {"item_class", v.item_class},
                                 {"frames", o.frames},
                                 {"size", o.size},
                                 {"visible", {v.first_visible, v.last_visible}},
                                 {"boxes", boxes}}
                      .dump();
        if (progress) progress(++written);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        next = jobs.size();
      }
    }
  };
  std::vector<std::thread> threads;
  for (int i = 0; i < std::max(1, o.threads); ++i) threads.emplace_back(worker);
  for (auto& t : threads) t.join();
  if (error) std::rethrow_exception(error);

  std::map<std::string, io::ListFile> lists;
  std::string meta_text;
  for (size_t j = 0; j < jobs.size(); ++j) {
    io::ListFile& list = lists[jobs[j].split];
    list.format = o.format == "video" ? io::ListFormat::Video : io::ListFormat::Frames;
    list.entries.push_back(entries[j]);
    meta_text += meta[j] + "\n";
  }
  for (const auto& [split, list] : lists) io::write_list(o.out + "/" + split + ".txt", list);
  io::write_class_index(o.out + "/classInd.txt", synthetic_classes(o.variant));
  write_file_atomic(o.out + "/meta.jsonl", meta_text);
}

}  // namespace adafocus::data
