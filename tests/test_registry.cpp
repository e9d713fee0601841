// The method registry: a method the library has never heard of, registered by this test alone, goes through the
// library's public paths - training (with its statistics in the log), checkpoints, evaluation, calibration of its
// exits and prediction on a video - without any of them naming it.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "infer/evaluate.h"
#include "infer/predictor.h"
#include "io/list_file.h"
#include "methods/baselines.h"
#include "methods/checkpoint.h"
#include "methods/registry.h"
#include "test_util.h"
#include "train/trainer.h"

namespace adafocus {
namespace {

// A toy with two exits: the mean colour of each frame through a linear layer; exit 0 averages the first half of the
// frames' logits, exit 1 all of them. Legend: B videos, T frames, C classes.
class ToyImpl : public methods::MethodImpl {
 public:
  ToyImpl(int64_t frames, int64_t num_classes) : frames_(frames) {
    fc = register_module("fc", torch::nn::Linear(3, num_classes));
  }
  methods::Prediction predict(const methods::Clips& clips) override {
    const auto per_frame = fc(clips.frames.mean({3, 4}));  // (B, T, C)
    methods::Prediction p;
    p.logits = torch::stack({per_frame.narrow(1, 0, frames_ / 2).mean(1), per_frame.mean(1)}, 1);  // (B, 2, C)
    p.video_means["brightness"] = clips.frames.mean({1, 2, 3, 4}).to(torch::kDouble).cpu();      // (B,)
    return p;
  }
  methods::Losses loss(const methods::Clips& clips, const torch::Tensor& target,
                       const methods::StepContext&) override {
    const auto logits = predict(clips).logits;  // (B, 2, C)
    methods::Losses l;
    l.total = torch::nn::functional::cross_entropy(logits.flatten(0, 1), target.repeat_interleave(2));
    l.terms = {{"ce", l.total.detach()}};
    l.statistics = {{"toy_weight_norm", fc->weight.norm().detach()}};
    l.logits = logits.select(1, 1).detach();
    return l;
  }
  std::vector<methods::ParamGroup> param_groups() override {
    return {{"classifier", methods::prefixed_parameters("fc", *fc), 1.0}};
  }
  int64_t exits() const override { return 2; }
  std::unique_ptr<methods::ExitStepper> stepper(const methods::Clips& clips) override {
    return std::make_unique<Steps>(*this, clips);
  }

  torch::nn::Linear fc{nullptr};

 private:
  // predict()'s two exits in turn.
  class Steps : public methods::ExitStepper {
   public:
    Steps(ToyImpl& m, const methods::Clips& clips) : logits_(m.predict(clips).logits) {}
    methods::ExitStep next() override { return {logits_.select(1, k_++), {}, {}, {}}; }
    void keep(const torch::Tensor& rows) override { logits_ = logits_.index_select(0, rows); }

   private:
    torch::Tensor logits_;
    int64_t k_ = 0;
  };
  int64_t frames_;
};

TEST(Registry, AMethodRegisteredOutsideTheLibraryTrainsEvaluatesCalibratesAndPredicts) {
  methods::MethodInfo info;
  info.name = "toy_exits";
  info.make = [](const Config& c, int64_t classes) {
    return std::make_shared<ToyImpl>(c.get_int("data.segments"), classes);
  };
  info.statistics = {{"toy_weight_norm", "norm {:.2f}"}};
  methods::register_method(info);
  EXPECT_NE(test::error_of([&] { methods::register_method(info); }).find("already registered"), std::string::npos);
  EXPECT_NE(test::error_of([] { methods::method_info("no_such_method"); }).find("toy_exits"), std::string::npos);

  test::TempDir dir;
  test::make_tiny_benchmark(dir.path("data"));
  Config config = Config::defaults();
  for (const std::string& kv : std::vector<std::string>
       {"model.method=toy_exits", "data.segments=4", "data.input_size=32", "data.test_resize=32", "data.scales=[1.0]",
        "data.batch_size=4", "data.workers=0", "train.epochs=2", "train.eval_every=1", "train.optimizer=adam",
        "train.lr=0.05", "train.metric=top1", "data.root=" + dir.path("data")})
    config.set(kv);

  // Training: the run folder, with the statistic the method reports averaged per epoch.
  train::TrainOptions o;
  o.run_dir = dir.path("run");
  o.quiet = true;
  train::train(config, o);
  std::ifstream log(dir.path("run/metrics.jsonl"));
  int epochs = 0;
  for (std::string line; std::getline(log, line); ++epochs) EXPECT_TRUE(nlohmann::json::parse(line).contains("toy_weight_norm"));
  EXPECT_EQ(epochs, 2);

  // Its checkpoint builds it again through the registry; evaluation reports its two exits and its own figure.
  methods::LoadedModel model = methods::load_model(dir.path("run/last.pt"), "", {}, torch::kCPU);
  ASSERT_NE(dynamic_cast<ToyImpl*>(model.method.get()), nullptr);
  infer::EvalOptions eo;
  const infer::Evaluation e = infer::evaluate(*model.method, model.config, eo);
  EXPECT_EQ(e.videos, 4);
  EXPECT_EQ(e.exit_top1.size(), 2u);
  ASSERT_TRUE(e.statistics.count("brightness"));
  EXPECT_TRUE(std::isfinite(e.statistics.at("brightness")));

  // Calibration of its exits for budgets, and a prediction on one video that stops at the cheapest one.
  const infer::ExitTable table =
      infer::calibrate(*model.method, model.config, eo, infer::parse_criterion(model.method->exit_criterion()), {});
  ASSERT_EQ(table.exit_gflops.size(), 2u);
  const infer::ExitSetting cheapest = table.for_budget(table.exit_gflops.front());
  const infer::ExitRule rule{table.criterion, cheapest.thresholds};
  const std::string video = dir.path("data") + "/" + io::read_list(dir.path("data/val.txt")).entries.front().path;
  const infer::VideoPrediction p = infer::predict_video(model, video, torch::kCPU, &rule);
  EXPECT_EQ(p.exits, 2);
  EXPECT_GE(p.exit, 0);
  EXPECT_EQ(p.classes.size(), model.classes.size());
}

TEST(Registry, EveryPaperPresetIsListedByTheMethodItBuilds) {
  std::map<std::string, std::string> listed;  // preset -> the method that lists it
  for (const std::string& name : methods::method_names())
    for (const std::string& preset : methods::method_info(name).presets) {
      EXPECT_TRUE(builtin_presets().count(preset + ".yaml")) << name << " lists a preset that does not exist: " << preset;
      listed[preset] = name;
    }
  for (const auto& [file, text] : builtin_presets()) {
    if (file.rfind("benchmark/", 0) == 0 || file == "defaults.yaml") continue;
    Config c = Config::defaults();
    c.merge_file(file);
    const std::string preset = file.substr(0, file.size() - 5);
    EXPECT_EQ(listed[preset], c.get_string("model.method")) << preset;
  }
}

}  // namespace
}  // namespace adafocus
