// The methods: official module names and checkpoints, forward shapes, training signal, FLOPs of the presets.
#include <gtest/gtest.h>

#include <fstream>
#include <regex>
#include <sstream>

#include "infer/adaptive.h"
#include "infer/predictor.h"
#include "io/pth.h"
#include "methods/adafocus_v2.h"
#include "nn/state_dict.h"
#include "methods/checkpoint.h"
#include "nn/flop_counter.h"
#include "test_util.h"

namespace adafocus {
namespace {

Config tiny_v2() { return test::tiny_adafocus("adafocus_v2"); }

TEST(AdaFocusV2, PredictsEveryExitAndItsPatches) {
  torch::manual_seed(0);
  auto m = methods::make_method(tiny_v2(), 3);
  m->eval();
  torch::NoGradGuard no_grad;
  const auto p = m->predict({torch::randn({2, 4, 3, 64, 64}), {}});
  ASSERT_EQ(p.logits.sizes(), torch::IntArrayRef({2, 4, 3}));   // (B, T exits, C)
  ASSERT_EQ(p.regions.sizes(), torch::IntArrayRef({2, 4, 4}));  // a patch per frame
  EXPECT_TRUE((p.regions.select(2, 2) == 24).all().item<bool>());
  EXPECT_TRUE((p.regions.select(2, 0) >= 0).all().item<bool>());
  EXPECT_TRUE((p.regions.select(2, 0) <= 64 - 24).all().item<bool>());
  EXPECT_EQ(m->exits(), 4);  // one per frame
}

TEST(Methods, OptimizedForInferencePredictsTheSame) {
  for (const std::string method : {"adafocus_v2", "adafocus_v3"}) {
    SCOPED_TRACE(method);
    torch::manual_seed(1);
    auto m = methods::make_method(test::tiny_adafocus(method), 3);
    m->eval();
    torch::NoGradGuard no_grad;
    const methods::Clips clips{torch::randn({2, 4, 3, 64, 64}), {}};
    const auto plain = m->predict(clips);
    m->optimize_for_inference();
    const auto fast = m->predict(clips);
    EXPECT_TRUE(test::AllCloseRelative(fast.logits, plain.logits));
    EXPECT_TRUE(test::AllCloseRelative(fast.regions, plain.regions));
  }
}

TEST(AdaFocusV2, ATinyTrainingRunLowersTheLoss) {
  torch::manual_seed(1);
  auto m = methods::make_method(tiny_v2(), 3);
  const auto clips = torch::randn({6, 4, 3, 64, 64});
  const auto target = torch::tensor({0, 1, 2, 0, 1, 2}, torch::kLong);
  torch::optim::Adam adam(m->parameters(), torch::optim::AdamOptions(3e-3));
  m->train();
  std::vector<double> losses;
  for (int i = 0; i < 25; ++i) {
    const auto l = m->loss({clips, {}}, target, methods::StepContext{});
    adam.zero_grad();
    l.total.backward();
    adam.step();
    losses.push_back(l.total.item<double>());
  }
  EXPECT_LT(losses.back(), 0.5 * losses.front()) << losses.front() << " -> " << losses.back();
}

TEST(AdaFocusV2, TrainingStepReportsWhereThePolicyLooked) {
  torch::manual_seed(2);
  auto m = methods::make_method(tiny_v2(), 3);
  m->eval();  // batch norm as predict() runs it, so that both see the same glance
  const auto clips = torch::randn({2, 4, 3, 64, 64});
  const auto target = torch::tensor({0, 1}, torch::kLong);
  methods::StepContext warmup;
  warmup.policy_from_epoch = 1;  // epoch 0: only random patches run
  EXPECT_FALSE(m->loss({clips, {}}, target, warmup).regions.defined());
  const auto l = m->loss({clips, {}}, target, methods::StepContext{});
  EXPECT_FALSE(l.regions.requires_grad());
  torch::NoGradGuard no_grad;
  const auto p = m->predict({clips, {}});
  EXPECT_TRUE(torch::allclose(l.regions, p.regions, 1e-5, 1e-4));
  EXPECT_TRUE(torch::equal(l.region_frames, p.region_frames));
}

// The crop's gradient is zero unless the patch overlaps what matters; the deep-feature gradient also sees what lies
// within half a feature cell beyond the patch.
TEST(AdaFocusV2, FeatureGradientReachesThePolicyFromBeyondThePatch) {
  for (const std::string gradient : {"pixel", "feature"}) {
    Config c = tiny_v2();
    c.set("model.policy_zero_init=true");  // every patch at the centre: rows and columns 20..43
    c.set("model.policy_gradient=" + gradient);
    torch::manual_seed(3);
    auto m = methods::make_method(c, 3);
    m->eval();  // deterministic; the loss and its gradient do not need training mode
    auto clips = torch::zeros({1, 4, 3, 64, 64});
    clips.narrow(3, 15, 3).narrow(4, 15, 3).fill_(3.0);  // a blob 3 px up-left of the patch, 2 px from its edge
    const auto l = m->loss({clips, {}}, torch::tensor({1}, torch::kLong), methods::StepContext{});
    l.total.backward();
    double sum = 0;
    for (const auto& group : m->param_groups())
      if (group.name == "policy")
        for (const auto& [name, p] : group.params)
          if (p.grad().defined()) sum += p.grad().abs().sum().item<double>();
    if (gradient == "pixel")
      EXPECT_EQ(sum, 0.0);
    else
      EXPECT_GT(sum, 1e-6);
  }
}

TEST(Regions, TestAndTrainingViewsMapBackToTheDecodedFrame) {
  data::Sample s;
  s.frames = {3, 7};
  s.frame_width = 200;
  s.frame_height = 100;
  const auto box = torch::tensor({{4.0, 6.0, 8.0, 8.0}});           // (R=1, 4) in 32 px input pixels
  const auto second = torch::tensor({{1}}, torch::kLong);          // the clip's second frame: video frame 7
  // Training view: a 64 x 48 crop at (10, 20) of the decoded frame, flipped, resized to the 32 px input.
  s.crop = {10, 20, 64, 48, true};
  auto r = data::frame_regions(box, second, s, 32, 0);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].frame, 7);
  // x: 4 * 2 = 8, w 16, flipped in the 64 px crop: 64 - 8 - 16 = 40, + 10; y: 6 * 1.5 + 20; h 8 * 1.5.
  EXPECT_DOUBLE_EQ(r[0].box[0], 50.0);
  EXPECT_DOUBLE_EQ(r[0].box[1], 29.0);
  EXPECT_DOUBLE_EQ(r[0].box[2], 16.0);
  EXPECT_DOUBLE_EQ(r[0].box[3], 12.0);
  // Test view: short side 100 -> 50 (frame 100 x 50, x 2 to the decoded frame), centre crop of 32 at (34, 9).
  s.crop = {34, 9, 32, 32, false};
  r = data::frame_regions(box, second, s, 32, 50);
  EXPECT_DOUBLE_EQ(r[0].box[0], (4.0 + 34) * 2);
  EXPECT_DOUBLE_EQ(r[0].box[1], (6.0 + 9) * 2);
  EXPECT_DOUBLE_EQ(r[0].box[2], 16.0);
}

