// adafocus bench: how fast a trained model really is. In one run and on the same decoded videos it times the model
// with early exits (batches run exit by exit, videos leave as they become confident), the same model without exits,
// and the full-frame TSN of the same local network at the full input size, and sets each measured speedup beside
// the ratio of GFLOPs. For AdaFuse: the model computing only the channels its gates need, the same gates applied to
// the dense computation, and the dense network of the same backbone. Decoding is timed on its own. Variants are
// timed in turns, so that a machine whose speed drifts slows them alike. Without --checkpoint, a preset's model with
// its initial weights is timed (AdaFuse's untrained gates pick each action for about a third of the channels).
#include <fmt/format.h>

#include <ATen/record_function.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>

#include "cli/common.h"
#include "experiments/compare_python.h"
#include "core/error.h"
#include "data/dataset.h"
#include "infer/adaptive.h"
#include "infer/predictor.h"
#include "nn/flop_counter.h"
#include "methods/checkpoint.h"
#include "methods/registry.h"
#include "nn/state_dict.h"

namespace adafocus::cli {

namespace {

using Clock = std::chrono::steady_clock;

struct BenchArgs {
  std::string checkpoint, preset, data, list, thresholds;
  std::vector<std::string> overrides;
  double budget = -1;
  int64_t batch = 8, videos = 64, warmup = 2, rounds = 3;
  bool json = false, profile = false;
};

struct Variant {
  Variant(std::string n, std::function<void(const methods::Clips&)> r, double g)
      : name(std::move(n)), run(std::move(r)), gflops(g) {}
  std::string name;
  std::function<void(const methods::Clips&)> run;
  double gflops;
  std::vector<double> latencies;  // seconds per batch
  double seconds = 0;             // all timed batches
  int64_t videos = 0;
};

// --profile: the time of each LibTorch operator called from our code (outermost calls only, so that the times add
// up), per variant; what our own kernels and bookkeeping take is the rest of the batch's time.
struct OpTimes {
  std::map<std::string, std::pair<double, int64_t>> by_op;  // name -> (seconds, calls)
  int depth = 0;
};
thread_local OpTimes* op_times = nullptr;

struct OpStart : at::ObserverContext {
  Clock::time_point start;
  bool outermost = false;
};

std::unique_ptr<at::ObserverContext> op_start(const at::RecordFunction&) {
  if (!op_times) return nullptr;
  auto ctx = std::make_unique<OpStart>();
  ctx->outermost = op_times->depth++ == 0;
  ctx->start = Clock::now();
  return ctx;
}

void op_end(const at::RecordFunction& fn, at::ObserverContext* base) {
  auto* ctx = static_cast<OpStart*>(base);
  if (!op_times || !ctx) return;
  op_times->depth--;
  if (!ctx->outermost) return;
  auto& [seconds, calls] = op_times->by_op[fn.name()];
  seconds += std::chrono::duration<double>(Clock::now() - ctx->start).count();
  ++calls;
}

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(std::min<double>(v.size() - 1, std::floor(p * (v.size() - 1) + 0.5)))];
}

