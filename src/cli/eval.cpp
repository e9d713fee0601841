// adafocus eval: accuracy, mAP and GFLOPs per video of a trained model on a list; with early-exit thresholds, the
// accuracy and the GFLOPs counted as the videos left exit by exit, at one budget or at every calibrated one.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "core/error.h"
#include "infer/evaluate.h"
#include "infer/predictor.h"
#include "methods/checkpoint.h"

namespace adafocus::cli {

namespace {

struct EvalArgs {
  std::string checkpoint, preset, data, list, policy, thresholds, classes;
  std::vector<std::string> overrides;
  double budget = -1;
  bool json = false;
};

nlohmann::json scores_json(const infer::Evaluation& e) {
  nlohmann::json j{{"top1", e.scores.top1}, {"top5", e.scores.top5}, {"mean_class_accuracy", e.scores.mean_class},
                   {"map", e.scores.map}};
  if (e.iou >= 0) j["iou"] = e.iou;
  if (e.on_item >= 0) j["on_item"] = e.on_item;
  if (!e.on_item_by_region.empty()) j["on_item_by_region"] = e.on_item_by_region;
  return j;
}

// One calibrated setting run exit by exit on the list.
nlohmann::json budget_row(methods::LoadedModel& m, infer::EvalOptions o, const infer::ExitTable& table,
                          const infer::ExitSetting& s, double budget) {
  o.exit_rule = infer::ExitRule{table.criterion, s.thresholds};
  const infer::Evaluation e = infer::evaluate(*m.method, m.config, o);
  const auto counts = torch::bincount(e.exits, {}, static_cast<int64_t>(s.thresholds.size())).to(torch::kDouble) /
                      static_cast<double>(e.videos);
  nlohmann::json j = scores_json(e);
  j["budget"] = budget;
  j["gflops"] = e.counted_gflops;
  j["expected_gflops"] = s.gflops;
  j["exit_proportions"] = std::vector<double>(counts.data_ptr<double>(), counts.data_ptr<double>() + counts.numel());
  return j;
}

int run(const EvalArgs& args, const Runtime& runtime) {
  std::vector<std::string> overrides = args.overrides;
  if (!args.data.empty()) overrides.push_back("data.root=" + args.data);
  if (!args.list.empty()) overrides.push_back("data.val_list=" + args.list);
  methods::LoadedModel m = methods::load_model(args.checkpoint, args.preset, overrides, runtime.torch_device());
  if (!args.classes.empty()) infer::set_class_names(m, args.classes);
  infer::EvalOptions o;
  o.policy = args.policy;
  o.device = runtime.torch_device();
  nlohmann::json out{{"checkpoint", args.checkpoint}, {"method", m.config.get_string("model.method")}};
  if (!args.policy.empty()) out["policy"] = args.policy;

  if (!args.thresholds.empty() || args.budget >= 0) {
    const infer::ExitTable table = infer::exit_table(m, args.thresholds, args.checkpoint);
    if (static_cast<int64_t>(table.exit_gflops.size()) != m.method->exits())
      throw Error(fmt::format("thresholds for {} exits, the model has {}", table.exit_gflops.size(), m.method->exits()),
                  args.thresholds.empty() ? args.checkpoint : args.thresholds, "calibrate this model");
    out["criterion"] = infer::criterion_name(table.criterion);
    out["curve"] = nlohmann::json::array();
    if (args.budget >= 0)
      out["curve"].push_back(budget_row(m, o, table, table.for_budget(args.budget), args.budget));
    else
      for (const auto& s : table.budgets) out["curve"].push_back(budget_row(m, o, table, s, s.budget));
    if (args.json) {
      fmt::print("{}\n", out.dump(2));
      return 0;
    }
    fmt::print("{} with early exits ({}), thresholds calibrated on {}:\n", out["method"].get<std::string>(),
               out["criterion"].get<std::string>(), table.calibration);
    std::vector<std::vector<std::string>> rows;
    for (const auto& r : out["curve"])
      rows.push_back({fmt::format("{:.4g}", r["budget"].get<double>()), fmt::format("{:.4g}", r["gflops"].get<double>()),
                      fmt::format("{:.4g}", r["expected_gflops"].get<double>()),
                      fmt::format("{:.2f}", r["top1"].get<double>()), fmt::format("{:.2f}", r["map"].get<double>())});
    print_table({"budget", "GFLOPs/video (counted)", "expected (calibration)", "top-1", "mAP"}, rows);
    return 0;
  }

  const infer::Evaluation e = infer::evaluate(*m.method, m.config, o);
  out.update(scores_json(e));
  out["videos"] = e.videos;
  // A cost that depends on the video: the mean of what each video left to compute; the dense count its upper bound.
  out["gflops"] = e.gflops();
  if (e.video_gflops >= 0) out["dense_gflops"] = e.flops.report.gflops();
  for (const auto& [name, value] : e.statistics) out[name] = value;
  out["exit_gflops"] = e.flops.exits;
  out["exit_top1"] = e.exit_top1;
  // Top-1 of each class (by first label) among the videos of the list, named.
  const auto final_logits = e.logits.select(1, e.logits.size(1) - 1), first = e.labels.select(1, 0);
  const auto hit = (final_logits.argmax(1) == first).to(torch::kDouble);
  nlohmann::json per_class = nlohmann::json::object();
  for (size_t k = 0; k < m.classes.size(); ++k) {
    const auto of_class = first == static_cast<int64_t>(k);
    if (of_class.any().item<bool>()) per_class[m.classes[k]] = 100 * hit.index({of_class}).mean().item<double>();
  }
  out["per_class_top1"] = per_class;
  if (args.json) {
    fmt::print("{}\n", out.dump(2));
    return 0;
  }
  fmt::print("{} on {} videos: top-1 {:.2f}%  top-5 {:.2f}%  mean class {:.2f}%  mAP {:.2f}  {:.4f} GFLOPs/video{}\n",
             m.config.get_string("model.method"), e.videos, e.scores.top1, e.scores.top5, e.scores.mean_class,
             e.scores.map, e.gflops(), e.iou >= 0 ? fmt::format("  patch/item IoU {:.3f}", e.iou) : "");
  std::string statistics;
  for (const auto& [name, value] : e.statistics) statistics += fmt::format("{}{} {:.3f}", statistics.empty() ? "" : ", ", name, value);
  if (!statistics.empty()) fmt::print("{}\n", statistics);
  if (e.video_gflops >= 0) fmt::print("the dense network: {:.4f} GFLOPs/video\n", e.flops.report.gflops());
  if (e.exit_top1.size() > 1) {
    std::string line;
    for (size_t k = 0; k < e.exit_top1.size(); ++k)
      line += fmt::format(" {:.1f}@{:.3g}", e.exit_top1[k], e.flops.exits[k]);
    fmt::print("top-1 at each exit (@GFLOPs):{}\n", line);
  }
  return 0;
}

}  // namespace

void add_eval_command(CLI::App& app, Commands& commands, const Runtime& runtime) {
  auto args = std::make_shared<EvalArgs>();
  CLI::App* sub = app.add_subcommand("eval", "accuracy, mAP and GFLOPs per video of a checkpoint on a list");
  sub->add_option("--checkpoint", args->checkpoint, "best.pt / last.pt of a run, or an official .pth.tar")->required();
  sub->add_option("-c,--config", args->preset, "preset for checkpoints without a configuration (official ones)");
  sub->add_option("--data", args->data, "dataset folder (data.root)");
  sub->add_option("--list", args->list, "list to evaluate (default: the run's data.val_list)");
  sub->add_option("--policy", args->policy, "swap where patches go at test time: learned, random, center")
      ->check(CLI::IsMember({"learned", "random", "center"}));
  sub->add_option("--thresholds", args->thresholds,
                  "early exits with these thresholds (adafocus calibrate --out); alone: every budget in the file");
  sub->add_option("--budget", args->budget,
                  "early exits for this many GFLOPs per video (thresholds from --thresholds or the checkpoint)");
  sub->add_flag("--json", args->json, "machine-readable output (with the top-1 of each class, by name)");
  sub->add_option("--classes", args->classes, "class names (classInd.txt), e.g. for official checkpoints");
  sub->add_option("overrides", args->overrides, "dotted key=value overrides");
  commands.push_back({sub, [args, &runtime] { return run(*args, runtime); }});
}

}  // namespace adafocus::cli
