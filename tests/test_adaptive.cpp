// Adaptive inference: threshold fitting on hand-computed examples, the cube crop and AdaFocusV3's two gradient
// estimators against finite differences, and the exit-by-exit path (same logits as predict, videos leaving the
// batch, the FLOPs counted as they leave, no frame processed twice).
#include <gtest/gtest.h>

#include "infer/adaptive.h"
#include "infer/early_exit.h"
#include "nn/flop_counter.h"
#include "methods/adafocus_v3.h"
#include "nn/backbone.h"
#include "nn/cube_crop.h"
#include "nn/temporal_shift.h"
#include "test_util.h"

namespace adafocus {
namespace {

// Five samples, three exits. Worked by hand in the comments of the tests that use them.
torch::Tensor example_scores() {
  return torch::tensor({{0.9, 0.2, 0.0}, {0.1, 0.8, 0.0}, {0.5, 0.6, 0.0}, {0.7, 0.1, 0.0}, {0.3, 0.4, 0.0}},
                       torch::kDouble);
}
torch::Tensor example_correct() {  // exit 0: 40% correct, exit 1: 60%, exit 2: 100%
  return torch::tensor({{1, 1, 1}, {0, 0, 1}, {0, 1, 1}, {1, 1, 1}, {0, 0, 1}}, torch::kLong).to(torch::kBool);
}
const std::vector<double> kExampleCost{1.0, 2.0, 4.0};

TEST(EarlyExit, GeometricProportions) {
  const auto p = infer::geometric_proportions(2.0, 3);  // 2, 4, 8 over 14
  ASSERT_EQ(p.size(), 3u);
  EXPECT_NEAR(p[0], 2.0 / 14, 1e-12);
  EXPECT_NEAR(p[1], 4.0 / 14, 1e-12);
  EXPECT_NEAR(p[2], 8.0 / 14, 1e-12);
  EXPECT_EQ(infer::geometric_proportions(0.0, 3), (std::vector<double>{1, 0, 0}));
  const auto big = infer::geometric_proportions(1e6, 40);  // no overflow
  EXPECT_NEAR(big.back(), 1.0, 1e-5);
}

TEST(EarlyExit, ThresholdsOfTheOfficialProcedureByHand) {
  // Proportions 0.4, 0.4, 0.2 of 5 samples: 2 leave at exit 0, 2 at exit 1, the last at exit 2.
  // Exit 0 scores sorted: 0.9 (s0), 0.7 (s3) | 0.5 (s2), 0.3, 0.1 -> s0, s3 leave; threshold (0.7 + 0.5) / 2 = 0.6.
  // Exit 1 among s1, s2, s4: 0.8 (s1), 0.6 (s2) | 0.4 (s4) -> s1, s2 leave; threshold (0.6 + 0.4) / 2 = 0.5.
  const auto t = infer::fit_thresholds(example_scores(), {0.4, 0.4, 0.2});
  ASSERT_EQ(t.size(), 3u);
  EXPECT_DOUBLE_EQ(t[0], 0.6);
  EXPECT_DOUBLE_EQ(t[1], 0.5);
  EXPECT_LT(t[2], -1e20);  // everyone left leaves at the last exit
  const auto exits = infer::take_exits(example_scores(), t);
  EXPECT_TRUE(torch::equal(exits, torch::tensor({0, 1, 1, 0, 2}, torch::kLong)));
  // Cost 0.4 * 1 + 0.4 * 2 + 0.2 * 4 = 2.0; correct: s0 (exit 0), s2 (1), s3 (0), s4 (2), not s1 (1) -> 80%.
  const auto s = infer::geometric_setting(example_scores(), example_correct(), kExampleCost, 1.0);  // q = 1: 1/3 each
  // q = 1: floor(5/3) = 1 per exit: s0 leaves at 0 (t = (0.9 + 0.7) / 2), s1 at 1 (t = (0.8 + 0.6) / 2), 3 at 2.
  EXPECT_DOUBLE_EQ(s.thresholds[0], 0.8);
  EXPECT_DOUBLE_EQ(s.thresholds[1], 0.7);
  EXPECT_NEAR(s.gflops, (1 + 2 + 4 * 3) / 5.0, 1e-12);
  EXPECT_NEAR(s.top1, 100.0 * (1 + 0 + 1 + 1 + 1) / 5, 1e-9);
}

TEST(EarlyExit, BudgetPicksTheMostAccurateAffordableSetting) {
  // A budget of 1 GFLOP affords only "everyone leaves at exit 0": 40% at cost 1.
  const auto one = infer::budget_setting(example_scores(), example_correct(), kExampleCost, 1.0);
  EXPECT_DOUBLE_EQ(one.gflops, 1.0);
  EXPECT_NEAR(one.top1, 40.0, 1e-9);
  // 4 affords everyone at the last exit, the only way to 100% in this family.
  const auto four = infer::budget_setting(example_scores(), example_correct(), kExampleCost, 4.0);
  EXPECT_NEAR(four.top1, 100.0, 1e-9);
  EXPECT_LE(four.gflops, 4.0);
  // Below the first exit's cost nothing is affordable: the cheapest setting, over budget, and said so.
  const auto half = infer::budget_setting(example_scores(), example_correct(), kExampleCost, 0.5);
  EXPECT_DOUBLE_EQ(half.gflops, 1.0);
  EXPECT_DOUBLE_EQ(half.budget, 0.5);
  // In between, never over budget and never less accurate than a cheaper budget.
  double last = 0;
  for (double b = 1.0; b <= 4.0; b += 0.25) {
    const auto s = infer::budget_setting(example_scores(), example_correct(), kExampleCost, b);
    EXPECT_LE(s.gflops, b + 1e-12);
    EXPECT_GE(s.top1, last);
    last = s.top1;
  }
}

TEST(EarlyExit, ScoresAndTableRoundTrip) {
  const auto logits = torch::tensor({{{0.0, 0.0, 0.0, 0.0}, {10.0, 0.0, 0.0, 0.0}}}, torch::kDouble);  // (1, 2, 4)
  const auto entropy = infer::exit_scores(logits, infer::Criterion::Entropy);
  EXPECT_NEAR(entropy[0][0].item<double>(), -std::log(4.0), 1e-12);  // uniform: -H = -log C
  EXPECT_GT(entropy[0][1].item<double>(), -0.01);
  EXPECT_NEAR(infer::exit_scores(logits, infer::Criterion::MaxLogit)[0][1].item<double>(), 10.0, 1e-12);
  EXPECT_NEAR(infer::exit_scores(logits, infer::Criterion::MaxSoftmax)[0][0].item<double>(), 0.25, 1e-12);

  const auto table = infer::fit_exit_table(torch::randn({20, 3, 5}), torch::randint(0, 5, {20, 1}),
                                           infer::Criterion::Entropy, kExampleCost, {1.5, 3.0});
  const auto back = infer::ExitTable::from_json(table.to_json(), "test");
  ASSERT_EQ(back.budgets.size(), 2u);
  EXPECT_EQ(back.budgets[1].thresholds, table.budgets[1].thresholds);
  EXPECT_LE(back.for_budget(1.5).gflops, 1.5 + 1e-12);
  EXPECT_NE(test::error_of([] { infer::ExitTable::from_json("{\"format\": \"x\"}", "f.json"); }).find("f.json"),
            std::string::npos);
}

TEST(CubeCrop, IntegralCornersCopyPixels) {
  const auto clips = torch::randn({2, 5, 3, 12, 10});
  const auto corners = torch::tensor({{{2.0, 3.0, 1.0}, {0.0, 0.0, 0.0}}, {{7.0, 5.0, 2.0}, {1.0, 4.0, 3.0}}});
  const auto cubes = nn::sample_cubes(clips, corners, 5, 2);  // (2, 2, 2, 3, 5, 5)
  ASSERT_EQ(cubes.sizes(), torch::IntArrayRef({2, 2, 2, 3, 5, 5}));
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t k = 0; k < 2; ++k) {
      const int64_t y = corners[b][k][0].item<int64_t>(), x = corners[b][k][1].item<int64_t>(),
                    t = corners[b][k][2].item<int64_t>();
      const auto expected = clips[b].narrow(0, t, 2).narrow(2, y, 5).narrow(3, x, 5);
      EXPECT_TRUE(torch::allclose(cubes[b][k], expected, 1e-5, 1e-5)) << b << " " << k;
    }
}

TEST(CubeCrop, WholeFrameCutsAreTheTrilinearSample) {
  // Without gradient, cubes at whole frames are cut by nn::crop_bilinear; with a gradient (or a fractional frame)
  // by the 3-d grid_sample. The two must agree on fractional pixel corners, inside and across the frame's edges.
  torch::manual_seed(6);
  const auto clips = torch::randn({2, 5, 3, 20, 16});
  const auto corners = torch::tensor({{{2.3, 3.6, 1.0}, {-3.5, 9.25, 0.0}}, {{14.7, -2.2, 3.0}, {0.0, 0.0, 2.0}}});
  torch::Tensor fast;
  {
    torch::NoGradGuard no_grad;
    fast = nn::sample_cubes(clips, corners, 7, 2);
  }
  const auto q = corners.clone().requires_grad_(true);  // the grid_sample path
  const auto slow = nn::sample_cubes(clips, q, 7, 2);
  ASSERT_EQ(fast.sizes(), slow.sizes());
  EXPECT_TRUE(torch::allclose(fast, slow.detach(), 1e-5, 1e-5)) << (fast - slow).abs().max();
  EXPECT_GT((slow.detach() == 0).sum().item<int64_t>(), 0);  // the edges were reached: zeros outside
}

// d/dq of sum(weights * f(q)) against central differences, for each of the 3 coordinates of one cube's corner.
void expect_gradient_matches(const std::function<torch::Tensor(const torch::Tensor&)>& f, torch::Tensor corners) {
  corners = corners.to(torch::kDouble).requires_grad_(true);
  const auto weights = torch::randn(f(corners).sizes(), torch::kDouble);
  (f(corners) * weights).sum().backward();
  const auto analytic = corners.grad().clone();
  const double eps = 1e-4;
  for (int64_t d = 0; d < 3; ++d) {
    auto plus = corners.detach().clone(), minus = corners.detach().clone();
    plus[0][0][d] += eps;
    minus[0][0][d] -= eps;
    const double numeric = ((f(plus) * weights).sum() - (f(minus) * weights).sum()).item<double>() / (2 * eps);
    EXPECT_NEAR(analytic[0][0][d].item<double>(), numeric, 1e-6 + 1e-6 * std::abs(numeric)) << "coordinate " << d;
    EXPECT_NE(numeric, 0.0) << "coordinate " << d;
  }
}

TEST(CubeCrop, PixelEstimatorMatchesFiniteDifferences) {
  torch::manual_seed(3);
  const auto clips = torch::randn({1, 6, 2, 16, 16}, torch::kDouble);
  // Fractional corner (kinks of the interpolation are at integers): rows 3.3, columns 5.6, frame 2.25.
  expect_gradient_matches([&](const torch::Tensor& q) { return nn::sample_cubes(clips, q, 6, 2); },
                          torch::tensor({{{3.3, 5.6, 2.25}}}));
}

TEST(CubeCrop, EnlargedCubeSurroundsTheRealOne) {
  torch::manual_seed(4);
  const int64_t stride = 4, side = 8, length = 1;  // a local network of stride 4
  const auto clips = torch::randn({1, 5, 2, 24, 24}, torch::kDouble);
  const auto q = torch::tensor({{{9.3, 6.7, 2.4}}}, torch::kDouble).requires_grad_(true);
  const nn::EnlargedCubes e = nn::enlarge_cubes(q, 5, side, length, stride);
  // Centred in space (half a cell more on each side), whole frames in time from the one at or before the cube.
  EXPECT_TRUE(torch::allclose(e.corners, torch::tensor({{{7.3, 4.7, 2.0}}}, torch::kDouble)));
  EXPECT_TRUE(torch::allclose(e.offsets, torch::tensor({{{0.5, 0.5, 0.4}}}, torch::kDouble)));
  torch::NoGradGuard no_grad;
  const auto cubes = nn::sample_cubes(clips, e.corners, e.side, e.length);  // (1, 1, 2, 2, 12, 12)
  // The real cube (at a whole frame) is the enlarged one without its border.
  const auto real = nn::sample_cubes(clips, torch::tensor({{{9.3, 6.7, 2.0}}}, torch::kDouble), side, length);
  EXPECT_TRUE(torch::allclose(cubes[0][0][0].narrow(1, 2, side).narrow(2, 2, side), real[0][0][0], 1e-9, 1e-9));
}

TEST(CubeCrop, FeatureEstimatorGradientIsHowFeaturesChangeAcrossACell) {
  torch::manual_seed(4);
  const int64_t stride = 4;
  const auto maps = torch::randn({1, 2, 3, 3, 3}, torch::kDouble);  // an enlarged cube's map: 2 frames, 3x3 cells
  const auto q = torch::tensor({{{9.3, 6.7, 2.4}}}, torch::kDouble);
  // The gradient Eq. 6 gives the position ...
  const auto corners = q.clone().requires_grad_(true);
  const auto weights = torch::randn({1, 1, 3, 2, 2}, torch::kDouble);
  (nn::interpolate_cube_features(maps, nn::enlarge_cubes(corners, 5, 8, 1, stride).offsets.view({1, 3})) * weights)
      .sum()
      .backward();
  // ... is the derivative of the features interpolated from the (fixed) enlarged map as the cube moves in it.
  const auto at = nn::enlarge_cubes(q, 5, 8, 1, stride).offsets.view({1, 3});
  const double cell[3] = {4.0, 4.0, 1.0}, eps = 1e-4;
  for (int64_t d = 0; d < 3; ++d) {
    auto plus = at.clone(), minus = at.clone();
    plus[0][d] += eps / cell[d];
    minus[0][d] -= eps / cell[d];
    const double numeric = ((nn::interpolate_cube_features(maps, plus) - nn::interpolate_cube_features(maps, minus)) *
                            weights).sum().item<double>() / (2 * eps);
    EXPECT_NEAR(corners.grad()[0][0][d].item<double>(), numeric, 1e-8) << "coordinate " << d;
    EXPECT_NE(numeric, 0.0) << "coordinate " << d;
  }
  // At the fixed spatial offset of half a cell the features are the mean of neighbouring cells; in time the offset's
  // fraction weighs the two frames.
  torch::NoGradGuard no_grad;
  const auto e = nn::interpolate_cube_features(maps, torch::tensor({{0.5, 0.5, 0.25}}, torch::kDouble));
  const auto spatial = [&](int64_t t) {  // the 2x2 means of frame t: (3, 2, 2)
    const auto m = maps[0][t];
    return (m.narrow(1, 0, 2).narrow(2, 0, 2) + m.narrow(1, 1, 2).narrow(2, 0, 2) + m.narrow(1, 0, 2).narrow(2, 1, 2) +
            m.narrow(1, 1, 2).narrow(2, 1, 2)) / 4;
  };
  EXPECT_TRUE(torch::allclose(e[0][0], 0.75 * spatial(0) + 0.25 * spatial(1)));
  EXPECT_TRUE(torch::allclose(nn::interpolate_cube_features(maps, torch::zeros({1, 3}, torch::kDouble))[0][0],
                              maps[0][0].narrow(1, 0, 2).narrow(2, 0, 2)));
}

TEST(CubeCrop, FramesAreNeverTakenTwice) {
  // 2.2 -> 2; 2.4 -> 3 (2 is taken; 3 is nearer than 1); 0.1 -> 0; 2.0 -> 1, the only one left.
  const auto f = nn::assign_frames(torch::tensor({{2.2, 2.4, 0.1, 2.0}, {1.5, 1.5, 1.5, 1.5}}), 4);
  EXPECT_TRUE(torch::equal(f[0], torch::tensor({2, 3, 0, 1}, torch::kLong)));
  EXPECT_TRUE(torch::equal(f[1], torch::tensor({1, 2, 0, 3}, torch::kLong)));  // ties: the earlier frame
}

Config tiny_v3() { return test::tiny_adafocus("adafocus_v3"); }

// Trains a model a few steps so that its BN statistics and policy are not at their initial values.
void perturb(methods::MethodImpl& m, const torch::Tensor& clips, int64_t classes) {
  torch::optim::Adam adam(m.parameters(), torch::optim::AdamOptions(1e-2));
  m.train();
  const auto target = torch::arange(clips.size(0)) % classes;
  for (int i = 0; i < 3; ++i) {
    const auto l = m.loss({clips, {}}, target, methods::StepContext{});
    adam.zero_grad();
    l.total.backward();
    adam.step();
  }
  m.eval();
}

TEST(AdaFocusV3, PredictsEveryExitFromDistinctFrames) {
  torch::manual_seed(5);
  auto m = methods::make_method(tiny_v3(), 3);
  const auto clips = torch::randn({3, 4, 3, 64, 64});
  perturb(*m, clips, 3);
  torch::NoGradGuard no_grad;
  const auto p = m->predict({clips, {}});
  ASSERT_EQ(m->exits(), 5);                                       // p_0 and one per frame
  ASSERT_EQ(p.logits.sizes(), torch::IntArrayRef({3, 5, 3}));
  ASSERT_EQ(p.regions.sizes(), torch::IntArrayRef({3, 4, 4}));
  ASSERT_EQ(p.region_frames.sizes(), torch::IntArrayRef({3, 4, 1}));
  for (int64_t b = 0; b < 3; ++b)  // every frame exactly once
    EXPECT_TRUE(torch::equal(std::get<0>(p.region_frames[b].flatten().sort()), torch::arange(4, torch::kLong))) << b;
  EXPECT_TRUE((p.regions.select(2, 0) >= 0).all().item<bool>());
  EXPECT_TRUE((p.regions.select(2, 0) <= 64 - 24).all().item<bool>());
}

TEST(AdaFocusV3, PolicyInferenceIsItsConv3dEncoder) {
  // Without gradient the policy's 1x1x1 convolution runs as a linear layer over each cell's channels and the 3x3x3
  // ones on its channels-last-3d output: against the encoder's own LibTorch layers (the path with gradient), eval-mode
  // BN with moved statistics, glance maps in channels-last (as the glance returns them) and plain, batch 1 and 3; the
  // FLOPs counted the same.
  torch::manual_seed(12);
  methods::CubePolicy policy(24, 5, 3, 4, 8, std::vector<double>{0.2, 0.5, 0.8});
  for (auto& m : policy->encoder->modules(false))
    if (auto* bn = m->as<torch::nn::BatchNorm3d>()) {
      bn->running_mean.normal_();
      bn->running_var.uniform_(0.5, 2.0);
    }
  torch::NoGradGuard no_grad;
  policy->fc->weight.normal_(0, 0.1);
  policy->eval();
  for (const int64_t batch : {1, 3})
    for (const bool channels_last : {true, false}) {
      auto frames = torch::randn({batch * 5, 24, 3, 4});
      if (channels_last) frames = frames.contiguous(torch::MemoryFormat::ChannelsLast);
      const auto maps = frames.view({batch, 5, 24, 3, 4});
      torch::Tensor ours, theirs;
      const nn::FlopsReport counted = nn::count_flops(*policy, [&] { ours = policy->forward(maps); });
      nn::FlopsReport reference;
      {
        torch::AutoGradMode gradient(true);
        reference = nn::count_flops(*policy, [&] { theirs = policy->forward(maps).detach(); });
      }
      EXPECT_TRUE(test::AllCloseRelative(ours, theirs, 1e-5)) << batch << channels_last;
      EXPECT_EQ(counted.total, reference.total);
    }
}

TEST(AdaFocusV3, BothEstimatorsTrainThePolicyAndTheSecondStageOnlyThePolicy) {
  for (const char* gradient : {"feature", "pixel"}) {
    torch::manual_seed(6);
    Config c = tiny_v3();
    c.set(std::string("model.policy_gradient=") + gradient);
    auto v3 = std::dynamic_pointer_cast<methods::AdaFocusV3Impl>(methods::make_method(c, 3));
    v3->train();
    // Move the last layer off zero so that the gradient reaches the whole policy.
    {
      torch::NoGradGuard no_grad;
      v3->policy->fc->weight.normal_(0, 0.01);
    }
    const auto clips = torch::randn({4, 4, 3, 64, 64});
    const auto target = torch::tensor({0, 1, 2, 0}, torch::kLong);
    v3->loss({clips, {}}, target, {}).total.backward();
    for (const auto& g : v3->param_groups()) {
      double sum = 0;
      for (const auto& [name, p] : g.params)
        if (p.grad().defined()) sum += p.grad().abs().sum().item<double>();
      EXPECT_GT(sum, 0) << gradient << " " << g.name;
    }
    // Stage 2 of the TSM recipe: the policy alone.
    v3->zero_grad(true);
    methods::StepContext stage2;
    stage2.policy_only = true;
    v3->loss({clips, {}}, target, stage2).total.backward();
    for (const auto& g : v3->param_groups()) {
      bool any = false;
      for (const auto& [name, p] : g.params) any = any || (p.grad().defined() && p.grad().abs().sum().item<double>() > 0);
      EXPECT_EQ(any, g.name == "policy") << gradient << " " << g.name;
    }
  }
}

// Every exit on the exit-by-exit path equals predict(); with thresholds, each video leaves at the first exit whose
// score reaches the threshold, its prediction is the one it would have alone, and the counted FLOPs are the sum of
// what each video's exit costs.
void check_exit_path(methods::MethodImpl& m, const torch::Tensor& clips) {
  torch::NoGradGuard no_grad;
  const auto whole = m.predict({clips, {}}).logits;  // (B, K, C)
  const infer::AdaptiveResult all = infer::run_adaptive(m, {clips, {}}, {infer::Criterion::Entropy, {}}, false);
  EXPECT_TRUE(test::AllCloseRelative(all.exit_logits, whole, 1e-4));

  const int64_t k = m.exits(), b = clips.size(0);
  const auto scores = infer::exit_scores(whole, infer::Criterion::Entropy);
  // Thresholds halfway between the middle scores of each exit, so that videos leave at several exits.
  std::vector<double> thresholds;
  for (int64_t e = 0; e < k; ++e) {
    const auto sorted = std::get<0>(scores.select(1, e).sort());
    thresholds.push_back(0.5 * (sorted[b / 2 - 1] + sorted[b / 2]).item<double>());
  }
  const infer::ExitRule rule{infer::Criterion::Entropy, thresholds};
  const infer::AdaptiveResult r = infer::run_adaptive(m, {clips, {}}, rule, true);
  const auto expected_exits = infer::take_exits(scores, thresholds);
  EXPECT_TRUE(torch::equal(r.exits, expected_exits)) << r.exits << expected_exits;
  EXPECT_GT(std::get<0>(torch::_unique(r.exits)).numel(), 1);  // not all at one exit

  const infer::MethodFlops costs = infer::method_flops(m, clips.size(1), 0, clips.size(3));
  double expected_gflops = 0;
  for (int64_t i = 0; i < b; ++i) {
    expected_gflops += costs.exits[static_cast<size_t>(r.exits[i].item<int64_t>())];
    const infer::AdaptiveResult alone = infer::run_adaptive(m, {clips.narrow(0, i, 1), {}}, rule, false);
    EXPECT_EQ(alone.exits[0].item<int64_t>(), r.exits[i].item<int64_t>());
    EXPECT_TRUE(test::AllCloseRelative(alone.logits[0], r.logits[i], 1e-4)) << i;
  }
  EXPECT_NEAR(static_cast<double>(r.macs) * 1e-9, expected_gflops, 1e-9 * expected_gflops);
}

TEST(AdaFocusV3, ExitByExitPathLeavesTheBatch) {
  torch::manual_seed(7);
  auto m = methods::make_method(tiny_v3(), 3);
  const auto clips = torch::randn({6, 4, 3, 64, 64});
  perturb(*m, clips, 3);
  check_exit_path(*m, clips);
  // Frame-wise cubes: no video's frames repeat on the exit-by-exit path either.
  torch::NoGradGuard no_grad;
  const auto r = infer::run_adaptive(*m, {clips, {}}, {infer::Criterion::Entropy, {}}, false);
  for (const auto& f : r.region_frames) EXPECT_EQ(std::get<0>(torch::_unique(f)).numel(), f.numel());
  // The cubes run ahead of the exits, several to a call: a video sent out at any exit - mid-call included - has
  // predict()'s logits there, and the count is that exit's cost, not the cubes run ahead.
  const auto whole = m->predict({clips, {}}).logits;  // (B, K, C)
  const infer::MethodFlops costs = infer::method_flops(*m, clips.size(1), 0, clips.size(3));
  for (size_t e = 2; e < costs.exits.size(); ++e)  // every cube the same: one patch, the local network, a head
    EXPECT_NEAR(costs.exits[e] - costs.exits[e - 1], costs.exits[2] - costs.exits[1], 1e-12) << e;
  for (int64_t e = 0; e < m->exits(); ++e) {
    infer::ExitRule at{infer::Criterion::Entropy, std::vector<double>(static_cast<size_t>(m->exits()), INFINITY)};
    at.thresholds[static_cast<size_t>(e)] = -INFINITY;
    for (const bool count : {false, true}) {
      const auto one = infer::run_adaptive(*m, {clips.narrow(0, 0, 1), {}}, at, count);
      EXPECT_EQ(one.exits[0].item<int64_t>(), e);
      EXPECT_TRUE(test::AllCloseRelative(one.logits[0], whole[0][e], 1e-4)) << e;
      if (count) {
        EXPECT_NEAR(static_cast<double>(one.macs) * 1e-9, costs.exits[static_cast<size_t>(e)], 1e-12) << e;
      }
    }
  }
}

// Two TSM cubes of 4 frames cut from 8 focus frames (the Sth-Sth setting, small).
Config tiny_v3_tsm() {
  Config c = tiny_v3();
  for (const char* kv : {"model.glance.tsm=true", "model.local.tsm=true", "model.glance.shift_div=4",
                         "model.local.shift_div=4", "model.cube_frames=4", "model.cubes=2", "data.focus_segments=8"})
    c.set(kv);
  return c;
}

TEST(AdaFocusV3, TsmCubesStartSideBySideAndNoFrameRunsTwice) {
  torch::manual_seed(9);
  auto v3 = std::dynamic_pointer_cast<methods::AdaFocusV3Impl>(methods::make_method(tiny_v3_tsm(), 3));
  v3->eval();
  torch::NoGradGuard no_grad;
  const methods::Clips clips{torch::randn({2, 4, 3, 64, 64}), torch::randn({2, 8, 3, 64, 64})};
  // Untrained, the two cubes tile the 8 frames: frames 0-3 and 4-7.
  const auto p = v3->predict(clips);
  ASSERT_EQ(p.region_frames.sizes(), torch::IntArrayRef({2, 2, 4}));
  for (int64_t b = 0; b < 2; ++b)
    EXPECT_TRUE(torch::equal(p.region_frames[b].flatten(), torch::arange(8, torch::kLong))) << p.region_frames[b];

  // Cube 1 placed at frames 2-5 and cube 2 at 0-3: cube 2 runs only on frames 0 and 1, as a clip of 2 frames.
  const auto bias = v3->policy->fc->bias.view({2, 3});
  bias.select(1, 2).copy_(torch::tensor({0.0, -20.0}));  // time fractions 0.5 and ~0 of the 4 start positions
  const auto q = v3->predict(clips);
  EXPECT_TRUE(torch::equal(q.region_frames.select(1, 0)[0], torch::arange(2, 6, torch::kLong)));
  EXPECT_TRUE(torch::equal(q.region_frames.select(1, 1)[0], torch::arange(0, 4, torch::kLong)));
  // By hand: each cube's local features from the frames it runs on, the running max, exit 2's head.
  auto features = [&](int64_t b, int64_t first, int64_t frames, int64_t k) {
    const int64_t y = q.regions[b][k][1].item<int64_t>(), x = q.regions[b][k][0].item<int64_t>();
    const auto cube = clips.focus[b].narrow(0, first, frames).narrow(2, y, 24).narrow(3, x, 24);  // (f, 3, 24, 24)
    nn::TemporalShiftSegments segments(*v3->local_CNN, frames);
    return v3->classifier->local(v3->local_CNN->pool(v3->local_CNN->feature_map(cube)).mean(0, true));  // (1, H)
  };
  for (int64_t b = 0; b < 2; ++b) {
    const auto maps = v3->global_CNN->feature_map(methods::resize_frames(clips.frames[b], 16, "area"));
    const auto glance = v3->classifier->glance(v3->global_CNN->pool(maps).unsqueeze(0));  // (1, H)
    const auto z = torch::max(features(b, 2, 4, 0), features(b, 0, 2, 1));
    EXPECT_TRUE(test::AllCloseRelative(q.logits[b][2], v3->classifier->head(2, z, glance)[0], 1e-4)) << b;
  }
  // The FLOPs counted: 2 frames of the local network fewer than two whole cubes.
  const double per_frame = nn::backbone_flops(*v3->local_CNN, 24, 24, 4).gflops();
  const double overlapping = nn::count_flops(*v3, [&] { v3->predict(clips); }).gflops();
  bias.select(1, 2).copy_(torch::tensor({-20.0, 20.0}));  // frames 0-3 and 4-7 again
  const double apart = nn::count_flops(*v3, [&] { v3->predict(clips); }).gflops();
  EXPECT_NEAR(apart - overlapping, 2 * 2 * per_frame, 1e-3 * per_frame);  // 2 videos x 2 frames
}

TEST(AdaFocusV3, GlanceExitPaysForNoPolicy) {
  // Uni-AdaFocus counts the policy from exit 1 on: a video leaving at p_0 pays for the glance and its head only (the
  // exit-by-exit path runs the policy after exit 0, for the videos still present; check_exit_path counts the batch).
  torch::manual_seed(10);
  auto v3 = std::dynamic_pointer_cast<methods::AdaFocusV3Impl>(methods::make_method(tiny_v3(), 3));
  const infer::MethodFlops costs = infer::method_flops(*v3, 4, 0, 64);
  v3->eval();
  torch::NoGradGuard no_grad;
  const auto maps = v3->global_CNN->feature_map(torch::zeros({4, 3, 16, 16}));  // (T, Cg, h, w)
  const double policy = nn::count_flops(*v3->policy, [&] { v3->policy->forward(maps.unsqueeze(0)); }).gflops();
  const double glance = 4 * nn::backbone_flops(*v3->global_CNN, 16, 16).gflops();
  const double cube = nn::backbone_flops(*v3->local_CNN, 24, 24).gflops();
  ASSERT_GT(policy, 0);
  EXPECT_LT(costs.exits[0], glance + policy);              // the glance and its classifier, no policy
  EXPECT_GT(costs.exits[1] - costs.exits[0], policy + cube);  // the policy joins exit 1's cost
}

TEST(AdaFocusV2, ExitByExitPathLeavesTheBatch) {
  torch::manual_seed(8);
  Config c = test::tiny_adafocus("adafocus_v2");
  auto m = methods::make_method(c, 3);
  const auto clips = torch::randn({6, 4, 3, 64, 64});
  perturb(*m, clips, 3);
  check_exit_path(*m, clips);
}

}  // namespace
}  // namespace adafocus