TEST(AdaFocusV2, PolicyLearnsOnlyThroughThePatchAndGlanceOnlyThroughItsHead) {
  torch::manual_seed(2);
  auto v2 = std::dynamic_pointer_cast<methods::AdaFocusV2Impl>(methods::make_method(tiny_v2(), 3));
  v2->train();
  const auto l = v2->loss({torch::randn({2, 4, 3, 64, 64}), {}}, torch::tensor({0, 2}, torch::kLong), {});
  l.total.backward();
  // The policy gets a gradient (through the differentiable crop) ...
  EXPECT_GT(v2->policy_stn->fc[0]->as<torch::nn::Linear>()->weight.grad().abs().sum().item<double>(), 0);
  // ... and every trained group does.
  for (const auto& g : v2->param_groups()) {
    double sum = 0;
    for (const auto& [name, p] : g.params)
      if (p.grad().defined()) sum += p.grad().abs().sum().item<double>();
    EXPECT_GT(sum, 0) << g.name;
  }
  // Before policy_from_epoch only random patches train: the policy gets nothing.
  v2->zero_grad(/*set_to_none=*/true);
  methods::StepContext warmup;
  warmup.policy_from_epoch = 2;
  v2->loss({torch::randn({2, 4, 3, 64, 64}), {}}, torch::tensor({0, 2}, torch::kLong), warmup).total.backward();
  EXPECT_FALSE(v2->policy_stn->fc[0]->as<torch::nn::Linear>()->weight.grad().defined());
}

