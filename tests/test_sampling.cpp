// Frame sampling and clip transforms against the official formulas (computed by tests/python/reference.py).
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "data/sampler.h"
#include "data/transforms.h"
#include "test_util.h"

namespace adafocus {
namespace {

nlohmann::json data_reference() {
  std::ifstream in(test::reference("data_reference.json"));
  return nlohmann::json::parse(in);
}

TEST(Sampler, TestIndicesAreTheOfficialSegmentCentres) {
  Rng rng(0);
  const auto cases = data_reference()["tsn_val"];
  ASSERT_GT(cases.size(), 10u);
  for (const auto& c : cases)
    EXPECT_EQ(data::tsn_indices(c["frames"], c["segments"], false, rng), c["indices"].get<std::vector<int64_t>>())
        << c["frames"] << " frames, " << c["segments"] << " segments";
}

TEST(Sampler, TrainIndicesFallOneInEachSegmentAndCoverIt) {
  // Official: offset = i * (n // T) + randint(n // T).
  const int64_t n = 50, t = 8, duration = n / t;
  std::vector<std::set<int64_t>> seen(t);
  Rng rng(3);
  for (int draw = 0; draw < 500; ++draw) {
    const auto idx = data::tsn_indices(n, t, true, rng);
    ASSERT_EQ(idx.size(), size_t(t));
    for (int64_t i = 0; i < t; ++i) {
      EXPECT_GE(idx[i], i * duration);
      EXPECT_LT(idx[i], (i + 1) * duration);
      seen[i].insert(idx[i]);
    }
  }
  for (const auto& s : seen) EXPECT_EQ(s.size(), size_t(duration));  // every frame of a segment gets drawn
}

TEST(Sampler, ShortVideosSpreadInsteadOfRepeatingFrameZero) {
  Rng rng(0);
  EXPECT_EQ(data::tsn_indices(4, 8, false, rng), (std::vector<int64_t>{0, 0, 1, 1, 2, 2, 3, 3}));
  EXPECT_EQ(data::tsn_indices(4, 8, true, rng), (std::vector<int64_t>{0, 0, 1, 1, 2, 2, 3, 3}));
  std::vector<int64_t> all(16);
  for (int i = 0; i < 16; ++i) all[i] = i;
  EXPECT_EQ(data::tsn_indices(16, 16, false, rng), all);
}

TEST(Sampler, OfficialInputOrder) {
  EXPECT_EQ(data::input_order(16), (std::vector<int64_t>{7, 0, 15, 3, 11, 1, 5, 9, 13, 2, 4, 6, 8, 10, 12, 14}));
  EXPECT_EQ(data::input_order(8), (std::vector<int64_t>{3, 0, 7, 1, 5, 2, 4, 6}));
  EXPECT_EQ(data::reorder({10, 11, 12, 13, 14, 15, 16, 17}, data::input_order(8)),
            (std::vector<int64_t>{13, 10, 17, 11, 15, 12, 14, 16}));
  // Any T: a permutation that starts with the middle and the two ends (official algorithm, see reference.py).
  const auto cases = data_reference()["input_order"];
  ASSERT_GT(cases.size(), 5u);
  for (const auto& c : cases)
    EXPECT_EQ(data::input_order(c["segments"]), c["order"].get<std::vector<int64_t>>()) << c["segments"];
}

TEST(Sampler, DenseTestWindowsAreTheOfficialOnes) {
  Rng rng(1);
  const auto cases = data_reference()["dense_val"];
  ASSERT_GT(cases.size(), 10u);
  for (const auto& c : cases)
    EXPECT_EQ(data::dense_indices(c["frames"], c["segments"], c["stride"], false, rng),
              c["indices"].get<std::vector<int64_t>>())
        << c["frames"] << " frames";
}

TEST(Sampler, DenseTrainWindowsStartAnywhereButTheLastPosition) {
  // randint(0, sample_pos - 1): sample_pos = 1 + 40 - 8 * 4 = 9, starts 0..7.
  Rng rng(1);
  std::set<int64_t> starts;
  for (int i = 0; i < 1000; ++i) {
    const auto idx = data::dense_indices(40, 8, 4, true, rng);
    for (size_t k = 1; k < idx.size(); ++k) ASSERT_EQ(idx[k] - idx[k - 1], 4);
    starts.insert(idx[0]);
  }
  EXPECT_EQ(starts, (std::set<int64_t>{0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(data::dense_indices(64, 8, 0, false, rng)[1], 8);  // stride 0: 64 / 8
}

TEST(Sampler, GlancePositionsAmongCandidates) {
  Rng rng(2);
  EXPECT_EQ(data::glance_positions(12, 3, false, rng), (std::vector<int64_t>{1, 4, 7, 10}));  // Uni: index 1 of 3
  const auto train = data::glance_positions(48, 3, true, rng);
  ASSERT_EQ(train.size(), 16u);
  for (size_t i = 0; i < train.size(); ++i) EXPECT_EQ(train[i] / 3, int64_t(i));
}

TEST(Transforms, MultiScaleCropCandidatesAreTheOfficialOnes) {
  const auto cases = data_reference()["multiscale_crop"];  // a copy: the parsed document is a temporary
  for (const auto& c : cases) {
    data::TransformOptions o;
    o.input_size = c["input_size"];
    std::vector<std::vector<int>> ours;
    for (const auto& b : data::multiscale_crop_candidates(c["width"], c["height"], o))
      ours.push_back({b.width, b.height, b.x, b.y});
    EXPECT_EQ(ours, c["boxes"].get<std::vector<std::vector<int>>>()) << c["width"] << "x" << c["height"];
  }
}

TEST(Transforms, TrainCropsAreCandidatesAndAllGetDrawn) {
  data::TransformOptions o;
  const auto candidates = data::multiscale_crop_candidates(340, 256, o);
  std::set<std::vector<int>> drawn;
  int flips = 0;
  Rng rng(4);
  for (int i = 0; i < 20000; ++i) {
    const auto b = data::sample_train_crop(340, 256, o, rng);
    drawn.insert({b.x, b.y, b.width, b.height});
    flips += b.flip;
    data::CropBox plain = b;
    plain.flip = false;
    ASSERT_NE(std::find(candidates.begin(), candidates.end(), plain), candidates.end());
  }
  std::set<std::vector<int>> distinct;
  for (const auto& b : candidates) distinct.insert({b.x, b.y, b.width, b.height});
  EXPECT_EQ(drawn, distinct);
  EXPECT_NEAR(flips / 20000.0, 0.5, 0.02);
  o.flip = false;  // Sth-Sth, Jester
  for (int i = 0; i < 100; ++i) EXPECT_FALSE(data::sample_train_crop(340, 256, o, rng).flip);
}

io::Image gradient(int w, int h, int shift) {
  io::Image image(w, h);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c) image.row(y)[x * 3 + c] = static_cast<uint8_t>((x + shift + 50 * c) % 256);
  return image;
}

TEST(Transforms, OneCropAndFlipForTheWholeClip) {
  data::TransformOptions o;
  o.input_size = 32;
  const std::vector<io::Image> clip{gradient(64, 48, 0), gradient(64, 48, 0)};
  const data::CropBox box{8, 4, 40, 40, true};
  const torch::Tensor out = data::train_transform(clip, box, o);
  ASSERT_EQ(out.sizes(), torch::IntArrayRef({2, 3, 32, 32}));
  EXPECT_TRUE(out[0].equal(out[1]));
  // Flipped: intensity falls from left to right in every channel.
  EXPECT_GT(out[0][0][10][2].item<float>(), out[0][0][10][29].item<float>());
}

TEST(Transforms, TestViewResizesCropsAndNormalises) {
  data::TransformOptions o;
  o.input_size = 224;
  o.test_resize = 256;
  io::Image grey(341, 256);
  std::fill(grey.rgb.begin(), grey.rgb.end(), 128);
  const torch::Tensor out = data::test_transform({grey}, o);
  ASSERT_EQ(out.sizes(), torch::IntArrayRef({1, 3, 224, 224}));
  for (int c = 0; c < 3; ++c)  // (128/255 - mean) / std, ImageNet statistics
    EXPECT_NEAR(out[0][c].mean().item<float>(), (128.0f / 255.0f - o.mean[c]) / o.std[c], 1e-5);
  // torchvision: Resize(256) of 341x256 -> 341x256; CenterCrop(224): left int(round(58.5)) = 58 (half to even)
  const auto box = data::test_crop(341, 256, 224);
  EXPECT_EQ(box.x, 58);
  EXPECT_EQ(box.y, 16);
  EXPECT_EQ(io::short_side_size(300, 200, 256), (std::pair<int, int>{384, 256}));
  EXPECT_EQ(io::short_side_size(200, 301, 256), (std::pair<int, int>{256, 385}));
}

// Pillow's bilinear resize (the official transforms') on random images, shrinking and enlarging: equal to the level.
// swscale's, the faster option, is checked to differ, so that the comparison can tell resizers apart.
TEST(Transforms, PilResizeEqualsPillowToTheLevel) {
  test::TempDir dir;
  ASSERT_EQ(test::run_reference_script("pil-resize " + dir.path("pil")), 0);
  std::ifstream index(dir.path("pil/cases.json"));
  const auto cases = nlohmann::json::parse(index);
  ASSERT_GE(cases.size(), 10u);
  auto read = [](const std::string& path, io::Image& image) {
    std::ifstream in(path, std::ios::binary);
    in.read(reinterpret_cast<char*>(image.rgb.data()), static_cast<std::streamsize>(image.rgb.size()));
    return static_cast<size_t>(in.gcount()) == image.rgb.size();
  };
  int swscale_differs = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto& c = cases[i];
    io::Image in(c["width"], c["height"]), expected(c["out_width"], c["out_height"]);
    const std::string stem = dir.path("pil/case_" + std::to_string(i));
    ASSERT_TRUE(read(stem + ".in", in) && read(stem + ".out", expected)) << stem;
    const io::Image pil = io::resize(in, expected.width, expected.height, io::Resize::kPil);
    ASSERT_EQ(pil.width, expected.width);
    ASSERT_EQ(pil.height, expected.height);
    size_t mismatches = 0;
    for (size_t k = 0; k < pil.rgb.size(); ++k) mismatches += pil.rgb[k] != expected.rgb[k];
    EXPECT_EQ(mismatches, 0u) << in.width << "x" << in.height << " -> " << pil.width << "x" << pil.height;
    swscale_differs += io::resize(in, expected.width, expected.height, io::Resize::kSwscale).rgb != expected.rgb;
  }
  EXPECT_GT(swscale_differs, 0);
}

}  // namespace
}  // namespace adafocus
