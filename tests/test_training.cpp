// Training: optimizers, schedules and metrics against PyTorch and the official formulas; the trainer on a tiny
// generated dataset (metrics, checkpoints, NaN handling).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/files.h"
#include "infer/metrics.h"
#include "methods/checkpoint.h"
#include "train/optimizer.h"
#include "train/pretrain.h"
#include "train/trainer.h"
#include "test_util.h"

namespace adafocus {
namespace {

nlohmann::json training_reference() {
  std::ifstream in(test::reference("training_reference.json"));
  return nlohmann::json::parse(in);
}

torch::Tensor from_json(const nlohmann::json& values) {
  return torch::tensor(values.get<std::vector<double>>(), torch::kDouble);
}

// Three steps of our optimizer on one parameter, with the reference's gradients; PyTorch's result in the reference.
void expect_like_pytorch(const std::string& kind, double lr) {
  const auto ref = training_reference();
  auto p = from_json(ref["start"]).set_requires_grad(true);
  train::OptimizerOptions o;
  o.kind = kind;
  o.weight_decay = 1e-4;
  // The group multiplier must scale the rate: base lr / 2 with a multiplier of 2 is PyTorch's lr.
  train::Optimizer opt({methods::ParamGroup{"g", {{"p", p}}, 2.0}}, o);
  for (const auto& g : ref["grads"]) {
    p.mutable_grad() = from_json(g);
    opt.step(lr / 2);
  }
  EXPECT_TRUE(test::AllCloseRelative(p.detach(), from_json(ref[kind]), 1e-9)) << kind;
}

TEST(Optimizer, SgdWithMomentumAndWeightDecayIsPyTorchs) { expect_like_pytorch("sgd", 0.1); }
TEST(Optimizer, AdamIsPyTorchs) { expect_like_pytorch("adam", 0.01); }

TEST(Optimizer, GroupsScaleTheWeightDecay) {
  // One SGD step (no momentum) on p = 1 with gradient 0: decay 0.1 x multiplier moves it by lr x that.
  auto p = torch::ones({1}, torch::kDouble).set_requires_grad(true), q = p.detach().clone().set_requires_grad(true);
  train::OptimizerOptions o;
  o.kind = "sgd";
  o.momentum = 0;
  o.weight_decay = 0.1;
  train::Optimizer opt({methods::ParamGroup{"decayed", {{"p", p}}, 1.0, 1.0}, methods::ParamGroup{"not", {{"q", q}}, 2.0, 0.0}},
                       o);
  p.mutable_grad() = torch::zeros({1}, torch::kDouble);
  q.mutable_grad() = torch::ones({1}, torch::kDouble);
  opt.step(0.5);
  EXPECT_DOUBLE_EQ(p.item<double>(), 1 - 0.5 * 0.1);
  EXPECT_DOUBLE_EQ(q.item<double>(), 1 - 2 * 0.5 * 1);  // its rate doubled, no decay
}

TEST(Optimizer, StateRoundTripsAndRejectsAnotherModel) {
  auto p = torch::ones({3}, torch::kDouble).set_requires_grad(true);
  train::OptimizerOptions o;
  o.kind = "adam";
  train::Optimizer a({methods::ParamGroup{"g", {{"w", p}}, 1.0}}, o);
  p.mutable_grad() = torch::ones({3}, torch::kDouble);
  a.step(0.1);
  const auto state = a.state();
  EXPECT_TRUE(state.contains("w.exp_avg") && state.contains("w.exp_avg_sq") && state.contains("w.step"));
  train::Optimizer b({methods::ParamGroup{"g", {{"w", p}}, 1.0}}, o);
  b.load_state(state);
  EXPECT_TRUE(b.state()["w.exp_avg"].equal(state["w.exp_avg"]));
  train::Optimizer c({methods::ParamGroup{"g", {{"v", p}}, 1.0}}, o);
  EXPECT_NE(test::error_of([&] { c.load_state(state); }).find("unknown parameter 'w'"), std::string::npos);
}

TEST(Optimizer, ClippingBoundsTheGlobalNorm) {
  auto a = torch::zeros({2}).set_requires_grad(true), b = torch::zeros({1}).set_requires_grad(true);
  train::Optimizer opt({methods::ParamGroup{"g", {{"a", a}, {"b", b}}, 1.0}}, {});
  a.mutable_grad() = torch::tensor({3.0f, 0.0f});
  b.mutable_grad() = torch::tensor({4.0f});
  EXPECT_NEAR(opt.clip_grad_norm(1.0), 5.0, 1e-6);
  EXPECT_NEAR(std::hypot(a.grad()[0].item<double>(), b.grad()[0].item<double>()), 1.0, 1e-5);
  EXPECT_NEAR(opt.clip_grad_norm(10.0), 1.0, 1e-5);  // under the bound: unchanged
}

TEST(Schedule, OneCycleIsPyTorchsOneCycleLR) {
  const auto r = training_reference()["onecycle"];
  const auto lrs = r["lrs"].get<std::vector<double>>();
  const int64_t epochs = r["epochs"], steps = r["steps"];
  for (int64_t e = 0; e < epochs; ++e)
    for (int64_t s = 0; s < steps; ++s)
      EXPECT_NEAR(train::learning_rate("onecycle", r["lr"], e, s, steps, epochs, r["warmup"]),
                  lrs[static_cast<size_t>(e * steps + s)], 1e-12)
          << e << "," << s;
}

TEST(Schedule, CosineIsTheOfficialPerEpochSchedule) {
  const auto r = training_reference()["cosine"];
  const auto lrs = r["lrs"].get<std::vector<double>>();
  for (size_t e = 0; e < lrs.size(); ++e)
    for (int64_t s : {0, 7})  // constant within an epoch
      EXPECT_NEAR(train::learning_rate("cosine", r["lr"], static_cast<int64_t>(e), s, 10, r["epochs"], 0), lrs[e],
                  1e-12);
  // step (official TSM / AdaFuse: 0.1 ** sum(epoch >= lr_steps))
  for (const auto& [epoch, lr] : std::vector<std::pair<int64_t, double>>{{0, 0.02}, {19, 0.02}, {20, 0.002}, {45, 0.0002}})
    EXPECT_NEAR(train::learning_rate("step", 0.02, epoch, 3, 10, 50, 0, {20, 40}), lr, 1e-15) << epoch;
  EXPECT_NE(test::error_of([] { train::learning_rate("linear", 0.1, 0, 0, 1, 1, 0); }).find("cosine, onecycle"),
            std::string::npos);
}

TEST(Metrics, MapTopKAreTheOfficialOnes) {
  const auto r = training_reference()["metrics"];
  const auto logits_rows = r["logits"].get<std::vector<std::vector<double>>>();
  const auto label_rows = r["labels"].get<std::vector<std::vector<int64_t>>>();
  std::vector<torch::Tensor> logits, labels;
  for (const auto& row : logits_rows) logits.push_back(torch::tensor(row, torch::kFloat));
  for (const auto& row : label_rows) labels.push_back(torch::tensor(row, torch::kLong));
  const auto s = infer::classification_scores(torch::stack(logits), torch::stack(labels));
  EXPECT_NEAR(s.map, r["map"].get<double>(), 1e-4);
  EXPECT_NEAR(s.top1, r["top1"].get<double>(), 1e-4);
  EXPECT_NEAR(s.top5, r["top5"].get<double>(), 1e-4);
}

TEST(Metrics, MeanClassAccuracyAndIou) {
  // Class 0: 2 of 2 right, class 1: 0 of 1 right -> top-1 66.7, mean class 50.
  const auto logits = torch::tensor({{2.0f, 1.0f}, {3.0f, 0.0f}, {5.0f, 1.0f}});
  const auto labels = torch::tensor({{0}, {0}, {1}}, torch::kLong);
  const auto s = infer::classification_scores(logits, labels);
  EXPECT_NEAR(s.top1, 200.0 / 3, 1e-9);
  EXPECT_NEAR(s.mean_class, 50.0, 1e-9);
  EXPECT_NEAR(infer::box_iou({0, 0, 10, 10}, {5, 0, 10, 10}), 50.0 / 150.0, 1e-12);
  EXPECT_EQ(infer::box_iou({0, 0, 10, 10}, {20, 20, 5, 5}), 0.0);
}

// A tiny AdaFocusV2 on a tiny generated dataset.
struct TinyRun {
  test::TempDir dir;
  Config config = Config::defaults();
  TinyRun() {
    test::make_tiny_benchmark(dir.path("data"));
    for (const std::string& kv : std::vector<std::string>{"model.method=adafocus_v2", "model.glance.arch=resnet10", "model.glance.base_width=4",
          "model.glance.stem=small", "model.glance.resolution=16", "model.local.arch=resnet10",
          "model.local.base_width=4", "model.local.stem=small_s2", "model.patch_size=24", "model.policy_channels=8",
          "model.policy_hidden=16", "model.classifier_hidden=32", "model.resize=area", "data.segments=4",
          "data.input_size=64", "data.test_resize=64", "data.scales=[1.0]", "data.batch_size=2", "data.workers=0",
          "train.epochs=2", "train.eval_every=1", "train.optimizer=adam", "train.metric=top1",
          "data.root=" + dir.path("data")})
      config.set(kv);
  }
  /// The run's metrics.jsonl, a line per epoch.
  std::vector<nlohmann::json> metrics() const {
    std::ifstream in(dir.path("run/metrics.jsonl"));
    std::vector<nlohmann::json> lines;
    for (std::string l; std::getline(in, l);) lines.push_back(nlohmann::json::parse(l));
    return lines;
  }
  train::TrainOptions options() const {
    train::TrainOptions o;
    o.run_dir = dir.path("run");
    o.quiet = true;
    return o;
  }
};

TEST(Trainer, WritesMetricsConfigAndCheckpoints) {
  TinyRun run;
  const auto summary = train::train(run.config, run.options());
  EXPECT_EQ(summary.epochs, 2);
  EXPECT_EQ(summary.last.videos, 4);
  EXPECT_TRUE(summary.failures.empty());
  const std::vector<nlohmann::json> lines = run.metrics();
  ASSERT_EQ(lines.size(), 2u);
  for (size_t i = 0; i < lines.size(); ++i) {
    EXPECT_EQ(lines[i]["epoch"], static_cast<int>(i));
    for (const char* key : {"lr", "train_loss", "train_top1", "val_top1", "val_top5", "val_map", "gflops", "val_iou"})
      EXPECT_TRUE(lines[i].contains(key)) << key;
    EXPECT_TRUE(std::isfinite(lines[i]["train_loss"].get<double>()));
  }
  const auto last = methods::load_checkpoint(run.dir.path("run/last.pt"));
  EXPECT_EQ(last.epoch, 2);
  EXPECT_EQ(last.batch, 0);
  EXPECT_EQ(last.classes.size(), 10u);  // the benchmark's classInd.txt
  EXPECT_FALSE(last.optimizer.is_empty());
  EXPECT_TRUE(std::filesystem::exists(run.dir.path("run/best.pt")));
  Config back = Config::defaults();
  back.merge_file(run.dir.path("run/config.yaml"));
  EXPECT_EQ(back.to_yaml(), run.config.to_yaml());
}

TEST(Trainer, ScheduleForAnotherTrainingSetSizeKeepsTheNumberOfSteps) {
  // Epochs given for 16 videos, 8 here: twice the epochs, and the policy joins twice as late (epoch 2, not 1).
  TinyRun run;
  run.config.set("train.schedule_videos=16");
  run.config.set("train.policy_from_epoch=1");
  run.config.set("train.eval_every=0");
  run.config.set("train.eval_last=0");
  const auto summary = train::train(run.config, run.options());
  EXPECT_EQ(summary.epochs, 4);
  const std::vector<nlohmann::json> lines = run.metrics();
  ASSERT_EQ(lines.size(), 4u);
  for (size_t i = 0; i < lines.size(); ++i) EXPECT_EQ(lines[i].contains("policy_spread"), i >= 2) << "epoch " << i;
}

TEST(Trainer, ALossThatBlowsUpStopsTheRunAndKeepsTheLastGoodCheckpoint) {
  TinyRun run;
  run.config.set("train.optimizer=sgd");
  run.config.set("train.lr=1e30");
  run.config.set("train.epochs=3");
  run.config.set("train.checkpoint_every=1");
  const std::string e = test::error_of([&] { train::train(run.config, run.options()); });
  EXPECT_NE(e.find("the loss became"), std::string::npos) << e;
  EXPECT_NE(e.find("last.pt still holds the last good state"), std::string::npos) << e;
  const auto last = methods::load_checkpoint(run.dir.path("run/last.pt"));
  for (const auto& item : last.model) {
    if (item.value().is_floating_point()) {
      EXPECT_TRUE(torch::isfinite(item.value()).all().item<bool>()) << item.key();
    }
  }
}

TEST(Trainer, ResumingWithoutACheckpointIsAClearError) {
  TinyRun run;
  auto o = run.options();
  o.resume = true;
  EXPECT_NE(test::error_of([&] { train::train(run.config, o); }).find("nothing to resume"), std::string::npos);
}

TEST(Pretraining, EachNetworkSeesItemsAtTheScaleOfItsInput) {
  auto preset = [](const std::string& name) {
    Config c = Config::defaults();
    c.merge_file("benchmark/" + name);
    return c;
  };
  const Config v2 = preset("adafocus_v2");
  // The benchmark draws items of 32-40 px on 128 px frames; the patch (40 px) is cut from the frame as it is.
  ASSERT_EQ(v2.get_int("data.input_size"), 128);
  const train::PretrainInput local = train::pretrain_input(v2, "model.local");
  EXPECT_EQ(local.side, 40);
  EXPECT_EQ(local.items.size, 128);
  // The glance sees the whole frame at 32 px: items 4x smaller (8-10 px), on a canvas of its whole view.
  const train::PretrainInput glance = train::pretrain_input(v2, "model.glance");
  EXPECT_EQ(glance.side, 32);
  EXPECT_EQ(glance.items.size, 32);
  // The low-resolution baseline sees the frame at 54 px; its canvas is at most the patch's.
  const train::PretrainInput low = train::pretrain_input(preset("full_frame_low_res"), "model.backbone");
  EXPECT_EQ(low.side, 40);
  EXPECT_EQ(low.items.size, 54);
  // The full-resolution baseline has the patch network's architecture and sees items as large: the same weights.
  EXPECT_EQ(train::pretrain_input(preset("full_frame_full_res"), "model.backbone").name, local.name);
  EXPECT_NE(low.name, local.name);
  EXPECT_NE(glance.name, local.name);
}

}  // namespace
}  // namespace adafocus
