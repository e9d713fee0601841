#include "experiments/compare_python.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/text.h"
#include "core/error.h"
#include "core/files.h"
#include "infer/adaptive.h"
#include "infer/evaluate.h"
#include "nn/flop_counter.h"
#include "nn/fused_conv.h"
#include "infer/precision.h"
#include "io/pth.h"
#include "methods/adafocus_v2.h"
#include "methods/adafocus_v3.h"
#include "methods/adafuse.h"
#include "methods/registry.h"
#include "methods/baselines.h"
#include "methods/checkpoint.h"
#include "nn/state_dict.h"
#include "train/optimizer.h"

namespace adafocus::experiments {

namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

// One model at one batch size, for inference, inference with early exit (`exit_quantile` > 0), or a training step.
struct Case {
  Case(std::string n, Config c, int64_t b, bool t, double q = 0)
      : name(std::move(n)), config(std::move(c)), batch(b), training(t), exit_quantile(q) {}
  std::string name;
  Config config;
  int64_t batch;
  bool training;
  double exit_quantile;             // the share of the videos present at each exit that stay for the next one
  std::vector<double> thresholds;   // early exit: one per exit (entropy criterion)
  methods::Method model;
  double gflops = 0;
  std::vector<double> seconds, plain_seconds, bf16_seconds;  // ours: as used, before optimising, in bf16
  double bf16_difference = 0;
  torch::Tensor clips, target;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

Config case_config(const std::string& preset, const std::vector<std::string>& overrides) {
  Config c = Config::defaults();
  if (!preset.empty()) c.merge_file(preset);
  for (const auto& o : overrides) c.set(o);
  return c;
}

json backbone_json(const Config& c, const std::string& section) {
  const std::string arch = c.get_string(section + ".arch");
  if (arch == "mobilenet_v2" && c.get_float(section + ".width_mult") != 1.0)
    throw Error("the Python reference builds MobileNetV2 at width 1.0 only", c.origin(section + ".width_mult"));
  if (c.get_bool(section + ".tsm")) throw Error("the Python reference has no temporal shift", c.origin(section + ".tsm"));
  return {{"arch", arch}, {"base_width", c.get_int(section + ".base_width")}, {"stem", c.get_string(section + ".stem")}};
}

// What python_reference.py needs to rebuild the model: the architecture fields of the config.
json model_json(const Case& k, int64_t classes) {
  const Config& c = k.config;
  const std::string method = c.get_string("model.method");
  json m{{"method", method}, {"classes", classes}, {"frames", c.get_int("data.segments")},
         {"resize", c.get_string("model.resize")}, {"dropout", c.get_float("model.dropout")}};
  if (method == "full_frame") {
    const int64_t r = c.get_int("model.backbone.resolution");
    m["resolution"] = r > 0 ? r : c.get_int("data.input_size");
    m["backbone"] = backbone_json(c, "model.backbone");
    return m;
  }
  m.update({{"glance", backbone_json(c, "model.glance")}, {"local", backbone_json(c, "model.local")},
            {"patch", c.get_int("model.patch_size")}, {"glance_size", c.get_int("model.glance.resolution")},
            {"fuse", c.get_string("model.fuse")}, {"fc_dropout", c.get_float("model.fc_dropout")},
            {"policy_channels", c.get_int("model.policy_channels")},
            {"classifier_hidden", c.get_int("model.classifier_hidden")}});
  if (method == "adafocus_v3") {
    const auto& v3 = dynamic_cast<const methods::AdaFocusV3Impl&>(*k.model);
    const int64_t cubes = v3.exits() - 1;
    m.update({{"cube_frames", c.get_int("model.cube_frames")}, {"cubes", cubes},
              {"map_cells", v3.policy->fc->options.in_features() / (c.get_int("model.policy_channels") *
                                                                    c.get_int("data.segments"))}});
    return m;
  }
  const auto& v2 = dynamic_cast<const methods::AdaFocusV2Impl&>(*k.model);
  m.update({{"policy_hidden", c.get_int("model.policy_hidden")},
            {"map_cells", v2.policy_stn->encoder->ptr(4)->as<torch::nn::Linear>()->options.in_features() /
                              c.get_int("model.policy_channels")},
            {"feature_gradient", c.get_string("model.policy_gradient") == "feature"},
            {"local_stride", v2.local_CNN->stride()}});
  return m;
}

train::Optimizer make_optimizer(methods::MethodImpl& model, const Config& c) {
  for (const auto& g : model.param_groups())
    if (g.lr_mult != 1.0)
      throw Error("the Python reference trains every parameter at one rate; group " + g.name + " has a multiplier",
                  c.origin("train.lr_" + g.name));
  return train::Optimizer(model.param_groups(), train::OptimizerOptions::from_config(c));
}

template <typename F>
std::vector<double> timed(F&& run, int64_t warmup, int64_t rounds) {
  for (int64_t i = 0; i < warmup; ++i) run();
  std::vector<double> out;
  for (int64_t i = 0; i < rounds; ++i) {
    const auto start = Clock::now();
    run();
    out.push_back(std::chrono::duration<double>(Clock::now() - start).count());
  }
  return out;
}

// The accuracy bf16 costs: the demo's trained AdaFocusV2 (and the other models there) evaluated in fp32 and bf16.
json demo_bf16(const std::string& demo, const Resources& runtime) {
  json out{{"bf16_demo", json::object()}};
  double v2_change = 0;
  for (const std::string name : {"adafocus_v2", "adafocus_v3", "full_frame_low_res", "full_frame_full_res"}) {
    const std::string path = demo + "/" + name + ".pt";
    if (!std::filesystem::exists(path)) continue;
    methods::LoadedModel m = methods::load_model(path, "", {}, runtime.torch_device());
    infer::EvalOptions o;
    o.device = runtime.torch_device();
    double top1[2], seconds[2];
    for (int i = 0; i < 2; ++i) {
      infer::PrecisionGuard guard(i == 0 ? infer::Precision::Fp32 : infer::Precision::Bf16);
      const auto start = Clock::now();
      top1[i] = infer::evaluate(*m.method, m.config, o).scores.top1;
      seconds[i] = std::chrono::duration<double>(Clock::now() - start).count();
    }
    out["bf16_demo"][name] = {{"fp32_top1", top1[0]}, {"bf16_top1", top1[1]}, {"fp32_eval_s", seconds[0]},
                              {"bf16_eval_s", seconds[1]}};
    fmt::print("{}: top-1 fp32 {:.1f}, bf16 {:.1f} (eval {:.1f} s / {:.1f} s)\n", name, top1[0], top1[1], seconds[0],
               seconds[1]);
    if (name == "adafocus_v2") v2_change = top1[1] - top1[0];
  }
  if (out["bf16_demo"].contains("adafocus_v2"))
    out["bf16_top1_change"] = v2_change;
  else
    throw Error("no adafocus_v2.pt in the demo folder", demo, "run adafocus demo first, or leave out --demo");
  return out;
}

// --tiny: the same comparisons on small shapes, for the tests: 4 frames of 64 px, patches of 32.
const std::vector<std::string> kTinyShapes{"data.segments=4",           "data.input_size=64",
                                           "model.glance.resolution=64", "model.patch_size=32",
                                           "model.local.arch=resnet18",  "model.backbone.arch=resnet18",
                                           "model.policy_hidden=64",     "model.classifier_hidden=128"};

// Alternating runs of `a` and `b` (the machine's speed drifts; neighbours in time see the same machine) -> the
// median seconds of each.
std::pair<double, double> timed_pair(const std::function<void()>& a, const std::function<void()>& b, int64_t warmup,
                                     int64_t rounds) {
  std::vector<double> ta, tb;
  for (int64_t i = 0; i < warmup + rounds; ++i) {
    const auto one = timed(a, 0, 1), two = timed(b, 0, 1);
    if (i >= warmup) ta.push_back(one[0]), tb.push_back(two[0]);
  }
  return {median(ta), median(tb)};
}

methods::Method prepared(const Config& c, int64_t classes) {
  methods::Method m = methods::make_method(c, classes);
  m->eval();
  m->optimize_for_inference();
  return m;
}

// Our realised speed against our own dense networks (no PyTorch here): the glance's fused chain against its LibTorch
// layers (glance_speedup); measured speedup over the ratio of counted GFLOPs: (i) AdaFuse ResNet-50 TSN and TSM at 224 (8 frames), gates drawing a trained model's fractions, batch 1
// and 8, against the dense TSN / TSM; (ii) AdaFocusV3 at the ActivityNet preset's size with exits set for budgets
// of 1/2 and 1/4 of its no-exit cost, batch 1 and 8, against the full-frame TSN of its local network.
json realised_speed(const CompareOptions& args) {
  json out{{"speed_cases", json::object()}};
  torch::NoGradGuard no_grad;
  {  // The glance alone: MobileNetV2 at 224 px on 16 frames, BN folded, oneDNN's fused chain against the LibTorch
     // layers it replaced (nn/fused_conv.h); the largest difference between their maps, relative to the largest value.
    auto glance = nn::make_backbone(nn::BackboneOptions("mobilenet_v2"));
    glance->eval();
    glance->fold_batchnorm();
    const auto frames = torch::randn({16, 3, args.tiny ? 64 : 224, args.tiny ? 64 : 224});
    const auto layers_map = [&] {
      nn::ChainOffGuard off;
      return glance->feature_map(frames);
    };
    const auto [chain, layers] = timed_pair([&] { glance->feature_map(frames); }, layers_map, args.warmup, args.rounds);
    const auto reference = layers_map();
    const double difference =
        (glance->feature_map(frames) - reference).abs().max().item<double>() / reference.abs().max().item<double>();
    out["speed_cases"]["glance_b16"] = {{"ms", 1e3 * chain}, {"libtorch_layers_ms", 1e3 * layers},
                                        {"max_relative_difference", difference}};
    out["glance_speedup"] = layers / chain;
    fmt::print("MobileNetV2 at 224 px, 16 frames: {:.1f} ms against {:.1f} through LibTorch's layers: {:.2f}x\n",
               1e3 * chain, 1e3 * layers, layers / chain);
  }
  // Choice: the fractions [skip, reuse, keep] of the demo's trained AdaFuse-TSN and -TSM (docs/adafuse.md); at
  // ResNet-50 they cost 1.9 and 2.3 GFLOPs a frame against 4.1, near the paper's (22.1 and 19.1 per video of 8 frames
  // against 33.2). Each channel of each frame draws its action on its own: no two frames share a mask.
  const struct { const char* name; const char* preset; double skip, reuse, keep; } fuse_cases[] = {
      {"adafuse_tsn", "sthv1_adafuse_tsn", 0.77, 0.11, 0.12}, {"adafuse_tsm", "sthv1_adafuse_tsm", 0.63, 0.18, 0.19}};
  std::vector<std::string> tiny{"model.backbone.base_width=8", "data.input_size=64", "model.adafuse.hidden_quota=0",
                                "model.adafuse.hidden=32"};
  for (const auto& k : fuse_cases) {
    std::vector<std::string> overrides{"model.from_scratch=true"};
    if (args.tiny) overrides.insert(overrides.end(), tiny.begin(), tiny.end());
    const Config c = case_config(k.preset, overrides);
    const int64_t classes = c.get_int("model.num_classes"), frames = c.get_int("data.segments"),
                  size = c.get_int("data.input_size");
    methods::Method model = prepared(c, classes);
    for (auto& b : dynamic_cast<methods::AdaFuseImpl&>(*model).blocks) {  // logits log(p): sampled, they draw p
      if (!b.policy) continue;  // an ungated stage
      b.policy->gate_fc1->weight.zero_();
      const auto bias = b.policy->gate_fc1->bias.view({-1, 3});  // (G, 3) [skip, reuse, keep]
      bias.select(1, 0).fill_(std::log(k.skip));
      bias.select(1, 1).fill_(std::log(k.reuse));
      bias.select(1, 2).fill_(std::log(k.keep));
    }
    methods::Method dense = prepared(methods::method_info("adafuse").dense_baseline(c), classes);
    const double dense_gflops = infer::method_flops(*dense, frames, 0, size).report.gflops();
    for (int64_t batch : {1, 8}) {
      const methods::Clips clips{torch::randn({batch, frames, 3, size, size}), {}};
      const double gflops = model->predict(clips).gflops.mean().item<double>();
      const auto [ours, full] = timed_pair([&] { model->predict(clips); }, [&] { dense->predict(clips); },
                                           args.warmup, args.rounds);
      const double speedup = full / ours, ratio = dense_gflops / gflops;
      out["speed_cases"][fmt::format("{}_r50_b{}", k.name, batch)] = {
          {"ms", 1e3 * ours}, {"dense_ms", 1e3 * full}, {"gflops", gflops}, {"dense_gflops", dense_gflops},
          {"speedup", speedup}, {"gflops_ratio", ratio}, {"speedup_over_gflops_ratio", speedup / ratio}};
      fmt::print("{} ResNet-50 batch {}: {:.1f} ms against dense {:.1f}: {:.2f}x for {:.2f}x fewer GFLOPs ({:.2f})\n",
                 k.name, batch, 1e3 * ours, 1e3 * full, speedup, ratio, speedup / ratio);
      const std::string key = fmt::format("adafuse_speedup_over_gflops_ratio_b{}", batch);
      out[key] = std::min(out.value(key, 1e9), speedup / ratio);
    }
  }

  // AdaFocusV3: 16 videos, each sent out at an exit of its own, in geometric proportions (Eq. 7's family) whose
  // cost is the largest within each budget - forced by a rule per video (thresholds +inf before its exit, -inf at
  // it), so that the proportions do not hang on the scores of random weights; batch 1 (16 runs) and 8 (2 runs).
  std::vector<std::string> v3_overrides{"model.from_scratch=true"};
  if (args.tiny) {
    v3_overrides.insert(v3_overrides.end(), kTinyShapes.begin(), kTinyShapes.end());
    v3_overrides.push_back("model.cubes=4");  // one per frame
  }
  const Config c = case_config("activitynet_v3", v3_overrides);
  const int64_t frames = c.get_int("data.segments"), size = c.get_int("data.input_size"), videos = 16;
  methods::Method v3 = prepared(c, 200);
  methods::Method full = prepared(methods::method_info("adafocus_v3").dense_baseline(c), 200);
  const auto clips = torch::randn({videos, frames, 3, size, size});
  const infer::MethodFlops flops = infer::method_flops(*v3, frames, 0, size);
  const double full_gflops = infer::method_flops(*full, frames, 0, size).report.gflops();
  const int64_t exits = static_cast<int64_t>(flops.exits.size());
  for (const double part : {0.5, 0.25}) {
    const double budget = part * flops.exits.back();
    std::vector<int64_t> chosen(static_cast<size_t>(videos), 0);  // nothing fits: everyone at the first exit
    double best = -1;
    for (double q = 0.01; q <= 100; q *= 1.05) {
      const std::vector<double> p = infer::geometric_proportions(q, exits);
      std::vector<int64_t> at;  // each video's exit, the shares of p rounded over the 16
      double cumulative = 0;
      for (int64_t k = 0; k < exits; ++k) {
        cumulative += p[static_cast<size_t>(k)];
        while (static_cast<double>(at.size()) < std::round(cumulative * videos)) at.push_back(k);
      }
      at.resize(static_cast<size_t>(videos), exits - 1);
      double cost = 0;
      for (int64_t e : at) cost += flops.exits[static_cast<size_t>(e)] / videos;
      if (cost <= budget && cost > best) best = cost, chosen = at;
    }
    std::vector<infer::ExitRule> rules;
    std::vector<int64_t> counts(static_cast<size_t>(exits));
    for (int64_t i = 0; i < videos; ++i) {
      const int64_t e = chosen[static_cast<size_t>((i * 5) % videos)];  // spread over both batches of 8
      ++counts[static_cast<size_t>(e)];
      infer::ExitRule r{infer::Criterion::Entropy, std::vector<double>(static_cast<size_t>(exits), INFINITY)};
      r.thresholds[static_cast<size_t>(e)] = -INFINITY;
      rules.push_back(r);
    }
    for (int64_t batch : {1, 8}) {
      std::vector<std::pair<methods::Clips, std::vector<const infer::ExitRule*>>> batches;
      for (int64_t i = 0; i < videos; i += batch) {
        std::vector<const infer::ExitRule*> those;
        for (int64_t j = i; j < i + batch; ++j) those.push_back(&rules[static_cast<size_t>(j)]);
        batches.push_back({{clips.narrow(0, i, batch), {}}, those});
      }
      int64_t macs = 0;
      for (const auto& [b, r] : batches) macs += infer::run_adaptive(*v3, b, r, true).macs;
      const double gflops = static_cast<double>(macs) * 1e-9 / videos;
      const auto [ours, dense] = timed_pair(
          [&] {
            for (const auto& [b, r] : batches) infer::run_adaptive(*v3, b, r, false);
          },
          [&] {
            for (const auto& [b, r] : batches) full->predict(b);
          },
          args.warmup, args.rounds);
      const double speedup = dense / ours, ratio = full_gflops / gflops;
      const std::string name = fmt::format("v3_budget_{}_b{}", part == 0.5 ? "half" : "quarter", batch);
      out["speed_cases"][name] = {{"ms", 1e3 * ours}, {"full_frame_ms", 1e3 * dense}, {"gflops", gflops},
                                  {"full_frame_gflops", full_gflops}, {"no_exit_gflops", flops.exits.back()},
                                  {"videos_per_exit", counts}, {"speedup", speedup}, {"gflops_ratio", ratio},
                                  {"speedup_over_gflops_ratio", speedup / ratio}};
      fmt::print("AdaFocusV3 ActivityNet, budget {} of no exit, batch {}: {:.0f} ms against full frame {:.0f} for {} "
                 "videos: {:.2f}x for {:.2f}x fewer GFLOPs ({:.2f})\n",
                 part, batch, 1e3 * ours, 1e3 * dense, videos, speedup, ratio, speedup / ratio);
      const std::string key = fmt::format("v3_speedup_over_gflops_ratio_b{}", batch);
      out[key] = std::min(out.value(key, 1e9), speedup / ratio);
    }
  }
  return out;
}

}  // namespace

int run_compare_python(const CompareOptions& args, const Resources& runtime) {
  if (runtime.device != "cpu") throw Error("--compare-python times the CPU", "", "use --device cpu");
  infer::PrecisionGuard fp32(infer::Precision::Fp32);  // bf16 is timed beside fp32 below, whatever --precision says
  // Where the CPU has no native bf16, oneDNN emulates it 5-20x slower than fp32: timing that says nothing of bf16 and
  // took most of the run (over 14 minutes for the TSN at batch 8 on an AMD EPYC Zen 3), so it is left out there, as
  // --precision bf16 leaves it out. --tiny keeps it: the test of the comparison covers the bf16 path on every CPU.
  const bool time_bf16 = infer::cpu_has_bf16() || args.tiny;
  torch::manual_seed(0);
  if (args.speed_only) {
    std::filesystem::create_directories(args.out);
    json result{{"threads", runtime.threads}};
    result.update(realised_speed(args));
    write_file_atomic(args.out + "/speed.json", result.dump(2) + "\n", false);
    fmt::print("{}/speed.json\n", args.out);
    return 0;
  }
  const std::string work = args.out + "/compare";
  std::filesystem::create_directories(work);

  std::vector<Case> cases;
  // (i) AdaFocusV2 P=128 (MobileNetV2 glance at 224, ResNet-50 on the patches, 16 frames) against the full-frame
  // ResNet-50 TSN at 224; (ii) a training step of the demo's AdaFocusV2 and full-frame presets.
  std::vector<std::string> v2{"model.from_scratch=true"};
  std::vector<std::string> tsn{"model.method=full_frame", "model.backbone.arch=resnet50", "data.segments=16",
                               "data.input_size=224", "model.num_classes=200", "model.from_scratch=true"};
  if (args.tiny)
    for (auto* overrides : {&v2, &tsn}) overrides->insert(overrides->end(), kTinyShapes.begin(), kTinyShapes.end());
  for (int64_t batch : {1, 8}) {
    cases.emplace_back(fmt::format("v2_p128_b{}", batch), case_config("activitynet_v2", v2), batch, false);
    cases.emplace_back(fmt::format("tsn_r50_224_b{}", batch), case_config("", tsn), batch, false);
  }
  cases.emplace_back("v2_demo_train", case_config("benchmark/adafocus_v2", {}), 0, true);
  cases.emplace_back("full_frame_demo_train", case_config("benchmark/full_frame_full_res", {}), 0, true);
  // (iii) AdaFocusV3 (the demo's preset, 8 frames) with early exit at two budgets: at each exit the videos whose
  // confidence is in the top half (then the top quarter) of the batch's leave.
  for (const double stay : {0.5, 0.75})
    cases.emplace_back(fmt::format("v3_exit_b8_top{}", static_cast<int>(100 * (1 - stay))),
                       case_config("benchmark/adafocus_v3", {"model.from_scratch=true"}), 8, false, stay);

  // PyTorch right after us on each case (the machine's speed drifts; neighbours in time see the same machine): as
  // users run it, then with our allocator settings (src/cli/main.cpp keeps freed blocks in the heap, where Python's
  // process returns them to the kernel and page-faults them back).
  const std::string script = args.script.empty() ? ADAFOCUS_SOURCE_DIR "/bench/python_reference.py" : args.script;
  json python{{"cases", json::object()}}, python_heap{{"cases", json::object()}};
  auto run_python = [&](const json& entry) {
    const std::string name = entry["name"].get<std::string>(), spec = work + "/" + name + ".json";
    const json one{{"threads", runtime.threads}, {"warmup", args.warmup}, {"rounds", args.rounds},
                   {"cases", json::array({entry})}};
    write_file_atomic(spec, one.dump(1), false);
    for (const std::string env : {"", "MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1099511627776 "}) {
      const std::string out = work + "/" + name + (env.empty() ? "_python.json" : "_python_heap.json");
      const std::string command = fmt::format("{}/usr/bin/python3 '{}' '{}' '{}'", env, script, spec, out);
      if (std::system(command.c_str()) != 0)
        throw Error("the PyTorch reference failed: " + command, script,
                    "it needs Debian's python3-torch and python3-torchvision (scripts/install-deps.sh)");
      std::ifstream f(out);
      if (!f) throw Error("the PyTorch reference wrote no results", out);
      const json got = json::parse(f);
      // Agreement first: times of models that compute different things mean nothing. Inference: logits of random
      // weights, |logit| ~ 1; training: the loss (~2.3) and the gradients relative to the largest. Our ResNets train
      // in channels-last and PyTorch's user code in NCHW: PyTorch's own gradients of the demo's V2 step differ by
      // 1.5e-3 between the two layouts (the first convolutions' weight gradients sum 262k products in another
      // order), so 5e-3; a wrong kernel is off by the gradients' size.
      const json& theirs = got["cases"][name];
      const double difference = theirs["max_abs_difference"].get<double>(),
                   gradients = theirs.value("gradient_difference", 0.0);
      if (!(difference <= (entry["kind"] == "training" ? 1e-4 : 1e-3)) || !(gradients <= 5e-3))
        throw Error(fmt::format("{}: our outputs and PyTorch's differ by {:.3g} (gradients {:.3g}); not timing models "
                                "that compute different things",
                                name, difference, gradients),
                    out);
      json& into = env.empty() ? python : python_heap;
      into["torch"] = got["torch"];
      into["cases"][name] = got["cases"][name];
    }
  };

  for (auto& k : cases) {
    const Config& c = k.config;
    const bool exits = k.exit_quantile > 0;
    const int64_t classes = k.training || exits ? 10 : c.get_int("model.num_classes");  // the benchmark has 10 classes
    if (k.training) k.batch = args.tiny ? 4 : c.get_int("data.batch_size");
    const int64_t frames = c.get_int("data.segments"), size = c.get_int("data.input_size");
    k.model = methods::make_method(c, classes);
    k.clips = torch::randn({k.batch, frames, 3, size, size});
    k.target = torch::randint(classes, {k.batch}, torch::kLong);
    const std::string prefix = work + "/" + k.name;
    // The weights as PyTorch names them: the official layout for V2 (its MobileNetV2 glance), ours for TSN.
    const nn::StateDict state = nn::state_dict(*k.model);
    io::write_state_dict(prefix + ".pth", c.get_string("model.method") == "adafocus_v2"
                                              ? k.model->export_official_state_dict(state)
                                              : state);
    c10::Dict<std::string, torch::Tensor> input;
    input.insert("clips", k.clips);
    input.insert("target", k.target);
    io::write_pth(prefix + "_input.pth", input);
    json entry{{"name", k.name}, {"kind", k.training ? "training" : exits ? "early_exit" : "inference"}, {"weights", prefix + ".pth"},
               {"input", prefix + "_input.pth"}, {"ours", prefix + "_ours.pth"}, {"model", model_json(k, classes)}};

    c10::Dict<std::string, torch::Tensor> ours;
    if (k.training) {
      // One step as the trainer takes it (both V2 branches: the policy's epoch); its loss and gradients the check.
      k.model->train();
      train::Optimizer optimizer = make_optimizer(*k.model, c);
      methods::StepContext context;
      context.epoch = context.policy_from_epoch = c.get_int("train.policy_from_epoch");
      const double lr = c.get_float("train.lr");
      torch::Tensor loss;
      auto step = [&] {
        optimizer.zero_grad();
        loss = k.model->loss({k.clips, {}}, k.target, context).total;
        loss.backward();
        optimizer.step(lr);
      };
      constexpr int64_t kSeed = 7;  // the random branch's patches: the same draws in Python
      torch::manual_seed(kSeed);
      step();
      ours.insert("loss", loss.detach());
      for (const auto& p : k.model->named_parameters())
        if (p.value().grad().defined()) ours.insert("grad." + p.key(), p.value().grad());
      entry["seed"] = kSeed;
      entry["optimizer"] = {{"kind", c.get_string("train.optimizer")}, {"lr", lr},
                            {"momentum", c.get_float("train.momentum")},
                            {"weight_decay", c.get_float("train.weight_decay")}};
      io::write_pth(prefix + "_ours.pth", ours);
      k.seconds = timed(step, args.warmup, args.rounds);
    } else {
      k.model->eval();
      torch::NoGradGuard no_grad;
      const methods::Clips clips{k.clips, {}};
      infer::ExitRule rule{infer::Criterion::Entropy, {}};
      if (exits) {
        // Thresholds between the batch's scores at each exit (never on one: rounding cannot move a video across).
        const auto every = infer::run_adaptive(*k.model, clips, rule, false);
        const auto scores = std::get<0>(infer::exit_scores(every.exit_logits, infer::Criterion::Entropy).sort(0));  // (B, K)
        const int64_t i = std::clamp<int64_t>(std::llround(std::ceil(k.exit_quantile * static_cast<double>(k.batch))) - 1,
                                              0, k.batch - 2);
        const auto between = ((scores[i] + scores[i + 1]) / 2).contiguous();
        k.thresholds.assign(between.data_ptr<double>(), between.data_ptr<double>() + between.numel());
        rule.thresholds = k.thresholds;
        entry["thresholds"] = k.thresholds;
      }
      // What is timed: the whole-clip prediction, or the run that stops each video at its exit.
      auto logits = [&] {
        return exits ? infer::run_adaptive(*k.model, clips, rule, false).logits : k.model->predict(clips).logits;
      };
      k.plain_seconds = timed(logits, args.warmup, args.rounds);  // as built, before optimize_for_inference
      k.model->optimize_for_inference();
      if (exits) {
        const infer::AdaptiveResult r = infer::run_adaptive(*k.model, clips, rule, true);
        k.gflops = static_cast<double>(r.macs) * 1e-9;  // counted as the videos left
        ours.insert("logits", r.logits);
        ours.insert("exits", r.exits);
      } else {
        k.gflops = infer::method_flops(*k.model, frames, 0, size).report.gflops() * static_cast<double>(k.batch);
        const methods::Prediction p = k.model->predict(clips);
        ours.insert("logits", p.logits);
        for (const char* name : {"glance_logits", "local_logits"})  // AdaFocusV2's auxiliary heads, which PyTorch checks
          if (p.outputs.count(name)) ours.insert(name, p.outputs.at(name));
      }
      io::write_pth(prefix + "_ours.pth", ours);
      k.seconds = timed(logits, args.warmup, args.rounds);
      if (time_bf16) {
        infer::PrecisionGuard bf16(infer::Precision::Bf16);
        k.bf16_difference = (logits().to(torch::kFloat) - ours.at("logits")).abs().max().item<double>();
        k.bf16_seconds = timed(logits, args.warmup, args.rounds);
      }
    }
    fmt::print(stderr, "ours: {} {:.1f} ms\n", k.name, 1e3 * median(k.seconds));
    run_python(entry);
  }

  json result{{"threads", runtime.threads}, {"torch_python", python["torch"]}, {"cases", json::object()}};
  std::vector<std::vector<std::string>> rows;
  double inference_worst = 1e9, training_worst = 1e9, bf16_worst = 1e9, inference_heap_worst = 1e9,
         training_heap_worst = 1e9;
  for (const auto& k : cases) {
    const json& theirs = python["cases"][k.name];
    const double difference = theirs["max_abs_difference"].get<double>();
    const double gradients = theirs.value("gradient_difference", 0.0);
    const double ours_s = median(k.seconds), theirs_s = median(theirs["seconds"].get<std::vector<double>>());
    const double ratio = theirs_s / ours_s;
    (k.training ? training_worst : inference_worst) = std::min(k.training ? training_worst : inference_worst, ratio);
    const double heap_s = median(python_heap["cases"][k.name]["seconds"].get<std::vector<double>>());
    (k.training ? training_heap_worst : inference_heap_worst) =
        std::min(k.training ? training_heap_worst : inference_heap_worst, heap_s / ours_s);
    json& r = result["cases"][k.name];
    r = {{"ours_ms", 1e3 * ours_s}, {"python_ms", 1e3 * theirs_s}, {"speedup", ratio},
         {"python_same_allocator_ms", 1e3 * heap_s}, {"speedup_same_allocator", heap_s / ours_s},
         {"max_abs_difference", difference}, {"gflops", k.gflops}};
    if (k.exit_quantile > 0)
      r.update({{"thresholds", k.thresholds}, {"counted_gflops_per_video", k.gflops / static_cast<double>(k.batch)}});
    std::string plain = "-", bf16 = time_bf16 ? "-" : "- (no native bf16)";
    if (!k.training) {
      r["plain_ms"] = 1e3 * median(k.plain_seconds);
      plain = fmt::format("{:.1f}", 1e3 * median(k.plain_seconds));
      if (time_bf16) {
        const double b = median(k.bf16_seconds);
        bf16_worst = std::min(bf16_worst, ours_s / b);
        r.update({{"bf16_ms", 1e3 * b}, {"bf16_vs_fp32", ours_s / b}, {"bf16_max_abs_difference", k.bf16_difference}});
        bf16 = fmt::format("{:.1f} ({:.2f}x)", 1e3 * b, ours_s / b);
      }
    } else {
      r["gradient_difference"] = gradients;
    }
    rows.push_back({k.name, fmt::format("{:.1f}", 1e3 * ours_s), fmt::format("{:.1f}", 1e3 * theirs_s),
                    fmt::format("{:.2f}x", ratio), fmt::format("{:.1f} ({:.2f}x)", 1e3 * heap_s, heap_s / ours_s),
                    fmt::format("{:.1e}", difference), plain, bf16});
  }
  // What this CPU can do, measured: the faster of a large matrix product (OpenBLAS for fp32, oneDNN for bf16) and a
  // large 1x1 convolution in channels-last (oneDNN's own matrix kernel), 2 x MACs per second.
  for (const auto dtype : {torch::kFloat, torch::kBFloat16}) {
    if (dtype == torch::kBFloat16 && !time_bf16) continue;
    const int64_t n = 2048;
    const auto a = torch::randn({n, n}).to(dtype), b = torch::randn({n, n}).to(dtype);
    const auto x = torch::randn({1, n, 32, 32}).to(dtype).contiguous(torch::MemoryFormat::ChannelsLast);
    const auto w = torch::randn({n, n, 1, 1}).to(dtype).contiguous(torch::MemoryFormat::ChannelsLast);
    double best = 0;
    for (const auto& [flops, run] : {std::make_pair(2.0 * n * n * n, std::function<void()>([&] { torch::mm(a, b); })),
                                     std::make_pair(2.0 * n * n * 32 * 32, std::function<void()>([&] { torch::conv2d(x, w); }))}) {
      const auto times = timed(run, args.warmup, args.rounds + 2);
      best = std::max(best, flops / *std::min_element(times.begin(), times.end()) * 1e-9);  // the best run
    }
    result[dtype == torch::kFloat ? "fp32_peak_gflops_per_s" : "bf16_peak_gflops_per_s"] = best;
  }
  {
    const Case& r50 = cases[3];  // the ResNet-50 TSN at batch 8: MACs x 2 per second
    const double rate = 2.0 * r50.gflops / median(r50.seconds);
    result["r50_gflops_per_s"] = rate;
    result["r50_fraction_of_fp32_peak"] = rate / result["fp32_peak_gflops_per_s"].get<double>();
    fmt::print("ResNet-50 at 224 (batch 8 x 16 frames): {:.0f} GFLOP/s fp32 = {:.2f} of the measured peak {:.0f}\n",
               rate, result["r50_fraction_of_fp32_peak"].get<double>(), result["fp32_peak_gflops_per_s"].get<double>());
    if (time_bf16) {
      const double bf16 = 2.0 * r50.gflops / median(r50.bf16_seconds);
      result["r50_bf16_gflops_per_s"] = bf16;
      result["r50_bf16_fraction_of_bf16_peak"] = bf16 / result["bf16_peak_gflops_per_s"].get<double>();
      fmt::print("  bf16 {:.0f} GFLOP/s = {:.2f} of its measured peak {:.0f}\n", bf16,
                 result["r50_bf16_fraction_of_bf16_peak"].get<double>(), result["bf16_peak_gflops_per_s"].get<double>());
    }
  }
  {
    // Where V2's time goes at batch 8 (fp32, optimised): the glance on every frame and the local network on the
    // patches, each with its counted GFLOPs and its rate.
    auto& v2 = dynamic_cast<methods::AdaFocusV2Impl&>(*cases[2].model);
    const Config& c = cases[2].config;
    torch::NoGradGuard no_grad;
    const int64_t n = cases[2].batch * c.get_int("data.segments"), g = c.get_int("model.glance.resolution"),
                  p = c.get_int("model.patch_size");
    for (const auto& [name, net, side] : {std::make_tuple("glance", v2.global_CNN, g), std::make_tuple("local", v2.local_CNN, p)}) {
      const auto x = torch::randn({n, 3, side, side});
      const double gmacs = nn::backbone_flops(*net, side, side).gflops() * static_cast<double>(n);
      const auto& network = net;  // (a lambda may not capture a structured binding before C++20: clang refuses it)
      const double seconds = median(timed([&] { network->feature_map(x); }, args.warmup, args.rounds));
      result["v2_b8_parts"][name] = {{"ms", 1e3 * seconds}, {"gflops", gmacs}, {"gflops_per_s", 2.0 * gmacs / seconds}};
      fmt::print("V2 batch 8, {}: {:.0f} ms for {:.1f} GFLOPs ({:.0f} GFLOP/s)\n", name, 1e3 * seconds, gmacs,
                 2.0 * gmacs / seconds);
    }
  }
  result["inference_vs_python"] = inference_worst;
  result["training_vs_python"] = training_worst;
  result["inference_vs_python_same_allocator"] = inference_heap_worst;
  result["training_vs_python_same_allocator"] = training_heap_worst;
  result["bf16_vs_fp32"] = time_bf16 ? json(bf16_worst) : json(nullptr);  // null: not timed (no native bf16)
  result["bf16_native"] = infer::cpu_has_bf16();
  if (!args.demo.empty()) result.update(demo_bf16(args.demo, runtime));
  result.update(realised_speed(args));
  // AdaFocusV2 P=128 against the full-frame TSN: the measured speedup over the ratio of their GFLOPs, per batch,
  // timed alternately - the cases' own timings lie minutes apart (PyTorch runs between them), and this machine's
  // speed drifts over minutes.
  for (int64_t batch : {1, 8}) {
    const Case& a = cases[batch == 1 ? 0 : 2];
    const Case& b = cases[batch == 1 ? 1 : 3];
    torch::NoGradGuard no_grad;
    const auto [v2_s, tsn_s] = timed_pair([&] { a.model->predict({a.clips, {}}); },
                                          [&] { b.model->predict({b.clips, {}}); }, args.warmup, args.rounds);
    const double speedup = tsn_s / v2_s, ratio = b.gflops / a.gflops;
    result[fmt::format("v2_ms_b{}", batch)] = 1e3 * v2_s;
    result[fmt::format("tsn_ms_b{}", batch)] = 1e3 * tsn_s;
    result[fmt::format("v2_speedup_b{}", batch)] = speedup;
    result[fmt::format("v2_gflops_ratio_b{}", batch)] = ratio;
    result[fmt::format("v2_speedup_over_gflops_ratio_b{}", batch)] = speedup / ratio;
  }
  result["v2_speedup_over_gflops_ratio"] = result["v2_speedup_over_gflops_ratio_b8"];

  print_table({"case", "ours ms", "PyTorch ms", "speedup", "PyTorch, our allocator", "max |diff|",
               "ours unoptimised ms", "ours bf16 ms"},
              rows);
  fmt::print("AdaFocusV2 P=128 vs full-frame ResNet-50 TSN@224: batch 1 {:.2f}x for {:.2f}x fewer GFLOPs ({:.2f}), "
             "batch 8 {:.2f}x for {:.2f}x ({:.2f})\n",
             result["v2_speedup_b1"].get<double>(), result["v2_gflops_ratio_b1"].get<double>(),
             result["v2_speedup_over_gflops_ratio_b1"].get<double>(), result["v2_speedup_b8"].get<double>(),
             result["v2_gflops_ratio_b8"].get<double>(), result["v2_speedup_over_gflops_ratio_b8"].get<double>());
  for (const auto& k : cases)
    if (k.exit_quantile > 0)
      fmt::print("AdaFocusV3 with early exit ({}): {:.4f} GFLOPs per video counted, ours {:.1f} ms, PyTorch {:.1f} ms\n",
                 k.name, k.gflops / static_cast<double>(k.batch), result["cases"][k.name]["ours_ms"].get<double>(),
                 result["cases"][k.name]["python_ms"].get<double>());
  write_file_atomic(args.out + "/compare.json", result.dump(2) + "\n", false);
  fmt::print("{}/compare.json\n", args.out);
  return 0;
}

}  // namespace adafocus::experiments
