// AdaFocus V1: the official module layout, the lattice of patch corners, the hard crop, PPO's returns, what each
// training stage lets learn, and the staged training run.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>

#include "methods/adafocus_v1.h"
#include "methods/adafocus_v1_tsm.h"
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

TEST(AdaFocusV1, PpoObjectiveOnAHandComputedExample) {
  // Ratios 1.5, 0.5, 1.1 (clip 0.2) with advantages 2, -1, -3: surrogates min(3, 2.4) = 2.4, min(-0.5, -0.8) = -0.8,
  // min(-3.3, -3.3) = -3.3, mean -17/30; values 0, 1, 2 against returns 1, 1, 0: MSE 5/3; entropies mean 2.
  // loss = 17/30 + 0.5 * 5/3 - 0.01 * 2 = 1.38; two ratios of three outside [0.8, 1.2].
  const auto log_prob = torch::log(torch::tensor({1.5, 0.5, 1.1}, torch::kDouble)).requires_grad_(true);
  const auto o = methods::ppo_objective(log_prob, torch::zeros({3}, torch::kDouble), torch::tensor({2.0, -1.0, -3.0}, torch::kDouble),
                                        torch::tensor({0.0, 1.0, 2.0}, torch::kDouble), torch::tensor({1.0, 1.0, 0.0}, torch::kDouble),
                                        torch::tensor({1.0, 2.0, 3.0}, torch::kDouble), 0.2, 0.5, 0.01);
  EXPECT_NEAR(o.loss.item<double>(), 1.38, 1e-12);
  EXPECT_NEAR(o.value_loss.item<double>(), 5.0 / 3, 1e-12);
  EXPECT_NEAR(o.clip_fraction.item<double>(), 2.0 / 3, 1e-6);
  // Clipped terms pass no gradient; the third: d(-r A / 3) / d log r = -r A / 3 = 1.1.
  o.loss.backward();
  EXPECT_TRUE(torch::allclose(log_prob.grad(), torch::tensor({0.0, 0.0, 1.1}, torch::kDouble), 1e-12, 1e-12)) << log_prob.grad();
}

