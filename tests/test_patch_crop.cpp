// The V2 patch crop: exact slicing at integral corners, and gradients w.r.t. the policy output.
#include <gtest/gtest.h>

#include "nn/patch_crop.h"

namespace adafocus {
namespace {

TEST(PatchCrop, IntegralCornersEqualSlicing) {
  torch::manual_seed(0);
  const auto images = torch::randn({3, 2, 20, 28});
  const int64_t p = 8;
  // Corners (y1, x1) = a * (H - P, W - P): choose a so that they are whole pixels.
  const std::vector<std::pair<int64_t, int64_t>> corners{{0, 0}, {12, 20}, {5, 7}};
  auto actions = torch::empty({3, 2});
  for (int i = 0; i < 3; ++i) {
    actions[i][0] = static_cast<double>(corners[i].first) / (20 - p);
    actions[i][1] = static_cast<double>(corners[i].second) / (28 - p);
  }
  const auto patches = nn::crop_patches(images, actions, p);
  ASSERT_EQ(patches.sizes(), torch::IntArrayRef({3, 2, p, p}));
  using torch::indexing::Slice;
  for (int i = 0; i < 3; ++i) {
    const auto [y, x] = corners[i];
    const auto expected = images[i].index({Slice(), Slice(y, y + p), Slice(x, x + p)});
    EXPECT_LT((patches[i] - expected).abs().max().item<double>(), 1e-5) << "corner " << y << "," << x;
  }
  const auto boxes = nn::patch_boxes(actions, 20, 28, p);
  EXPECT_NEAR(boxes[1][0].item<double>(), 20, 1e-5);  // x
  EXPECT_NEAR(boxes[1][1].item<double>(), 12, 1e-5);  // y
  EXPECT_NEAR(boxes[1][2].item<double>(), p, 1e-5);
}

TEST(PatchCrop, WithoutGradientTheSeparableCropSamplesAsGridSample) {
  // Inference takes crop_bilinear; with a gradient asked, affine_grid + grid_sample. Fractional corners, the corner
  // at either end of the range (the patch touching the frame's edges), channels-last frames.
  torch::manual_seed(1);
  const auto images = torch::randn({5, 3, 20, 28});
  auto actions = torch::rand({5, 2});
  actions[0][0] = 0.0, actions[0][1] = 1.0, actions[1][0] = 1.0, actions[1][1] = 0.0;
  for (const int64_t p : {8, 20}) {
    const auto expected = nn::crop_patches(images, actions.clone().requires_grad_(), p);
    ASSERT_TRUE(expected.requires_grad());  // (grid_sample's)
    for (const auto layout : {torch::MemoryFormat::Contiguous, torch::MemoryFormat::ChannelsLast}) {
      torch::NoGradGuard no_grad;
      const auto ours = nn::crop_patches(images.contiguous(layout), actions, p);
      EXPECT_LT((ours - expected).abs().max().item<double>(), 1e-5) << p;
    }
  }
}

TEST(PatchCrop, GradientMatchesFiniteDifferences) {
  torch::manual_seed(1);
  const auto opts = torch::TensorOptions().dtype(torch::kDouble);
  const auto images = torch::randn({2, 3, 16, 16}, opts);
  const auto weights = torch::randn({2, 3, 6, 6}, opts);  // a fixed linear read-out of the patch
  auto actions = torch::tensor({{0.31, 0.62}, {0.77, 0.18}}, opts).requires_grad_(true);
  auto loss = [&](const torch::Tensor& a) { return (nn::crop_patches(images, a, 6) * weights).sum(); };
  loss(actions).backward();
  const auto analytic = actions.grad().clone();
  EXPECT_GT(analytic.abs().sum().item<double>(), 0);
  const double eps = 1e-6;
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) {
      auto plus = actions.detach().clone(), minus = actions.detach().clone();
      plus[i][j] += eps;
      minus[i][j] -= eps;
      const double numeric = (loss(plus).item<double>() - loss(minus).item<double>()) / (2 * eps);
      EXPECT_NEAR(analytic[i][j].item<double>(), numeric, 1e-6 * std::max(1.0, std::abs(numeric)));
    }
}

}  // namespace
}  // namespace adafocus