TEST(AdaFocusV2, OfficialCheckpointGivesTheOfficialOutputs) {
  // A checkpoint written by a Python re-implementation of the official model (official module names, official
  // MobileNetV2 layout, {'state_dict': {'module.' + key}}), and its outputs: ours must reproduce them.
  test::TempDir dir;
  test::write_bytes(dir.path("preset.yaml"), R"(model:
  method: adafocus_v2
  num_classes: 5
  glance: {arch: mobilenet_v2, resolution: 64}
  local: {arch: resnet18}
  patch_size: 32
  policy_hidden: 64
  classifier_hidden: 4096
data: {segments: 4, input_size: 64}
)");
  methods::LoadedModel m = methods::load_model(test::reference("official_v2.pth.tar"), dir.path("preset.yaml"), {},
                                               torch::kCPU);
  torch::NoGradGuard no_grad;
  const auto p = m.method->predict({io::read_tensor(test::reference("official_v2_clips.pt")), {}});
  EXPECT_TRUE(test::AllCloseRelative(p.logits, io::read_tensor(test::reference("official_v2_logits.pt"))));
  const auto actions = io::read_tensor(test::reference("official_v2_actions.pt"));  // (B*T, 2) as (row, col)
  const auto regions = p.regions.reshape({-1, 4});
  EXPECT_TRUE(test::AllCloseRelative(regions.select(1, 1), actions.select(1, 0) * 32));  // y = row * (S - P)
  EXPECT_TRUE(test::AllCloseRelative(regions.select(1, 0), actions.select(1, 1) * 32));  // x = column * (S - P)
}

TEST(AdaFocusV2, LoadsEveryKeyOfTheOfficialActivityNetCheckpoint) {
  // tests/data/official-v2-actnet-state-dict.txt lists each key and shape of the official model (MobileNetV2 + ResNet-50,
  // P=128, 200 classes): a checkpoint with exactly those must load strictly into the ActivityNet preset.
  std::ifstream in(ADAFOCUS_SOURCE_DIR "/tests/data/official-v2-actnet-state-dict.txt");
  ASSERT_TRUE(in) << "missing tests/data/official-v2-actnet-state-dict.txt";
  nn::StateDict official;
  const std::regex line(R"(([\w.]+) \(([\d, ]*)\))");
  for (std::string text; std::getline(in, text);) {
    std::smatch m;
    if (text.empty() || text[0] == '#' || !std::regex_match(text, m, line)) continue;
    std::vector<int64_t> shape;
    std::istringstream dims(m[2].str());
    for (std::string d; std::getline(dims, d, ',');)
      if (d.find_first_not_of(' ') != std::string::npos) shape.push_back(std::stoll(d));
    official.insert("module." + m[1].str(), torch::zeros(shape));
  }
  ASSERT_EQ(official.size(), 696u);
  Config c = Config::defaults();
  c.merge_file("activitynet_v2");
  auto method = methods::make_method(c, 200);
  EXPECT_NO_THROW(nn::load_state_dict(*method, method->import_state_dict(nn::strip_module_prefix(official)), "official"));
}

// A tiny `method` whose networks are those of the official TSM code: MobileNetV2 (width 1.0, tonylins' layout when
// exported) and ResNet-18, both with the temporal shift when the method is a TSM one.
methods::Method tiny_official_layout(const std::string& method) {
  Config c = test::tiny_adafocus(method);
  const bool tsm = method.find("_tsm") != std::string::npos;
  for (const std::string kv :
       {"model.glance.arch=mobilenet_v2", "model.glance.stem=imagenet", "model.glance.resolution=64",
        "model.local.arch=resnet18", "model.local.base_width=64", "model.local.stem=imagenet", "model.patch_size=32",
        "data.focus_segments=6", "model.policy_hidden2=8"})
    c.set(kv);
  c.set(std::string("model.glance.tsm=") + (tsm ? "true" : "false"));
  c.set(std::string("model.local.tsm=") + (tsm ? "true" : "false"));
  auto m = methods::make_method(c, 5);
  torch::NoGradGuard no_grad;
  for (auto& p : m->parameters()) p.normal_();  // every tensor distinct, so that a key mixed up shows
  for (auto& b : m->buffers())
    if (b.is_floating_point()) b.uniform_(0.5, 1.5);
  return m;
}

