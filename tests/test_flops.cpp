// FLOPs counted from the layers must reproduce the constants hard-coded in the official repos (facts §0.1, §8).
#include <gtest/gtest.h>

#include "nn/flop_counter.h"
#include "nn/backbone.h"

namespace adafocus {
namespace {

double gflops(const std::string& arch, int64_t size, int64_t tsm_segments = 0) {
  auto model = nn::make_backbone(nn::BackboneOptions(arch).tsm_segments(tsm_segments));
  return nn::backbone_flops(*model, size, size, std::max<int64_t>(1, tsm_segments)).gflops();
}

TEST(Flops, OfficialConstants) {
  EXPECT_NEAR(gflops("mobilenet_v2", 224), 0.299511328, 1e-9);
  EXPECT_NEAR(gflops("resnet50", 96), 0.750725056, 1e-9);
  EXPECT_NEAR(gflops("resnet50", 128), 1.334601664, 1e-9);
  EXPECT_NEAR(gflops("resnet50", 160), 2.08530016, 1e-9);
  EXPECT_NEAR(gflops("resnet50", 192), 3.002820544, 1e-9);
}

TEST(Flops, TemporalShiftIsFree) {
  // The official TSM constants add only the two 174-class heads (2 x 2048 x 174 MACs for R50), not the shift.
  EXPECT_NEAR(gflops("resnet50", 128, 4), 1.334601664, 1e-9);
  EXPECT_NEAR(gflops("mobilenet_v2", 224, 8), 0.299511328, 1e-9);
}

TEST(Flops, LayersAreNamedAndSumToTheTotal) {
  auto model = nn::make_backbone(nn::BackboneOptions("resnet18"));
  const nn::FlopsReport r = nn::backbone_flops(*model, 64, 64);
  int64_t sum = 0;
  for (const auto& l : r.layers) sum += l.macs;
  EXPECT_EQ(sum, r.total);
  ASSERT_FALSE(r.layers.empty());
  EXPECT_EQ(r.layers[0].name, "conv1");
  EXPECT_EQ(r.layers[0].op, "conv");
  // conv1: 64 x 32 x 32 outputs x 3 x 7 x 7
  EXPECT_EQ(r.layers[0].macs, 64 * 32 * 32 * 3 * 7 * 7);
  EXPECT_EQ(r.layers[1].name, "bn1");
  EXPECT_EQ(r.layers[1].macs, 64);
  EXPECT_EQ(r.layers[1].op, "batch_norm");
}

TEST(Flops, LinearRecurrentAndMatmulFollowTheConvention) {
  // The parts of the methods' heads: Linear(in, out), BN1d, GRU(in, hidden) over a sequence, a GRU cell, matmul.
  torch::nn::Sequential net(torch::nn::Linear(12, 20), torch::nn::BatchNorm1d(20));
  torch::nn::GRU gru(torch::nn::GRUOptions(20, 16));
  torch::nn::GRUCell cell(20, 16);
  net->register_module("gru", gru);
  net->register_module("cell", cell);
  net->eval();
  const int64_t batch = 3, steps = 5;
  torch::NoGradGuard no_grad;
  const nn::FlopsReport r = nn::count_flops(*net, [&] {
    auto h = net->forward(torch::randn({steps * batch, 12}));  // (L*B, 20)
    gru->forward(h.view({steps, batch, 20}));
    cell->forward(h.slice(0, 0, batch));
    torch::matmul(torch::randn({batch, 4, 6}), torch::randn({6, 2}));
  });
  ASSERT_EQ(r.layers.size(), 5u);
  EXPECT_EQ(r.layers[0].macs, steps * batch * 12 * 20);                    // linear: no bias term
  EXPECT_EQ(r.layers[1].macs, steps * batch * 20);                         // BN: one per channel per sample
  EXPECT_EQ(r.layers[2].macs, steps * batch * 3 * 16 * (20 + 16));         // GRU: 3 gates x (w_ih + w_hh)
  EXPECT_EQ(r.layers[2].name, "gru");
  EXPECT_EQ(r.layers[3].macs, batch * 3 * 16 * (20 + 16));                 // GRU cell
  EXPECT_EQ(r.layers[4].macs, batch * 4 * 2 * 6);                          // matmul: outputs x inner dim
  EXPECT_EQ(r.layers[0].name, "0");
}

TEST(Flops, CounterIsRemovedAfterwards) {
  torch::nn::Linear fc(4, 4);
  nn::count_flops(*fc, [&] { fc->forward(torch::randn({1, 4})); });
  // A second count sees only its own forward.
  const nn::FlopsReport r = nn::count_flops(*fc, [&] { fc->forward(torch::randn({2, 4})); });
  EXPECT_EQ(r.total, 2 * 4 * 4);
}

}  // namespace
}  // namespace adafocus
