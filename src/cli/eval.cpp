// adafocus eval: accuracy, mAP and GFLOPs per video of a trained model on a list.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "core/error.h"
#include "infer/evaluate.h"
#include "methods/checkpoint.h"

namespace adafocus::cli {

namespace {

struct EvalArgs {
  std::string checkpoint, preset, data, list, policy;
  std::vector<std::string> overrides;
  bool json = false;
};

int run(const EvalArgs& args, const Runtime& runtime) {
  std::vector<std::string> overrides = args.overrides;
  if (!args.data.empty()) overrides.push_back("data.root=" + args.data);
  if (!args.list.empty()) overrides.push_back("data.val_list=" + args.list);
  methods::LoadedModel m = methods::load_model(args.checkpoint, args.preset, overrides, runtime.torch_device());
  infer::EvalOptions o;
  o.policy = args.policy;
  o.device = runtime.torch_device();
  const infer::Evaluation e = infer::evaluate(*m.method, m.config, o);
  nlohmann::json out{{"checkpoint", args.checkpoint},
                     {"method", m.config.get_string("model.method")},
                     {"videos", e.videos},
                     {"top1", e.scores.top1},
                     {"top5", e.scores.top5},
                     {"mean_class_accuracy", e.scores.mean_class},
                     {"map", e.scores.map},
                     {"gflops", e.flops.report.gflops()},
                     {"exit_gflops", e.flops.exits}};
  if (e.iou >= 0) out["iou"] = e.iou;
  if (!args.policy.empty()) out["policy"] = args.policy;
  if (args.json) {
    fmt::print("{}\n", out.dump(2));
    return 0;
  }
  fmt::print("{} on {} videos: top-1 {:.2f}%  top-5 {:.2f}%  mean class {:.2f}%  mAP {:.2f}  {:.4f} GFLOPs/video{}\n",
             m.config.get_string("model.method"), e.videos, e.scores.top1, e.scores.top5, e.scores.mean_class,
             e.scores.map, e.flops.report.gflops(), e.iou >= 0 ? fmt::format("  patch/item IoU {:.3f}", e.iou) : "");
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
  sub->add_flag("--json", args->json, "machine-readable output");
  sub->add_option("overrides", args->overrides, "dotted key=value overrides");
  commands.push_back({sub, [args, &runtime] { return run(*args, runtime); }});
}

}  // namespace adafocus::cli