// The model entry of an official checkpoint file ('state_dict' with "module." prefixes, or V1's 'model_state_dict').
nn::StateDict model_entry(const methods::OfficialCheckpoint& file) {
  for (const auto& [name, entry] : file.state_dicts)
    if (name == "state_dict" || name == "model_state_dict") return nn::strip_module_prefix(entry);
  ADD_FAILURE() << "no model entry";
  return nn::StateDict();
}

void expect_same(const nn::StateDict& actual, const nn::StateDict& expected) {
  EXPECT_EQ(actual.size(), expected.size());
  for (const auto& item : expected) {
    ASSERT_TRUE(actual.contains(item.key())) << item.key();
    EXPECT_TRUE(torch::equal(actual[item.key()], item.value())) << item.key();
  }
}

TEST(Methods, OfficialExportIsTheInverseOfImport) {
  // For each method with official code: ours -> the official layout -> ours gives every tensor back under its name,
  // through the state dict and through the checkpoint file the official scripts load; the official keys are those
  // of the official modules (ops/models.py + ops/temporal_shift.py of AdaFocusV2-TSM, gfv_net.py and ppo*.py of V1).
  const std::map<std::string, std::pair<std::vector<std::string>, std::vector<std::string>>> official_keys{
      // method: {keys the official model has, keys it has not}
      {"adafocus_v2_tsm",
       {{"global_CNN.base_model.features.3.conv.0.net.weight", "global_CNN.base_model.features.3.conv.1.weight",
         "global_CNN.base_model.features.2.conv.0.weight", "global_CNN.base_model.features.1.conv.0.weight",
         "global_CNN.base_model.features.18.0.weight", "local_CNN.base_model.layer1.0.conv1.net.weight",
         "local_CNN.base_model.layer4.1.conv2.weight", "global_CNN.new_fc.weight", "local_CNN.new_new_fc.bias",
         "policy_stn.10.weight"},
        {"global_CNN.base_model.classifier.weight", "global_CNN.base_model.classifier.1.weight",
         "local_CNN.base_model.fc.weight", "global_CNN.base_model.features.3.conv.0.0.weight"}}},
      {"adafocus_v1",
       {{"glancer.net.features.3.conv.0.0.weight", "glancer.net.classifier.1.weight",
         "focuser.net.layer1.0.conv1.weight", "focuser.net.fc.weight", "focuser.policy.policy.actor.0.weight", "focuser.policy.policy_old.actor.0.weight",
         "focuser.policy.policy_old.gru.weight_hh_l0", "classifier.gru.weight_ih_l0", "classifier.fc.bias"},
        {}}},
      {"adafocus_v1_tsm",
       {{"glancer.net.features.3.conv.0.net.weight", "glancer.net.classifier.weight", "focuser.net.base_model.0.weight",
         "focuser.net.base_model.1.running_var", "focuser.net.base_model.4.0.conv1.net.weight",
         "focuser.net.base_model.7.1.bn2.bias", "classifier.weight", "focuser.policy.policy.state_encoder.5.weight"},
        {"focuser.net.new_fc.weight", "focuser.net.base_model.fc.weight", "focuser.net.base_model.9.weight",
         "focuser.net.base_model.conv1.weight", "focuser.policy.policy_old.actor.0.weight"}}}};
  for (const auto& [method, keys] : official_keys) {
    SCOPED_TRACE(method);
    const auto m = tiny_official_layout(method);
    const nn::StateDict ours = nn::state_dict(*m);
    const nn::StateDict official = m->export_official_state_dict(ours);
    for (const auto& key : keys.first) EXPECT_TRUE(official.contains(key)) << key;
    for (const auto& key : keys.second) EXPECT_FALSE(official.contains(key)) << key;
    expect_same(m->import_state_dict(official), ours);
    const methods::OfficialCheckpoint file = m->export_official_checkpoint(ours);
    expect_same(m->import_checkpoint(model_entry(file), file.state_dicts), ours);
  }
}