int run(const BenchArgs& args, const Runtime& runtime) {
  std::vector<std::string> overrides = args.overrides;
  if (!args.data.empty()) overrides.push_back("data.root=" + args.data);
  if (!args.list.empty()) overrides.push_back("data.val_list=" + args.list);
  const torch::Device device = runtime.torch_device();
  methods::LoadedModel m;
  if (args.checkpoint.empty()) {  // the preset's model as initialised: its time and GFLOPs only
    if (args.preset.empty()) throw Error("nothing to time", "", "give --checkpoint, or -c PRESET for an untrained model");
    m.config = Config::defaults();
    m.config.merge_file(args.preset);
    for (const auto& o : overrides) m.config.set(o);
    const int64_t classes = m.config.get_int("model.num_classes");
    m.classes.assign(static_cast<size_t>(classes), "");
    m.method = methods::make_method(m.config, classes);
    m.method->to(device);
    m.method->eval();
    m.method->optimize_for_inference();
  } else {
    m = methods::load_model(args.checkpoint, args.preset, overrides, device);
  }
  const Config& c = m.config;

  // Decoding and transforms, timed apart from the networks.
  data::DatasetOptions dataset_options = data::DatasetOptions::from_config(c, "data.val_list", false);
  dataset_options.limit = args.videos;
  data::VideoDataset dataset(dataset_options);
  std::vector<methods::Clips> batches;
  const auto decode_start = Clock::now();
  for (size_t first = 0; first < dataset.size(); first += static_cast<size_t>(args.batch)) {
    std::vector<torch::Tensor> frames, focus;
    for (size_t i = first; i < std::min(dataset.size(), first + static_cast<size_t>(args.batch)); ++i) {
      Rng unused(0);  // the test view draws nothing
      data::Sample s = dataset.get(i, unused);
      frames.push_back(s.clip);
      if (s.focus.defined()) focus.push_back(s.focus);
    }
    batches.push_back({torch::stack(frames).to(device), focus.empty() ? torch::Tensor() : torch::stack(focus).to(device)});
  }
  const double decode_seconds = std::chrono::duration<double>(Clock::now() - decode_start).count();
  if (batches.empty()) throw Error("no videos to time", dataset_options.list, "check --data / --list");

  std::optional<infer::ExitRule> rule;
  if (m.method->exits() > 1 && (args.budget >= 0 || !args.thresholds.empty() || !m.exits_json.empty())) {
    const infer::ExitTable table = infer::exit_table(m, args.thresholds, args.checkpoint);
    const infer::ExitSetting s = table.for_budget_or_all(args.budget);
    rule = infer::ExitRule{table.criterion, s.thresholds};
  }

  // The dense network the method saves from (MethodInfo::dense_baseline: the full-frame TSN of the same local network
  // at the full input size; AdaFuse's own backbone), with random weights: only time and GFLOPs count.
  const methods::MethodInfo& info = methods::method_info(c.get_string("model.method"));
  const int64_t classes = static_cast<int64_t>(m.classes.size());
  auto prepared = [&](methods::Method method) {
    method->to(device);
    method->eval();
    method->optimize_for_inference();
    return method;
  };
  methods::Method baseline = prepared(methods::make_method(info.dense_baseline(c), classes));

  torch::NoGradGuard no_grad;
  methods::MethodImpl& model = *m.method;
  model.eval();
  const int64_t frames = c.get_int("data.segments"), focus = c.get_int("data.focus_segments"),
                size = c.get_int("data.input_size");
  const double dense_gflops = infer::method_flops(model, frames, focus, size).report.gflops();
  std::vector<Variant> variants;
  if (rule) {
    int64_t macs = 0;
    for (const auto& b : batches) macs += infer::run_adaptive(model, b, *rule, true).macs;
    variants.emplace_back("early exits", [&](const methods::Clips& b) { infer::run_adaptive(model, b, *rule, false); },
                          static_cast<double>(macs) * 1e-9 / static_cast<double>(dataset.size()));
  }
  // A method whose cost depends on the video counts it from a pass over the batches; the others cost the same always.
  double gflops = 0;
  for (const auto& b : batches) {
    const methods::Prediction p = model.predict(b);
    gflops += p.gflops.defined() ? p.gflops.sum().item<double>() : dense_gflops * static_cast<double>(b.frames.size(0));
  }
  gflops /= static_cast<double>(dataset.size());
  variants.emplace_back(info.bench_label, [&](const methods::Clips& b) { model.predict(b); }, gflops);
  // Other ways of running the same model (its weights, other settings), against the same baseline.
  std::vector<methods::Method> others;
  for (const methods::MethodInfo::BenchVariant& v : info.bench_variants) {
    Config variant_config = c;
    for (const auto& o : v.overrides) variant_config.set(o, "bench (" + v.label + ")");
    methods::Method other = methods::make_method(variant_config, classes);
    nn::load_state_dict(*other, nn::state_dict(model), "bench");
    others.push_back(prepared(other));
    methods::MethodImpl* run_it = others.back().get();
    variants.emplace_back(v.label, [run_it](const methods::Clips& b) { run_it->predict(b); },
                          v.dense_cost ? dense_gflops : gflops);
  }
  variants.emplace_back(info.baseline_label, [&](const methods::Clips& b) { baseline->predict(b); },
                        infer::method_flops(*baseline, frames, focus, size).report.gflops());

  for (auto& v : variants)
    for (int64_t i = 0; i < args.warmup; ++i) v.run(batches[static_cast<size_t>(i) % batches.size()]);
  if (args.profile) {  // one pass per variant with the operators timed, before (and apart from) the timed rounds
    struct Profiling {  // the callback and the thread's tally removed however the pass ends
      Profiling() : handle(at::addThreadLocalCallback(at::RecordFunctionCallback(&op_start, &op_end))) {}
      ~Profiling() {
        op_times = nullptr;
        at::removeCallback(handle);
      }
      at::CallbackHandle handle;
    } profiling;
    const double n = static_cast<double>(batches.size());
    for (auto& v : variants) {  // on stderr: --json keeps stdout for its document
      OpTimes times;
      op_times = &times;
      const auto start = Clock::now();
      for (const auto& b : batches) v.run(b);
      const double total = std::chrono::duration<double>(Clock::now() - start).count();
      op_times = nullptr;
      std::vector<std::pair<double, std::string>> order;
      double in_ops = 0;
      for (const auto& [name, t] : times.by_op) order.emplace_back(t.first, name), in_ops += t.first;
      std::sort(order.rbegin(), order.rend());
      fmt::print(stderr, "{}: {:.1f} ms per batch, {:.1f} ms in LibTorch operators; the largest:\n", v.name,
                 1e3 * total / n, 1e3 * in_ops / n);
      for (size_t i = 0; i < std::min<size_t>(12, order.size()); ++i)
        fmt::print(stderr, "  {:<40}{:>9.2f} ms{:>9.1f} calls\n", order[i].second, 1e3 * order[i].first / n,
                   static_cast<double>(times.by_op[order[i].second].second) / n);
    }
  }
  for (int64_t r = 0; r < args.rounds; ++r)
    for (auto& v : variants)
      for (const auto& b : batches) {
        const auto start = Clock::now();
        v.run(b);
        const double s = std::chrono::duration<double>(Clock::now() - start).count();
        v.latencies.push_back(s);
        v.seconds += s;
        v.videos += b.frames.size(0);
      }

  const Variant& dense = variants.back();  // the baseline the speedups are over
  nlohmann::json out{{"checkpoint", args.checkpoint}, {"method", c.get_string("model.method")}, {"batch", args.batch},
                     {"videos", dataset.size()}, {"threads", runtime.threads}, {"device", runtime.device},
                     {"decode_ms_per_video", 1e3 * decode_seconds / static_cast<double>(dataset.size())}};
  if (args.budget >= 0) out["budget"] = args.budget;
  out["variants"] = nlohmann::json::array();
  std::vector<std::vector<std::string>> rows;
  for (const auto& v : variants) {
    const double per_second = static_cast<double>(v.videos) / v.seconds;
    const double speedup = dense.seconds / v.seconds * static_cast<double>(v.videos) / dense.videos;
    const double ratio = dense.gflops / v.gflops;
    out["variants"].push_back({{"name", v.name}, {"gflops", v.gflops}, {"videos_per_second", per_second},
                               {"latency_p50_ms", 1e3 * percentile(v.latencies, 0.5)},
                               {"latency_p90_ms", 1e3 * percentile(v.latencies, 0.9)},
                               {"speedup_over_baseline", speedup}, {"gflops_ratio", ratio},
                               {"speedup_over_gflops_ratio", speedup / ratio}});
    rows.push_back({v.name, fmt::format("{:.4g}", v.gflops), fmt::format("{:.1f}", per_second),
                    fmt::format("{:.2f}", 1e3 * percentile(v.latencies, 0.5)),
                    fmt::format("{:.2f}", 1e3 * percentile(v.latencies, 0.9)), fmt::format("{:.2f}x", speedup),
                    fmt::format("{:.2f}x", ratio), fmt::format("{:.2f}", speedup / ratio)});
  }
  if (args.json) {
    fmt::print("{}\n", out.dump(2));
    return 0;
  }
  fmt::print("{} on {} videos, batch {}, {} thread(s), {}; decoding {:.2f} ms/video (not in the times below)\n",
             c.get_string("model.method"), dataset.size(), args.batch, runtime.threads, runtime.device,
             out["decode_ms_per_video"].get<double>());
  print_table({"variant", "GFLOPs/video", "videos/s", "p50 ms/batch", "p90 ms/batch", "speedup", "GFLOPs ratio",
               "speedup / ratio"},
              rows);
  return 0;
}

}  // namespace

