// The built-in benchmark generator: deterministic, and its ground truth matches its pixels.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/files.h"
#include "data/synthetic.h"
#include "io/list_file.h"
#include "io/video_reader.h"
#include "test_util.h"

namespace adafocus {
namespace {

data::SyntheticOptions small(const std::string& out, int threads) {
  data::SyntheticOptions o;
  o.out = out;
  o.train = 8;
  o.val = 4;
  o.seed = 7;
  o.size = 96;
  o.frames = 16;
  o.threads = threads;
  return o;
}

std::vector<nlohmann::json> meta(const std::string& dir) {
  std::vector<nlohmann::json> rows;
  std::ifstream in(dir + "/meta.jsonl");
  for (std::string line; std::getline(in, line);) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

TEST(Synthetic, SameSeedSameDatasetWhateverTheThreads) {
  test::TempDir a, b, c;
  data::make_synthetic(small(a.path("d"), 1));
  data::make_synthetic(small(b.path("d"), 3));
  std::vector<std::string> files{"train.txt", "val.txt", "classInd.txt", "meta.jsonl"};
  for (const auto& v : std::filesystem::directory_iterator(a.path("d/videos")))
    files.push_back("videos/" + v.path().filename().string());
  ASSERT_EQ(files.size(), 4u + 12u);
  // Every video: libx264's macroblock-tree once made a video's bytes depend on what the thread had encoded before.
  for (const auto& f : files) EXPECT_TRUE(read_file(a.path("d/") + f) == read_file(b.path("d/") + f)) << f;
  auto other = small(c.path("d"), 2);
  other.seed = 8;
  data::make_synthetic(other);
  EXPECT_NE(read_file(a.path("d/meta.jsonl")), read_file(c.path("d/meta.jsonl")));
}

TEST(Synthetic, ListsAndGroundTruthDescribeTheVideos) {
  test::TempDir dir;
  const auto o = small(dir.path("d"), 2);
  data::make_synthetic(o);
  const io::ListFile train = io::read_list(dir.path("d/train.txt"));
  EXPECT_EQ(train.format, io::ListFormat::Video);
  EXPECT_EQ(train.entries.size(), 8u);
  EXPECT_EQ(io::read_list(dir.path("d/val.txt")).entries.size(), 4u);
  EXPECT_EQ(io::read_class_index(dir.path("d/classInd.txt")).size(), 10u);

  double visible_minus_hidden = 0;
  for (const auto& row : meta(dir.path("d"))) {
    io::VideoReader video(dir.path("d/") + row["video"].get<std::string>());
    ASSERT_EQ(video.num_frames(), o.frames);
    const int first = row["visible"][0], last = row["visible"][1];
    const double fraction = (last - first + 1) / double(o.frames);
    EXPECT_GE(fraction, 0.3 - 0.5 / o.frames);
    EXPECT_LE(fraction, 0.7 + 0.5 / o.frames);
    const auto& box0 = row["boxes"][0];
    EXPECT_LE(box0[2].get<double>() * box0[3].get<double>(), 0.10 * o.size * o.size);  // <= 10% of the frame
    EXPECT_GE(row["label"].get<int>(), 0);
    EXPECT_LT(row["label"].get<int>(), 10);
    // The box holds the item where it is visible: brighter than the same place when the item is not there.
    std::vector<int64_t> all(static_cast<size_t>(o.frames));
    for (int t = 0; t < o.frames; ++t) all[t] = t;
    const auto frames = video.read(all);
    double in = 0, out = 0;
    int n_in = 0, n_out = 0;
    for (int t = 0; t < o.frames; ++t) {
      const auto& box = row["boxes"][t];
      const int x = box[0], y = box[1], s = box[2];
      double sum = 0;
      for (int r = std::max(0, y); r < std::min(o.size, y + s); ++r)
        for (int c = std::max(0, x); c < std::min(o.size, x + s); ++c) sum += frames[t].row(r)[c * 3] / 255.0;
      const double mean = sum / (s * s);
      (t >= first && t <= last ? in : out) += mean;
      (t >= first && t <= last ? n_in : n_out) += 1;
    }
    if (n_out > 0) visible_minus_hidden += in / n_in - out / n_out;
  }
  EXPECT_GT(visible_minus_hidden / 12, 0.1);
}

TEST(Synthetic, MotionLabelsAreTheDirectionOfTheBoxes) {
  test::TempDir dir;
  auto o = small(dir.path("d"), 2);
  o.variant = "motion";
  o.format = "frames";
  data::make_synthetic(o);
  EXPECT_EQ(io::read_class_index(dir.path("d/classInd.txt")),
            (std::vector<std::string>{"right", "left", "down", "up"}));
  EXPECT_EQ(io::read_list(dir.path("d/train.txt")).format, io::ListFormat::Frames);
  for (const auto& row : meta(dir.path("d"))) {
    EXPECT_TRUE(std::filesystem::exists(dir.path("d/") + row["video"].get<std::string>() + "/image_00016.jpg"));
    const int first = row["visible"][0], last = row["visible"][1];
    if (last == first) continue;
    const double dx = row["boxes"][last][0].get<double>() - row["boxes"][first][0].get<double>();
    const double dy = row["boxes"][last][1].get<double>() - row["boxes"][first][1].get<double>();
    const int label = row["label"];
    const double along = label == 0 ? dx : label == 1 ? -dx : label == 2 ? dy : -dy;
    EXPECT_GT(along, 0) << row.dump();
    EXPECT_LT(std::abs(label < 2 ? dy : dx), 1e-9);
    for (int t = first; t <= last; ++t)  // inside the frame while visible
      for (int k = 0; k < 2; ++k) {
        EXPECT_GE(row["boxes"][t][k].get<double>(), 0);
        EXPECT_LE(row["boxes"][t][k].get<double>() + row["boxes"][t][2].get<double>(), o.size);
      }
  }
}

TEST(Synthetic, BadOptionsAreErrors) {
  test::TempDir dir;
  auto o = small(dir.path("d"), 1);
  o.variant = "colour";
  EXPECT_NE(test::error_of([&] { data::make_synthetic(o); }).find("unknown variant"), std::string::npos);
  o = small(dir.path("d"), 1);
  o.source = dir.path("nowhere");
  EXPECT_NE(test::error_of([&] { data::make_synthetic(o); }).find("dataset-fashion-mnist"), std::string::npos);
}

}  // namespace
}  // namespace adafocus