TEST(Methods, OfficialV1CheckpointFilesAreWhatTheStageScriptsSave) {
  // V1a main_dist.py and V1s stage2.py/evaluate.py save and load {'model_state_dict', 'glancer', 'focuser', 'fc',
  // 'policy', 'epoch', 'best_acc', ...}; V1s's PPO is not a module, so its model state has no policy at all.
  for (const std::string method : {"adafocus_v1", "adafocus_v1_tsm"}) {
    SCOPED_TRACE(method);
    const auto m = tiny_official_layout(method);
    const nn::StateDict ours = nn::state_dict(*m);
    const methods::OfficialCheckpoint file = m->export_official_checkpoint(ours);
    std::map<std::string, nn::StateDict> entries(file.state_dicts.begin(), file.state_dicts.end());
    ASSERT_EQ(entries.size(), 5u);
    const nn::StateDict& model = entries.at("model_state_dict");
    EXPECT_EQ(model.contains("focuser.policy.policy.actor.0.weight"), method == "adafocus_v1");
    EXPECT_TRUE(torch::equal(entries.at("policy")["actor.0.weight"], ours["focuser.policy.policy.actor.0.weight"]));
    EXPECT_TRUE(torch::equal(entries.at("fc")[method == "adafocus_v1" ? "fc.weight" : "weight"],
                             model[method == "adafocus_v1" ? "classifier.fc.weight" : "classifier.weight"]));
    size_t parts = 0;  // glancer, focuser and fc are the model's state split by module
    for (const char* part : {"glancer", "focuser", "fc"}) {
      parts += entries.at(part).size();
      for (const auto& item : entries.at(part))
        EXPECT_TRUE(model.contains(std::string(part == std::string("fc") ? "classifier" : part) + "." + item.key()))
            << part << " " << item.key();
    }
    EXPECT_EQ(parts, model.size());
    ASSERT_EQ(file.values.size(), 2u);
    EXPECT_EQ(file.values[0].first, "epoch");
    EXPECT_EQ(file.values[1].first, "best_acc");
  }
  // A method without official code says which have it.
  const auto v3 = methods::make_method(test::tiny_adafocus("adafocus_v3"), 5);
  EXPECT_NE(test::error_of([&] { v3->export_official_checkpoint(nn::state_dict(*v3)); }).find("adafocus_v1_tsm"),
            std::string::npos);
}

TEST(Methods, CheckpointOfAnotherMethodIsAClearError) {
  test::TempDir dir;
  Config full = Config::defaults();
  full.set("model.backbone.arch=resnet10");
  full.set("model.backbone.base_width=4");
  full.set("data.segments=4");
  full.set("data.input_size=64");
  full.set("model.patch_size=32");
  methods::Checkpoint c;
  c.config_yaml = full.to_yaml();
  c.classes = {"a", "b", "c"};
  c.model = nn::state_dict(*methods::make_method(full, 3));
  methods::save_checkpoint(dir.path("full.pt"), c);
  const std::string e = test::error_of([&] {
    methods::load_model(dir.path("full.pt"), "", {"model.method=adafocus_v2"}, torch::kCPU);
  });
  EXPECT_NE(e.find("full.pt: weights do not fit the model"), std::string::npos) << e;
  EXPECT_NE(e.find("unexpected key 'base_model.conv1.weight'"), std::string::npos) << e;
  EXPECT_NE(e.find("missing key 'global_CNN."), std::string::npos) << e;
}

TEST(Methods, CheckpointsRoundTripAndResumeFields) {
  test::TempDir dir;
  methods::Checkpoint c;
  c.config_yaml = tiny_v2().to_yaml();
  c.classes = {"walk", "run", "T-shirt/top"};
  c.model = nn::state_dict(*methods::make_method(tiny_v2(), 3));
  c.optimizer.insert("policy_stn.fc.0.weight.momentum_buffer", torch::randn({2, 16}));
  c.epoch = 3;
  c.batch = 7;
  c.best_metric = 42.5;
  c.best_epoch = 2;
  c.epoch_sums = {1.5, 3, 8};
  methods::save_checkpoint(dir.path("c.pt"), c);
  const methods::Checkpoint back = methods::load_checkpoint(dir.path("c.pt"));
  EXPECT_EQ(back.config_yaml, c.config_yaml);
  EXPECT_EQ(back.classes, c.classes);
  EXPECT_EQ(back.epoch, 3);
  EXPECT_EQ(back.batch, 7);
  EXPECT_DOUBLE_EQ(back.best_metric, 42.5);
  EXPECT_EQ(back.best_epoch, 2);
  EXPECT_EQ(back.epoch_sums, c.epoch_sums);
  ASSERT_EQ(back.model.size(), c.model.size());
  for (const auto& item : c.model) EXPECT_TRUE(back.model[item.key()].equal(item.value())) << item.key();
  EXPECT_TRUE(back.optimizer[0].value().equal(c.optimizer[0].value()));
}

