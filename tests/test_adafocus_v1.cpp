// AdaFocus V1: the official module layout, the lattice of patch corners, the hard crop, PPO's returns, what each
// training stage lets learn, and the staged training run.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "methods/adafocus_v1.h"
#include "methods/checkpoint.h"
#include "nn/state_dict.h"
#include "test_util.h"
#include "train/trainer.h"

namespace adafocus {
namespace {

std::shared_ptr<methods::AdaFocusV1Impl> tiny_v1(int64_t classes = 3) {
  return std::dynamic_pointer_cast<methods::AdaFocusV1Impl>(methods::make_method(test::tiny_adafocus("adafocus_v1"), classes));
}

TEST(AdaFocusV1, OfficialModuleNamesAndShapes) {
  // The official GFV model (MobileNetV2 glancer at 224, ResNet-50 focuser, PPO over 7x7 cells with a 32-channel
  // encoder and 1024 hidden units, GRU classifier of 1024), as the official code's state dict names and shapes them.
  Config c = Config::defaults();
  c.merge_file("activitynet_v1");
  const auto model = methods::make_method(c, 200);
  const nn::StateDict state = nn::state_dict(*model);
  const std::vector<std::pair<std::string, std::vector<int64_t>>> expected{
      {"glancer.net.features.0.0.weight", {32, 3, 3, 3}},
      {"glancer.net.classifier.1.weight", {200, 1280}},
      {"focuser.net.conv1.weight", {64, 3, 7, 7}},
      {"focuser.net.fc.weight", {200, 2048}},
      {"focuser.policy.policy.state_encoder.0.weight", {32, 1280, 1, 1}},
      {"focuser.policy.policy.state_encoder.3.weight", {1024, 1568}},
      {"focuser.policy.policy.gru.weight_ih_l0", {3072, 1024}},
      {"focuser.policy.policy.gru.weight_hh_l0", {3072, 1024}},
      {"focuser.policy.policy.actor.0.weight", {49, 1024}},
      {"focuser.policy.policy.critic.0.weight", {1, 1024}},
      {"classifier.gru.weight_ih_l0", {3072, 3328}},
      {"classifier.gru.weight_hh_l0", {3072, 1024}},
      {"classifier.fc.weight", {200, 1024}}};
  for (const auto& [key, shape] : expected) {
    ASSERT_TRUE(state.contains(key)) << key;
    EXPECT_EQ(state[key].sizes().vec(), shape) << key;
  }
  EXPECT_FALSE(state.contains("focuser.policy.policy.state_encoder.0.bias"));  // the 1x1 conv has no bias
  // An official checkpoint's policy_old (a copy of the policy) is dropped on import.
  nn::StateDict official = state;
  official.insert("focuser.policy.policy_old.actor.0.weight", state["focuser.policy.policy.actor.0.weight"]);
  EXPECT_FALSE(model->import_state_dict(official).contains("focuser.policy.policy_old.actor.0.weight"));
}

TEST(AdaFocusV1, LatticeCornersAreTheOfficialOnes) {
  // 7x7 cells, 224 px frames, 128 px patches: corners floor(i / 6 * 96) = 0, 16, 32, 48, 64, 80, 96.
  const auto c = methods::grid_corners(torch::tensor({0, 8, 13, 45, 48}, torch::kLong), 7, 224, 128);
  const auto expected = torch::tensor({0, 0, 16, 16, 16, 96, 96, 48, 96, 96}, torch::kLong).view({5, 2});
  EXPECT_TRUE(torch::equal(c, expected)) << c;
}

TEST(AdaFocusV1, HardCropIsSlicing) {
  torch::manual_seed(0);
  const auto frames = torch::randn({3, 3, 20, 20});
  const auto corners = torch::tensor({0, 0, 5, 11, 12, 3}, torch::kLong).view({3, 2});
  const auto patches = methods::hard_crop(frames, corners, 8);
  ASSERT_EQ(patches.sizes().vec(), (std::vector<int64_t>{3, 3, 8, 8}));
  for (int64_t n = 0; n < 3; ++n) {
    const int64_t y = corners[n][0].item<int64_t>(), x = corners[n][1].item<int64_t>();
    EXPECT_TRUE(torch::equal(patches[n], frames[n].slice(1, y, y + 8).slice(2, x, x + 8))) << n;
  }
}

TEST(AdaFocusV1, ReturnsAreDiscountedAndNormalised) {
  // Rewards of 3 frames, 2 videos, gamma 0.5. Video 0: 1, 0, 2 -> returns 1.5, 1, 2; video 1: 0, 4, 0 -> 2, 4, 0.
  const auto r = methods::normalised_returns(torch::tensor({1.0, 0.0, 0.0, 4.0, 2.0, 0.0}).view({3, 2}), 0.5);
  const std::vector<double> raw{1.5, 2, 1, 4, 2, 0};
  const double mean = 10.5 / 6;
  double var = 0;
  for (double v : raw) var += (v - mean) * (v - mean);
  const double std = std::sqrt(var / 5);  // unbiased, as torch.std
  for (size_t i = 0; i < raw.size(); ++i)
    EXPECT_NEAR(r.view({-1})[static_cast<int64_t>(i)].item<double>(), (raw[i] - mean) / (std + 1e-5), 1e-5) << i;
}

// Which parameter groups get a gradient from one stage's loss.
std::map<std::string, bool> learning_groups(methods::AdaFocusV1Impl& m, int64_t stage) {
  m.train();
  m.zero_grad(/*set_to_none=*/true);
  methods::StepContext context;
  context.stage = stage;
  const auto l = m.loss({torch::randn({2, 4, 3, 64, 64}), {}}, torch::tensor({0, 2}, torch::kLong), context);
  l.total.backward();
  std::map<std::string, bool> out;
  for (const auto& g : m.param_groups()) {
    bool any = false;
    for (const auto& [name, p] : g.params)
      if (p.grad().defined() && p.grad().abs().sum().item<double>() > 0) any = true;
    out[g.name] = any;
  }
  return out;
}

TEST(AdaFocusV1, EachStageTrainsWhatTheOfficialStageTrains) {
  torch::manual_seed(1);
  auto m = tiny_v1();
  using Groups = std::map<std::string, bool>;
  EXPECT_EQ(learning_groups(*m, 0), (Groups{{"glance", true}, {"local", true}, {"policy", false}, {"classifier", false}}));
  EXPECT_EQ(learning_groups(*m, 1), (Groups{{"glance", false}, {"local", true}, {"policy", false}, {"classifier", true}}));
  EXPECT_EQ(learning_groups(*m, 2), (Groups{{"glance", false}, {"local", false}, {"policy", true}, {"classifier", false}}));
  EXPECT_EQ(learning_groups(*m, 3), (Groups{{"glance", false}, {"local", false}, {"policy", false}, {"classifier", true}}));
  // Stage 2 reports PPO's statistics and where the sampled patches went; with one update per batch the ratio is 1.
  methods::StepContext ppo;
  ppo.stage = 2;
  const auto l = m->loss({torch::randn({2, 4, 3, 64, 64}), {}}, torch::tensor({0, 2}, torch::kLong), ppo);
  std::map<std::string, double> terms;
  for (const auto& [name, value] : l.terms) terms[name] = value.item<double>();
  for (const char* key : {"ppo_reward", "ppo_advantage", "ppo_entropy", "ppo_clip_fraction", "ppo_value_loss"})
    EXPECT_TRUE(terms.count(key)) << key;
  EXPECT_EQ(terms["ppo_clip_fraction"], 0.0);
  EXPECT_GT(terms["ppo_entropy"], 0.0);
  EXPECT_LE(terms["ppo_entropy"], std::log(49.0) + 1e-6);
  EXPECT_LE(std::abs(terms["ppo_reward"]), 1.0);
  ASSERT_EQ(l.regions.sizes().vec(), (std::vector<int64_t>{2, 4, 4}));
  EXPECT_TRUE(torch::all(l.regions.select(2, 2) == 24).item<bool>());
}

TEST(AdaFocusV1, PredictsAfterEveryFrameWithPatchesOnTheLattice) {
  torch::manual_seed(2);
  auto m = tiny_v1();
  m->eval();
  torch::NoGradGuard no_grad;
  const auto p = m->predict({torch::randn({2, 4, 3, 64, 64}), {}});
  ASSERT_EQ(p.logits.sizes().vec(), (std::vector<int64_t>{2, 4, 3}));
  ASSERT_EQ(p.regions.sizes().vec(), (std::vector<int64_t>{2, 4, 4}));
  // 7 corners from 0 to 40 (= 64 - 24): floor(i / 6 * 40).
  const auto on_lattice = [](double v) {
    for (int i = 0; i < 7; ++i)
      if (v == std::floor(i / 6.0 * 40)) return true;
    return false;
  };
  for (int64_t k = 0; k < p.regions.numel() / 4; ++k) {
    const auto box = p.regions.view({-1, 4})[k];
    EXPECT_TRUE(on_lattice(box[0].item<double>()) && on_lattice(box[1].item<double>())) << box;
  }
}

struct StagedRun {
  test::TempDir dir;
  Config config = test::tiny_adafocus("adafocus_v1");
  StagedRun() {
    test::make_tiny_benchmark(dir.path("data"));
    for (const std::string& kv : std::vector<std::string>{
             "data.test_resize=64", "data.scales=[1.0]", "data.batch_size=4", "data.workers=0", "train.epochs=1",
             "train.eval_every=0", "train.eval_last=0", "train.optimizer=adam", "train.metric=top1",
             "train.stage2=[train.epochs=2, train.lr=0.0003]", "data.root=" + dir.path("data")})
      config.set(kv);
  }
  train::TrainOptions options(const std::string& run) const {
    train::TrainOptions o;
    o.run_dir = dir.path(run);
    o.quiet = true;
    return o;
  }
  std::vector<nlohmann::json> metrics(const std::string& run) const {
    std::ifstream in(dir.path(run + "/metrics.jsonl"));
    std::vector<nlohmann::json> lines;
    for (std::string l; std::getline(in, l);) lines.push_back(nlohmann::json::parse(l));
    return lines;
  }
};

TEST(AdaFocusV1, TrainsEveryStageInTurnAndEachFromThePrevious) {
  StagedRun run;
  train::train(run.config, run.options("run"));
  for (int s = 0; s < 4; ++s) {
    const auto c = methods::load_checkpoint(run.dir.path("run/stage" + std::to_string(s) + "/last.pt"));
    Config its = Config::defaults();
    its.merge_yaml(c.config_yaml, "stage");
    EXPECT_EQ(its.get_int("stage"), s);
    EXPECT_EQ(c.epoch, s == 2 ? 2 : 1) << s;  // stage 2's own override
  }
  // PPO's statistics are logged in stage 2 only; every epoch logs its wall time.
  const auto ppo = run.metrics("run/stage2");
  ASSERT_EQ(ppo.size(), 2u);
  for (const char* key : {"ppo_reward", "ppo_advantage", "ppo_entropy", "ppo_clip_fraction", "ppo_value_loss",
                          "policy_spread", "epoch_s"})
    EXPECT_TRUE(ppo[0].contains(key)) << key;
  EXPECT_FALSE(run.metrics("run/stage1")[0].contains("ppo_reward"));
  // Stage 3 started from stage 2's policy: the policy is the same, the classifier moved.
  const auto s2 = methods::load_checkpoint(run.dir.path("run/stage2/last.pt")).model;
  const auto s3 = methods::load_checkpoint(run.dir.path("run/stage3/last.pt")).model;
  EXPECT_TRUE(torch::equal(s2["focuser.policy.policy.actor.0.weight"], s3["focuser.policy.policy.actor.0.weight"]));
  EXPECT_FALSE(torch::equal(s2["classifier.fc.weight"], s3["classifier.fc.weight"]));
  // Run again: every stage is finished, nothing changes.
  const auto before = std::filesystem::last_write_time(run.dir.path("run/stage3/last.pt"));
  auto again = run.options("run");
  again.resume = true;
  train::train(run.config, again);
  EXPECT_EQ(std::filesystem::last_write_time(run.dir.path("run/stage3/last.pt")), before);
}

TEST(AdaFocusV1, OneStageNeedsThePreviousStagesCheckpoint) {
  StagedRun run;
  Config stage1 = run.config;
  stage1.set("stage=1");
  std::string e = test::error_of([&] { train::train(stage1, run.options("one")); });
  EXPECT_NE(e.find("stage 1 starts from the model of stage 0"), std::string::npos) << e;
  EXPECT_NE(e.find("--init RUN/stage0/last.pt"), std::string::npos) << e;
  Config stage0 = run.config;
  stage0.set("stage=0");
  train::train(stage0, run.options("zero"));
  Config stage2 = run.config;
  stage2.set("stage=2");
  auto o = run.options("two");
  o.init = run.dir.path("zero/last.pt");
  e = test::error_of([&] { train::train(stage2, o); });
  EXPECT_NE(e.find("a checkpoint of stage 0: stage 2 starts from stage 1's"), std::string::npos) << e;
  o.init = run.dir.path("missing.pt");
  e = test::error_of([&] { train::train(stage2, o); });
  EXPECT_NE(e.find("no such checkpoint"), std::string::npos) << e;
  auto ok = run.options("one");
  ok.init = run.dir.path("zero/last.pt");
  train::train(stage1, ok);
  EXPECT_TRUE(std::filesystem::exists(run.dir.path("one/last.pt")));
  // A stage's overrides are checked before anything trains.
  Config bad = run.config;
  bad.set("train.stage3=[train.nope=1]");
  e = test::error_of([&] { train::train(bad, run.options("bad")); });
  EXPECT_NE(e.find("train.nope"), std::string::npos) << e;
  EXPECT_FALSE(std::filesystem::exists(run.dir.path("bad/stage0")));
  // Methods trained in one stage have no stages.
  Config v2 = test::tiny_adafocus("adafocus_v2");
  v2.set("stage=1");
  e = test::error_of([&] { train::train(v2, run.options("v2")); });
  EXPECT_NE(e.find("trains in one stage"), std::string::npos) << e;
}

}  // namespace
}  // namespace adafocus