// Which parameter groups get a gradient from one stage's loss.
std::map<std::string, bool> learning_groups(methods::MethodImpl& m, int64_t stage,
                                            const methods::Clips& clips = {torch::randn({2, 4, 3, 64, 64}), {}}) {
  m.train();
  m.zero_grad(/*set_to_none=*/true);
  methods::StepContext context;
  context.stage = stage;
  const auto l = m.loss(clips, torch::tensor({0, 2}, torch::kLong), context);
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
  for (const auto& [name, value] : l.statistics) terms[name] = value.item<double>();
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

// A later stage changed what it trains (names under `trained`) and nothing else, batch-norm statistics included.
void expect_only_changed(const nn::StateDict& before, const nn::StateDict& after, const std::string& trained) {
  bool moved = false;
  for (const auto& item : before) {
    const bool same = torch::equal(item.value(), after[item.key()]);
    if (item.key().rfind(trained, 0) == 0)
      moved = moved || !same;
    else
      EXPECT_TRUE(same) << item.key() << " changed outside " << trained;
  }
  EXPECT_TRUE(moved) << trained << " did not change";
}

// Stage-by-stage checkpoints of a run: stage 1 leaves the glancer, stage 2 all but the policy, stage 3 all but the
// classifier as the stage before left them.
void expect_stage_hand_over(const std::string& run) {
  std::vector<nn::StateDict> s;
  for (int i = 0; i < 4; ++i) s.push_back(methods::load_checkpoint(run + "/stage" + std::to_string(i) + "/last.pt").model);
  for (const auto& item : s[0]) {
    if (item.key().rfind("glancer.", 0) != 0) continue;
    EXPECT_TRUE(torch::equal(item.value(), s[1][item.key()])) << item.key();
  }
  expect_only_changed(s[1], s[2], "focuser.policy.");
  expect_only_changed(s[2], s[3], "classifier.");
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
  // Each stage started from the previous one's model and changed only what it trains.
  expect_stage_hand_over(run.dir.path("run"));
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

// Videos whose label is the texture of a square in the top-left corner of every frame (1-pixel horizontal stripes:
// 0, vertical: 1) on a flat frame. The glance, the frame averaged down 4x, sees the same flat frame in both; only a
// patch on the square tells them apart. Stage 1 (random patches) teaches the classifier the textures; stage 2's PPO
// then has a reward to find: patches on the square make the label likelier than random ones. Returns the mean
// reward of the first and of the last `window` PPO steps.
std::pair<double, double> ppo_reward_first_and_last(methods::MethodImpl& m, bool focus_clip, int64_t window) {
  auto frames = torch::zeros({8, 4, 3, 64, 64});
  const auto target = torch::tensor({0, 1, 0, 1, 0, 1, 0, 1}, torch::kLong);
  const auto stripes = (torch::arange(24) % 2 * 4 - 2).to(torch::kFloat);  // -2, 2, -2, ...
  for (int64_t b = 0; b < 8; ++b)
    frames[b].slice(2, 0, 24).slice(3, 0, 24).copy_(b % 2 == 0 ? stripes.view({24, 1}).expand({24, 24}) : stripes.view({1, 24}).expand({24, 24}));
  const methods::Clips clips{frames, focus_clip ? frames.repeat({1, 2, 1, 1, 1}).narrow(1, 0, 6) : torch::Tensor()};
  methods::StepContext context;
  auto run = [&](int64_t stage, const std::string& group, double lr, int64_t steps) {
    std::vector<torch::Tensor> params;
    for (const auto& g : m.param_groups())
      if (g.name == group || (stage == 1 && g.name == "local"))
        for (const auto& p : g.params) params.push_back(p.second);
    torch::optim::Adam opt(params, lr);
    context.stage = stage;
    std::vector<double> rewards;
    for (int64_t i = 0; i < steps; ++i) {
      m.train();
      const auto l = m.loss(clips, target, context);
      for (const auto& [name, value] : l.statistics)
        if (name == "ppo_reward") rewards.push_back(value.item<double>());
      opt.zero_grad();
      l.total.backward();
      opt.step();
    }
    return rewards;
  };
  run(1, "classifier", 1e-2, 60);
  const auto r = run(2, "policy", 1e-2, 3 * window);
  const auto mean = [&](size_t from) { return std::accumulate(r.begin() + from, r.begin() + from + window, 0.0) / window; };
  return {mean(0), mean(r.size() - window)};
}

TEST(AdaFocusV1, PpoRaisesTheMeanReward) {
  torch::manual_seed(6);
  const auto [first, last] = ppo_reward_first_and_last(*tiny_v1(2), false, 20);
  EXPECT_GT(last, first + 0.03) << first << " -> " << last;
}

// AdaFocus V1-TSM (Something-Something): one Gaussian-policy patch per video in every focus frame.

Config tiny_v1_tsm_config() {
  Config c = test::tiny_adafocus("adafocus_v1_tsm");
  c.set("data.focus_segments=6");
  c.set("model.policy_hidden=16");
  return c;
}

std::shared_ptr<methods::AdaFocusV1TSMImpl> tiny_v1_tsm() {
  return std::dynamic_pointer_cast<methods::AdaFocusV1TSMImpl>(methods::make_method(tiny_v1_tsm_config(), 3));
}

methods::Clips tsm_clips() { return {torch::randn({2, 4, 3, 64, 64}), torch::randn({2, 6, 3, 64, 64})}; }

TEST(AdaFocusV1TSM, OfficialModuleNamesAndShapes) {
  // The official V1s GFV model (TSM MobileNetV2 glancer on 8 frames at 224, TSN over TSM ResNet-50 focuser, the
  // continuous PPO with BN over the 8 glance maps stacked: 10240 channels, 64 x 7 x 7 = 3136 -> 1024, classifier
  // 2048 -> 174) as its state dict names and shapes them.
  Config c = Config::defaults();
  c.merge_file("sthv1_v1_tsm");
  const auto model = methods::make_method(c, 174);
  const nn::StateDict state = nn::state_dict(*model);
  const std::vector<std::pair<std::string, std::vector<int64_t>>> expected{
      {"glancer.net.features.0.0.weight", {32, 3, 3, 3}},
      {"glancer.net.classifier.1.weight", {174, 1280}},
      {"focuser.net.base_model.conv1.weight", {64, 3, 7, 7}},
      {"focuser.net.new_fc.weight", {174, 2048}},
      {"focuser.policy.policy.state_encoder.0.weight", {64, 10240, 1, 1}},
      {"focuser.policy.policy.state_encoder.1.running_mean", {64}},
      {"focuser.policy.policy.state_encoder.4.weight", {1024, 3136}},
      {"focuser.policy.policy.state_encoder.5.running_var", {1024}},
      {"focuser.policy.policy.gru.weight_ih_l0", {3072, 1024}},
      {"focuser.policy.policy.actor.0.weight", {2, 1024}},
      {"focuser.policy.policy.critic.0.weight", {1, 1024}},
      {"classifier.weight", {174, 2048}}};
  for (const auto& [key, shape] : expected) {
    ASSERT_TRUE(state.contains(key)) << key;
    EXPECT_EQ(state[key].sizes().vec(), shape) << key;
  }
  // The official focuser is a Sequential of the ResNet's children (0 conv1, 1 bn1, 4-7 layer1-4) with TSM's
  // ".net." inside every block's conv1, and the PPO's policy_old: both come back to our names.
  nn::StateDict official;
  const std::map<std::string, std::string> index{{"conv1", "0"}, {"bn1", "1"}, {"layer1", "4"},
                                                 {"layer2", "5"}, {"layer3", "6"}, {"layer4", "7"}};
  const std::string base = "focuser.net.base_model.";
  for (const auto& item : state) {
    std::string key = item.key();
    if (key.rfind(base + "fc.", 0) == 0) continue;  // the official focuser has no fc
    if (key.rfind(base, 0) == 0) {
      std::string rest = key.substr(base.size());
      const std::string child = rest.substr(0, rest.find('.'));
      rest = index.at(child) + rest.substr(child.size());
      if (child.rfind("layer", 0) == 0 && rest.find(".conv1.") != std::string::npos)
        rest.replace(rest.find(".conv1.") + 6, 1, ".net.");
      key = base + rest;
    }
    official.insert(key, item.value());
  }
  ASSERT_TRUE(official.contains(base + "4.0.conv1.net.weight"));
  official.insert("focuser.policy.policy_old.actor.0.weight", state["focuser.policy.policy.actor.0.weight"]);
  const nn::StateDict imported = model->import_state_dict(official);
  EXPECT_EQ(imported.size(), state.size());
  for (const auto& item : state) {
    ASSERT_TRUE(imported.contains(item.key())) << item.key();
    EXPECT_TRUE(torch::equal(imported[item.key()], item.value())) << item.key();
  }
}

TEST(AdaFocusV1TSM, PredictsGlancePlusFocusLogitsOfOnePatchPerVideo) {
  torch::manual_seed(4);
  auto m = tiny_v1_tsm();
  m->eval();
  torch::NoGradGuard no_grad;
  const auto clips = tsm_clips();
  const auto p = m->predict(clips);
  ASSERT_EQ(p.logits.sizes().vec(), (std::vector<int64_t>{2, 1, 3}));
  ASSERT_EQ(p.regions.sizes().vec(), (std::vector<int64_t>{2, 1, 4}));
  ASSERT_EQ(p.region_frames.sizes().vec(), (std::vector<int64_t>{2, 1, 6}));
  // By hand: the policy's mean corner, floor(a (64 - 24)) as official, the same P x P slice of every focus frame.
  const auto frames = clips.frames.reshape({8, 3, 64, 64});
  const auto map = m->glancer->feature_map(methods::resize_frames(frames, 16, "area"));  // (8, Cg, 2, 2)
  const auto glance = m->glancer->classify(m->glancer->pool(map)).view({2, 4, 3}).mean(1);
  const auto mean = m->policy->actor->forward(m->policy->forward(map.reshape({2, -1, map.size(2), map.size(3)})));
  for (int64_t b = 0; b < 2; ++b) {
    const int64_t y = static_cast<int64_t>(std::floor(mean[b][0].item<double>() * 40));
    const int64_t x = static_cast<int64_t>(std::floor(mean[b][1].item<double>() * 40));
    EXPECT_EQ(p.regions[b][0][0].item<int64_t>(), x);
    EXPECT_EQ(p.regions[b][0][1].item<int64_t>(), y);
    const auto patches = clips.focus[b].slice(2, y, y + 24).slice(3, x, x + 24);  // (6, 3, 24, 24)
    const auto focus = m->classifier->forward(m->focuser->features(patches)).mean(0);
    EXPECT_TRUE(torch::allclose(p.logits[b][0], glance[b] + focus, 1e-4, 1e-5)) << p.logits[b] << glance[b] + focus;
  }
}

TEST(AdaFocusV1TSM, EachStageTrainsWhatTheOfficialStageTrains) {
  torch::manual_seed(5);
  auto m = tiny_v1_tsm();
  using Groups = std::map<std::string, bool>;
  const auto clips = tsm_clips();
  EXPECT_EQ(learning_groups(*m, 0, clips), (Groups{{"glance", true}, {"local", true}, {"policy", false}, {"classifier", true}}));
  EXPECT_EQ(learning_groups(*m, 1, clips), (Groups{{"glance", false}, {"local", true}, {"policy", false}, {"classifier", true}}));
  EXPECT_EQ(learning_groups(*m, 2, clips), (Groups{{"glance", false}, {"local", false}, {"policy", true}, {"classifier", false}}));
  EXPECT_EQ(learning_groups(*m, 3, clips), (Groups{{"glance", false}, {"local", false}, {"policy", false}, {"classifier", true}}));
  // Stage 2: PPO's statistics; the entropy is the 2-d Gaussian's with std 0.25: 1 + ln(2 pi) + 2 ln(0.25).
  methods::StepContext ppo;
  ppo.stage = 2;
  const auto l = m->loss(clips, torch::tensor({0, 2}, torch::kLong), ppo);
  std::map<std::string, double> terms;
  for (const auto& [name, value] : l.statistics) terms[name] = value.item<double>();
  EXPECT_NEAR(terms["ppo_entropy"], 1 + std::log(2 * M_PI) + 2 * std::log(0.25), 1e-6);  // float
  EXPECT_EQ(terms["ppo_clip_fraction"], 0.0);
  EXPECT_LE(std::abs(terms["ppo_reward"]), 1.0);
  ASSERT_EQ(l.regions.sizes().vec(), (std::vector<int64_t>{2, 1, 4}));
  EXPECT_TRUE(torch::all((l.regions.narrow(2, 0, 2) >= 0) & (l.regions.narrow(2, 0, 2) <= 40)).item<bool>());
}

TEST(AdaFocusV1TSM, PpoRaisesTheMeanReward) {
  torch::manual_seed(6);
  auto m = std::dynamic_pointer_cast<methods::AdaFocusV1TSMImpl>(methods::make_method(tiny_v1_tsm_config(), 2));
  const auto [first, last] = ppo_reward_first_and_last(*m, true, 20);
  EXPECT_GT(last, first + 0.03) << first << " -> " << last;
}

TEST(AdaFocusV1TSM, TrainsEveryStageInTurn) {
  StagedRun run;
  run.config = tiny_v1_tsm_config();
  for (const std::string& kv : std::vector<std::string>{
           "data.test_resize=64", "data.scales=[1.0]", "data.batch_size=4", "data.workers=0", "train.epochs=1",
           "train.eval_every=0", "train.eval_last=0", "train.optimizer=adam", "train.metric=top1",
           "data.root=" + run.dir.path("data")})
    run.config.set(kv);
  train::train(run.config, run.options("all"));
  for (int s = 0; s < 4; ++s) {
    const auto lines = run.metrics("all/stage" + std::to_string(s));
    ASSERT_EQ(lines.size(), 1u) << s;
    EXPECT_EQ(lines[0].contains("ppo_reward"), s == 2) << lines[0];
  }
  expect_stage_hand_over(run.dir.path("all"));
}

}  // namespace
}  // namespace adafocus