void add_bench_command(CLI::App& app, Commands& commands, const Runtime& runtime) {
  auto args = std::make_shared<BenchArgs>();
  CLI::App* sub = app.add_subcommand(
      "bench", "measured speed of a model with and without early exits and of the full-frame baseline");
  sub->add_option("--checkpoint", args->checkpoint, "a trained model (none: -c's model with its initial weights)");
  sub->add_option("-c,--config", args->preset,
                  "preset for checkpoints without a configuration (official ones), or the model to time untrained");
  sub->add_option("--data", args->data, "dataset folder (data.root)");
  sub->add_option("--list", args->list, "videos to run (default: the run's data.val_list)");
  sub->add_option("--budget", args->budget, "GFLOPs per video for the early exits (default: the checkpoint's largest)");
  sub->add_option("--thresholds", args->thresholds, "early-exit thresholds (adafocus calibrate --out)");
  sub->add_option("--batch", args->batch, "videos per batch")->check(CLI::PositiveNumber);
  sub->add_option("--videos", args->videos, "videos to time, evenly spread over the list")->check(CLI::PositiveNumber);
  sub->add_option("--warmup", args->warmup, "untimed batches per variant first");
  sub->add_option("--rounds", args->rounds, "timed passes over the videos per variant")->check(CLI::PositiveNumber);
  sub->add_flag("--json", args->json, "machine-readable output");
  sub->add_flag("--profile", args->profile, "first print where each variant's time goes, by LibTorch operator");
  sub->add_option("overrides", args->overrides, "dotted key=value overrides");
  auto compare = std::make_shared<experiments::CompareOptions>();
  auto* compare_flag = sub->add_flag("--compare-python",
                                     "time AdaFocusV2 P=128, the ResNet-50 TSN and the demo's training steps against "
                                     "PyTorch eager (bench/python_reference.py); writes --out/compare.json");
  sub->add_option("--out", compare->out, "--compare-python: folder for compare.json and its work files");
  sub->add_option("--python-script", compare->script, "--compare-python: python_reference.py to run");
  sub->add_flag("--speed-only", compare->speed_only,
                "--compare-python: only AdaFuse and AdaFocusV3 against our own dense networks (writes --out/speed.json)");
  sub->add_flag("--tiny", compare->tiny, "--compare-python on small shapes (a test of the comparison, not of speed)");
  sub->add_option("--demo", compare->demo,
                  "--compare-python: a finished demo folder, whose models are evaluated in fp32 and bf16");
  commands.push_back({sub, [args, compare, compare_flag, &runtime] {
                        if (*compare_flag) {
                          compare->warmup = std::max<int64_t>(1, args->warmup / 2);
                          compare->rounds = args->rounds;
                          return experiments::run_compare_python(*compare, runtime.resources());
                        }
                        return run(*args, runtime);
                      }});
}

}  // namespace adafocus::cli