TEST(Methods, FullFrameAndTsmShapes) {
  Config c = tiny_v2();
  c.set("model.method=full_frame");
  c.set("model.backbone.arch=resnet10");
  c.set("model.backbone.base_width=4");
  c.set("model.backbone.resolution=32");
  auto full = methods::make_method(c, 3);
  full->eval();
  torch::NoGradGuard no_grad;
  const auto p = full->predict({torch::randn({2, 4, 3, 64, 64}), {}});
  EXPECT_EQ(p.logits.sizes(), torch::IntArrayRef({2, 1, 3}));
  EXPECT_FALSE(p.regions.defined());
  EXPECT_NE(test::error_of([&] { full->set_policy("random"); }).find("places no patches"), std::string::npos);

  c.set("model.method=adafocus_v2_tsm");
  c.set("model.glance.tsm=true");
  c.set("model.local.tsm=true");
  c.set("model.glance.stem=small");
  c.set("data.focus_segments=6");
  c.set("model.policy_hidden2=8");
  auto tsm = methods::make_method(c, 3);
  tsm->eval();
  const auto q = tsm->predict({torch::randn({2, 4, 3, 64, 64}), torch::randn({2, 6, 3, 64, 64})});
  EXPECT_EQ(q.logits.sizes(), torch::IntArrayRef({2, 1, 3}));
  EXPECT_EQ(q.regions.sizes(), torch::IntArrayRef({2, 1, 4}));  // one patch for every focus frame
  const auto keys = nn::state_dict(*tsm);
  for (const char* key : {"global_CNN.base_model.conv1.weight", "global_CNN.new_fc.weight",
                          "global_CNN.new_new_fc.weight", "local_CNN.base_model.layer1.0.conv1.weight",
                          "local_CNN.new_fc.weight", "policy_stn.0.weight", "policy_stn.10.weight"})
    EXPECT_TRUE(keys.contains(key)) << key;
}

TEST(Methods, PresetFlopsMatchThePapers) {
  // facts §8: AdaFocusV2 ActivityNet MobileNetV2 + ResNet-50 at P = 96/128/160: 17.6 / 27.0 / 39.0 GFLOPs;
  // ResNet-50 glance at 96 px, P = 128: 34.1; V2-TSM on Something-Something (8 + 12 frames, P = 128): 18.5;
  // AdaFocus V1, ActivityNet P = 128: ~26.5 (§8, per frame MobileNetV2 + ResNet-50 + policy + GRU classifier);
  // AdaFocus V1-TSM, Something-Something P = 144 / 160 / 176: 23.5 / 27.5 / 33.7 (§9).
  const std::pair<const char*, double> presets[] = {{"activitynet_v1", 26.5},
                                                    {"activitynet_v2_p96", 17.6},
                                                    {"activitynet_v2", 27.0},
                                                    {"activitynet_v2_p160", 39.0},
                                                    {"activitynet_v2_res50_glance", 34.1},
                                                    {"sthv1_v2_tsm", 18.5},
                                                    {"sthv1_v1_tsm", 23.5},
                                                    {"sthv1_v1_tsm_p160", 27.5},
                                                    {"sthv1_v1_tsm_p176", 33.7}};
  for (const auto& [preset, reported] : presets) {
    Config c = Config::defaults();
    c.merge_file(preset);
    auto m = methods::make_method(c, c.get_int("model.num_classes"));
    const auto f = infer::method_flops(*m, c.get_int("data.segments"), c.get_int("data.focus_segments"),
                                       c.get_int("data.input_size"));
    EXPECT_NEAR(f.report.gflops(), reported, 0.05) << preset;
  }
}

}  // namespace
}  // namespace adafocus
