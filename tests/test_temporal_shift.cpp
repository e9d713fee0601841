#include <gtest/gtest.h>

#include "io/pth.h"
#include "nn/temporal_shift.h"
#include "test_util.h"

namespace adafocus {
namespace {

TEST(TemporalShift, EqualsOfficialInPlaceVersion) {
  // 2 clips x 4 frames, 16 channels, shift_div 8: the official TSM code's output, computed by Python.
  const torch::Tensor x = io::read_tensor(test::reference("shift_in.pt"));
  const torch::Tensor expected = io::read_tensor(test::reference("shift_out.pt"));
  EXPECT_TRUE(nn::temporal_shift(x, 4, 8).equal(expected));
}

TEST(TemporalShift, MovesChannelsBetweenNeighbouringFramesOnly) {
  // Frame t of clip n filled with 100 n + t: shifted channels must show t+1 / t-1 of the same clip, or 0.
  const int64_t clips = 2, frames = 3, channels = 8;
  auto x = torch::zeros({clips * frames, channels, 1, 1});
  for (int64_t n = 0; n < clips; ++n)
    for (int64_t t = 0; t < frames; ++t) x[n * frames + t].fill_(100.0 * n + t + 1);
  auto y = nn::temporal_shift(x, frames, 4);  // fold = 2 channels each way
  for (int64_t n = 0; n < clips; ++n)
    for (int64_t t = 0; t < frames; ++t) {
      const auto v = y[n * frames + t].flatten();
      const double self = 100.0 * n + t + 1;
      EXPECT_EQ(v[0].item<double>(), t + 1 < frames ? self + 1 : 0.0);
      EXPECT_EQ(v[2].item<double>(), t > 0 ? self - 1 : 0.0);
      EXPECT_EQ(v[4].item<double>(), self);
    }
}

TEST(TemporalShift, IsDifferentiableAndLeavesInputIntact) {
  auto x = torch::randn({8, 16, 2, 2}, torch::requires_grad());
  const auto before = x.detach().clone();
  auto y = nn::temporal_shift(x, 4, 8);
  y.sum().backward();
  EXPECT_TRUE(x.detach().equal(before));
  // Each input element reaches at most one output element: gradient is 1 where it does, 0 where it falls off.
  const auto g = x.grad();
  EXPECT_TRUE(((g == 0) | (g == 1)).all().item<bool>());
  EXPECT_EQ(g.sum().item<double>(), y.numel() - 2 * 2 * 2 * 2 * 2);  // per clip and direction, 2 channels x 4 pixels of one frame fall off
}

TEST(TemporalShift, WithoutGradientTheSameAsWithOne) {
  // The copying path (no gradient) against the slices-and-cat one (a gradient asked): NCHW and channels-last, float and
  // bf16, folds of 0 (fewer channels than shift_div), 1 and 3, one and several frames a clip.
  torch::manual_seed(2);
  for (const auto dtype : {torch::kFloat, torch::kBFloat16})
    for (const bool last : {false, true})
      for (const auto& [segments, channels, div] : {std::make_tuple(4, 8, 8), std::make_tuple(3, 13, 4),
                                                    std::make_tuple(2, 5, 8), std::make_tuple(1, 8, 4)}) {
        auto x = torch::randn({2 * segments, channels, 3, 5}).to(dtype);
        if (last) x = x.contiguous(torch::MemoryFormat::ChannelsLast);
        torch::Tensor ours;
        {
          torch::NoGradGuard no_grad;
          ours = nn::temporal_shift(x, segments, div);
        }
        const auto expected = nn::temporal_shift(x.clone().requires_grad_(), segments, div);
        ASSERT_TRUE(expected.requires_grad());
        EXPECT_TRUE(ours.equal(expected.detach())) << segments << " " << channels << " " << div << " " << last;
        EXPECT_EQ(ours.is_contiguous(torch::MemoryFormat::ChannelsLast) && !ours.is_contiguous(), last);
      }
}

TEST(TemporalShift, RejectsBatchesThatAreNotWholeClips) {
  EXPECT_THROW(nn::temporal_shift(torch::zeros({6, 16, 2, 2}), 4, 8), c10::Error);
}

TEST(TemporalShift, ChannelsLastStaysChannelsLastWithTheSameValues) {
  // Shifted in its own layout (a convolution after it then converts nothing), with the values of the NCHW shift.
  torch::manual_seed(3);
  const auto x = torch::randn({6, 16, 5, 4});
  const auto last = x.contiguous(torch::MemoryFormat::ChannelsLast);
  const auto shifted = nn::temporal_shift(last, 3, 8);
  EXPECT_TRUE(shifted.is_contiguous(torch::MemoryFormat::ChannelsLast));
  EXPECT_TRUE(shifted.equal(nn::temporal_shift(x, 3, 8)));
}

}  // namespace
}  // namespace adafocus
