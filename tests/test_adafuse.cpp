// AdaFuse: the gate's three actions on a hand-made example, the official FLOPs accounting on a hand-computed mask,
// the channel-skipping inference against the masked dense forward (outputs and counted FLOPs), the official
// layout, and a training run whose FLOPs term falls.
#include <gtest/gtest.h>

#include "nn/flop_counter.h"
#include "io/pth.h"
#include "methods/adafuse.h"
#include "nn/resnet.h"
#include "nn/state_dict.h"
#include "nn/temporal_shift.h"
#include "test_util.h"

namespace adafocus {
namespace {

Config tiny_adafuse(const std::string& arch, bool tsm) {
  Config c = Config::defaults();
  c.set("model.method=adafuse");
  c.set("model.backbone.arch=" + arch);
  c.set("model.backbone.base_width=4");
  c.set("model.backbone.stem=small_s2");
  c.set(std::string("model.backbone.tsm=") + (tsm ? "true" : "false"));
  c.set("model.backbone.shift_div=4");
  c.set("model.adafuse.hidden=8");
  c.set("model.dropout=0.0");
  c.set("data.segments=3");
  c.set("data.input_size=32");
  return c;
}

// One-hot masks (N, G, 3) from actions (N rows of G) in the official order: 0 skip, 1 reuse, 2 keep.
torch::Tensor masks(const std::vector<std::vector<int64_t>>& actions) {
  std::vector<int64_t> flat;
  for (const auto& row : actions) flat.insert(flat.end(), row.begin(), row.end());
  return torch::one_hot(torch::tensor(flat, torch::kLong).view({static_cast<int64_t>(actions.size()), -1}), 3)
      .to(torch::kFloat);
}

// Every action for some channel and frame, an all-skipped frame and a first frame that reuses (nothing before it).
torch::Tensor mixed_masks(int64_t frames, int64_t channels, int64_t segments) {
  std::vector<std::vector<int64_t>> actions(static_cast<size_t>(frames));
  for (int64_t f = 0; f < frames; ++f)
    for (int64_t c = 0; c < channels; ++c) actions[f].push_back(f == 4 ? 0 : (f * 7 + c * 5 + c * c) % 3);
  actions[0][0] = 1;
  return masks(actions);
}

TEST(AdaFuse, GateKeepsReusesTheFrameBeforeOrSkips) {
  // 2 clips x 3 frames, 3 channels of one pixel: value 100 * clip + 10 * frame + channel + 1.
  auto out1 = torch::zeros({6, 3, 1, 1});
  for (int64_t n = 0; n < 6; ++n)
    for (int64_t c = 0; c < 3; ++c) out1[n][c][0][0] = 100 * (n / 3) + 10 * (n % 3) + c + 1;
  // channel 0 kept, 1 reused, 2 skipped in every frame
  const auto fused = methods::fuse_channels(out1, masks(std::vector<std::vector<int64_t>>(6, {2, 1, 0})), 3);
  const std::vector<std::vector<float>> expected{{1, 0, 0},   {11, 2, 0},   {21, 12, 0},
                                                 {101, 0, 0}, {111, 102, 0}, {121, 112, 0}};  // no reuse across clips
  for (int64_t n = 0; n < 6; ++n)
    for (int64_t c = 0; c < 3; ++c) EXPECT_EQ(fused[n][c][0][0].item<float>(), expected[n][c]) << n << " " << c;
}

TEST(AdaFuse, GatesWithoutGradientDecideAsTheGumbelSoftmax) {
  // Without a gradient the gates' floored log-probabilities and their hard Gumbel-softmax (or argmax) run as loops:
  // the same decisions as LibTorch's operators (with a gradient) from the same draws, on biases that put some
  // probabilities below the 1e-8 floor.
  torch::manual_seed(3);
  auto method = methods::make_method(tiny_adafuse("resnet10", false), 5);
  auto& fuse = dynamic_cast<methods::AdaFuseImpl&>(*method);
  method->eval();
  {
    torch::NoGradGuard no_grad;
    for (auto& b : fuse.blocks) b.policy->gate_fc1->bias.normal_(0.0, 12.0);
  }
  const auto frames = torch::randn({6, 3, 32, 32});
  for (const bool argmax : {false, true}) {
    fuse.argmax_at_test = argmax;
    methods::GateMasks with_gradient, without;
    torch::manual_seed(11);
    const auto expected = fuse.frame_logits(frames, with_gradient, methods::Inference::Dense);
    ASSERT_TRUE(expected.requires_grad());  // LibTorch's operators ran
    torch::manual_seed(11);
    torch::Tensor ours;
    {
      torch::NoGradGuard no_grad;
      ours = fuse.frame_logits(frames, without, methods::Inference::Dense);
    }
    ASSERT_EQ(with_gradient.masks.size(), without.masks.size());
    auto taken = torch::zeros({3});  // how often each action is taken, over all blocks
    for (size_t i = 0; i < without.masks.size(); ++i) {
      EXPECT_TRUE(without.masks[i].equal(with_gradient.masks[i].detach().round())) << i << " argmax " << argmax;
      taken += without.masks[i].reshape({-1, 3}).sum(0);
    }
    EXPECT_TRUE(taken.gt(0).all().item<bool>()) << taken;
    EXPECT_TRUE(test::AllCloseRelative(ours, expected.detach(), 1e-5));
  }
}

TEST(AdaFuse, FlopsAsTheOfficialFormulasOnAHandComputedMask) {
  // One video, 3 frames, 2 channels: frame 0 [keep, skip], frame 1 [reuse, keep], frame 2 [skip, reuse].
  methods::GateMasks g;
  g.masks.push_back(masks({{2, 0}, {1, 2}, {0, 1}}).view({1, 3, 2, 3}));
  g.conv1.push_back(1e9);  // 1 GFLOP per frame
  g.conv2.push_back(3e9);
  // upsave (1 - keep_t)(1 - reuse_t+1), last frame 1 - keep: t0 [0, 1], t1 [1, 0], t2 [1, 1] -> 4/6 (the official
  // code's last-frame quirk, keep of frame 1, would give 3/6); downsave = skipped = 2/6.
  const auto f = methods::gate_flops(g, 10.0, false);  // float masks: float precision
  EXPECT_NEAR(f.real.item<double>(), 10 - 4.0 / 6 * 1 - 2.0 / 6 * 3, 1e-6);
  EXPECT_NEAR(f.upper_bound.item<double>(), 10 - 2.0 / 6 * 3, 1e-6);
  const auto v = methods::gate_flops(g, 10.0, true);
  ASSERT_EQ(v.real.sizes(), torch::IntArrayRef({1}));
  EXPECT_NEAR(v.real[0].item<double>(), f.real.item<double>(), 1e-6);
}

TEST(AdaFuse, SkippingChannelsGivesTheMaskedDenseOutput) {
  torch::manual_seed(0);
  for (const std::string arch : {"resnet10", "resnet50"})
    for (bool tsm : {false, true}) {
      auto method = methods::make_method(tiny_adafuse(arch, tsm), 5);
      auto& fuse = dynamic_cast<methods::AdaFuseImpl&>(*method);
      method->eval();
      torch::NoGradGuard no_grad;
      // Hand-made masks on each block alone (2 clips of 3 frames).
      auto x = torch::randn({6, 4, 16, 16});
      for (const auto& b : fuse.blocks) {
        if (b.conv1->options.in_channels() != x.size(1)) break;  // the first stage only: its input is x
        const auto xs = tsm ? nn::temporal_shift(x, 3, 4) : x;
        const auto mask = mixed_masks(6, b.conv1->options.out_channels(), 3);
        const auto dense = methods::gated_block(b, x, xs, mask, 3, methods::Inference::Dense);
        for (const auto how : {methods::Inference::Frames, methods::Inference::Batch})
          EXPECT_TRUE(test::AllCloseRelative(methods::gated_block(b, x, xs, mask, 3, how), dense, 1e-5)) << arch << tsm;
        x = dense;
      }
      // The whole model with its own gates, made decisive and varied: argmax of random last-layer biases.
      fuse.argmax_at_test = true;
      for (auto& b : fuse.blocks) b.policy->gate_fc1->bias.normal_(0.0, 2.0);
      const methods::Clips clips{torch::randn({2, 3, 3, 32, 32}), {}};
      fuse.inference = methods::Inference::Dense;
      const auto dense = method->predict(clips);
      fuse.inference = methods::Inference::Batch;
      EXPECT_TRUE(test::AllCloseRelative(method->predict(clips).logits, dense.logits, 1e-5)) << arch << tsm;
      fuse.inference = methods::Inference::Frames;
      const auto sparse = method->predict(clips);
      EXPECT_TRUE(test::AllCloseRelative(sparse.logits, dense.logits, 1e-5)) << arch << tsm;
      EXPECT_TRUE(sparse.gflops.equal(dense.gflops));
      double fractions = 0;  // kept, reused and skipped, each used
      for (const char* action : {"kept", "reused", "skipped"}) {
        const double f = sparse.video_means.at(action).mean().item<double>();
        EXPECT_GT(f, 0.05) << arch << tsm << action;
        fractions += f;
      }
      EXPECT_NEAR(fractions, 1.0, 1e-6);
      // The FLOPs counter on both paths: what the frame-by-frame one leaves out is the formula's saving (plus bn1
      // and bn2, folded into the convolutions), to the multiply-accumulate.
      const int64_t counted_dense = nn::count_flops(*method, [&] {
                                      fuse.inference = methods::Inference::Dense;
                                      method->predict(clips);
                                    }).total;
      const int64_t counted_sparse = nn::count_flops(*method, [&] {
                                       fuse.inference = methods::Inference::Frames;
                                       method->predict(clips);
                                     }).total;
      const double base = fuse.base_gflops(32);
      double saved = 0, bn = 0;
      for (int64_t v = 0; v < 2; ++v) saved += (base * 3 - sparse.gflops[v].item<double>()) * 1e9;
      for (const auto& b : fuse.blocks)
        if (b.policy) bn += 6.0 * static_cast<double>(b.bn1->options.num_features() + b.bn2->options.num_features());
      EXPECT_NEAR(static_cast<double>(counted_dense - counted_sparse), saved + bn, 1e-6 * saved) << arch << tsm;
      EXPECT_GT(saved, 0.1 * base * 6e9);  // a real saving, not an empty comparison
    }
}

TEST(AdaFuse, TsmBlocksAreTheOfficialOnesDownsampleOfTheShiftedInput) {
  // A gated TSM block whose shortcut downsamples, against the official BateNet's equations written in PyTorch
  // (reference.py adafuse_block_reference): there the downsample reads the shifted input.
  for (const std::string kind : {"bottleneck", "basic"}) {
    const nn::StateDict state = io::read_state_dict(test::reference("adafuse_" + kind + "_block.pth"));
    const auto x = io::read_tensor(test::reference("adafuse_" + kind + "_x.pt"));        // (6, Ci, 12, 12)
    const auto mask = io::read_tensor(test::reference("adafuse_" + kind + "_mask.pt"));  // (6, G, 3)
    const auto expected = io::read_tensor(test::reference("adafuse_" + kind + "_out.pt"));
    const int64_t segments = 3, shift_div = 4;
    std::shared_ptr<torch::nn::Module> block;
    methods::GatedBlock b{};
    if (kind == "bottleneck") {
      auto k = std::make_shared<nn::BottleneckImpl>(16, 8, 2, segments, shift_div);
      b = {k->conv1.get(), k->conv2.get(), k->conv3.get(), k->bn1.get(), k->bn2.get(), k->bn3.get(),
           k->downsample.get(), &k->folded1, &k->folded2, &k->folded3, &k->folded_down, segments, shift_div, nullptr, {}};
      block = k;
    } else {
      auto k = std::make_shared<nn::BasicBlockImpl>(8, 8, 2, segments, shift_div);
      b = {k->conv1.get(), k->conv2.get(), nullptr, k->bn1.get(), k->bn2.get(), nullptr, k->downsample.get(),
           &k->folded1, &k->folded2, nullptr, &k->folded_down, segments, shift_div, nullptr, {}};
      block = k;
    }
    nn::load_state_dict(*block, state, kind);
    block->eval();
    torch::NoGradGuard no_grad;
    const auto xs = nn::temporal_shift(x, segments, shift_div);
    for (const auto how : {methods::Inference::Dense, methods::Inference::Frames, methods::Inference::Batch})
      EXPECT_TRUE(test::AllCloseRelative(methods::gated_block(b, x, xs, mask, segments, how), expected, 1e-5))
          << kind << " " << static_cast<int>(how);
  }
}

TEST(AdaFuse, OfficialLayoutWithSharedPolicies) {
  Config c = tiny_adafuse("resnet50", true);
  c.set("model.adafuse.hidden_quota=64");
  auto method = methods::make_method(c, 5);
  const nn::StateDict ours = nn::state_dict(*method);
  const nn::StateDict official = method->export_official_state_dict(ours);
  // ResNet-50 of width 4: layer1's first block reads 4 channels (key 2*4 _ 3*4), the others 16; hidden = 64 / 4.
  for (const char* key : {"base_model.gate_fc0s.8_12.weight", "base_model.gate_fc0s.32_12.weight",
                          "base_model.gate_fc1s.32_12.bias", "base_model.layer1.0.policy_net.gate_fc0.weight",
                          "base_model.layer1.2.policy_net.gate_fc1.bias", "base_model.layer1.0.policy_net.gate_bn.running_var",
                          "base_model.layer1.0.downsample0.weight", "base_model.layer4.0.downsample1.running_mean",
                          "new_fc.weight"})
    EXPECT_TRUE(official.contains(key)) << key;
  EXPECT_EQ(official["base_model.gate_fc0s.8_12.weight"].sizes(), torch::IntArrayRef({16, 8}));
  EXPECT_TRUE(official["base_model.layer1.1.policy_net.gate_fc0.weight"].equal(official["base_model.gate_fc0s.32_12.weight"]));
  EXPECT_FALSE(official.contains("base_model.fc.weight"));   // replaced by dropout in the official TSN
  EXPECT_FALSE(official.contains("base_model.layer1.0.downsample.0.weight"));
  // Back into a fresh model: every tensor as it was.
  torch::manual_seed(5);
  auto other = methods::make_method(c, 5);
  nn::load_state_dict(*other, other->import_state_dict(official), "official");
  for (const auto& item : nn::state_dict(*other))
    if (item.key().rfind("base_model.fc.", 0) != 0) {
      EXPECT_TRUE(item.value().equal(ours[item.key()])) << item.key();
    }
}

TEST(AdaFuse, PaperPresetsTrainWithTheOfficialGroupsAndClipping) {
  // ops/models_gate.py get_optim_policies with --npb, opts.py --clip-gradient 20: weights (new_fc's too) at the base
  // rate with decay, biases at 2x without, batch norm without decay; the gradient norm clipped at 20.
  Config c = Config::defaults();
  c.merge_file("sthv1_adafuse_tsm");
  c.set("model.backbone.base_width=8");
  EXPECT_EQ(c.get_float("train.clip_grad"), 20.0);
  auto method = methods::make_method(c, 5);
  std::map<std::string, std::pair<double, double>> rate_and_decay;
  size_t grouped = 0;
  for (const auto& g : method->param_groups())
    for (const auto& p : g.params) {
      rate_and_decay[p.first] = {g.lr_mult, g.decay_mult};
      ++grouped;
    }
  EXPECT_EQ(grouped, method->parameters().size());
  EXPECT_EQ(rate_and_decay.size(), grouped);  // each parameter in one group
  const std::vector<std::pair<std::string, std::pair<double, double>>> expected{
      {"new_fc.weight", {1, 1}},
      {"new_fc.bias", {2, 0}},
      {"base_model.conv1.weight", {1, 1}},
      {"base_model.bn1.weight", {1, 0}},
      {"base_model.layer1.0.bn2.bias", {1, 0}},
      {"base_model.layer2.0.downsample.0.weight", {1, 1}},
      {"base_model.layer2.0.downsample.1.weight", {1, 0}},
      {"base_model.layer1.0.policy_net.gate_bn.weight", {1, 0}},
      {"base_model.gate_fc0s.16_24.weight", {1, 1}},
      {"base_model.gate_fc1s.16_24.bias", {2, 0}}};
  for (const auto& [key, mults] : expected) {
    ASSERT_TRUE(rate_and_decay.count(key)) << key;
    EXPECT_EQ(rate_and_decay[key], mults) << key;
  }
}

TEST(AdaFuse, TrainingLowersTheFlopsTerm) {
  torch::manual_seed(1);
  Config c = tiny_adafuse("resnet10", true);
  auto method = methods::make_method(c, 4);
  auto& fuse = dynamic_cast<methods::AdaFuseImpl&>(*method);
  // A weight that makes the whole network's GFLOPs worth about as much as the cross-entropy.
  c.set("model.adafuse.flops_weight", std::to_string(2.0 / fuse.base_gflops(32)), "test");
  method = methods::make_method(c, 4);
  method->train();
  torch::optim::Adam optimizer(method->parameters(), torch::optim::AdamOptions(0.01));
  const methods::Clips clips{torch::randn({4, 3, 3, 32, 32}), {}};
  const auto target = torch::tensor({0, 1, 2, 3}, torch::kLong);
  std::vector<double> gflops, skipped;
  for (int step = 0; step < 40; ++step) {
    const methods::Losses l = method->loss(clips, target, {});
    for (const auto& [name, value] : l.statistics) {
      if (name == "gflops_upb") gflops.push_back(value.item<double>());
      if (name == "skipped") skipped.push_back(value.item<double>());
    }
    optimizer.zero_grad();
    l.total.backward();
    optimizer.step();
  }
  auto mean = [](const std::vector<double>& v, size_t from, size_t to) {
    double s = 0;
    for (size_t i = from; i < to; ++i) s += v[i];
    return s / static_cast<double>(to - from);
  };
  EXPECT_LT(mean(gflops, 30, 40), 0.9 * mean(gflops, 0, 10));
  EXPECT_GT(mean(skipped, 30, 40), mean(skipped, 0, 10) + 0.1);
}

}  // namespace
}  // namespace adafocus
