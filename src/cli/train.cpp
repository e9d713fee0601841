// adafocus train: train a method on a dataset into a run folder (see train/trainer.h for what it holds).
#include <fmt/format.h>

#include "cli/common.h"
#include "core/error.h"
#include "train/trainer.h"

namespace adafocus::cli {

namespace {

struct TrainArgs {
  ConfigArgs config;
  std::string data, out, resume, init;
};

int run(const TrainArgs& args, const Runtime& runtime) {
  if (!args.resume.empty() && (!args.config.file.empty() || !args.config.overrides.empty() || !args.init.empty()))
    throw Error("--resume continues a run with its own config.yaml", args.resume,
                "drop -c and key=value, or start a new run with --out");
  train::TrainOptions o;
  o.device = runtime.torch_device();
  o.init = args.init;
  Config config = Config::defaults();
  if (!args.resume.empty()) {
    o.run_dir = args.resume;
    o.resume = true;
  } else {
    std::vector<std::pair<std::string, std::string>> flags;
    if (!args.data.empty()) flags.emplace_back("data.root", args.data);
    config = args.config.load(flags);
    if (args.config.print_if_asked(config)) return 0;
    if (args.out.empty()) throw Error("--out RUN is required", "", "the folder for checkpoints and metrics");
    o.run_dir = args.out;
  }
  const train::TrainSummary s = train::train(config, o);
  fmt::print("{}: {} epochs in {:.0f} s\n", o.run_dir, s.epochs, s.seconds);
  if (s.best_epoch >= 0)
    fmt::print("best val {} {:.2f} at epoch {} (best.pt); last val top1 {:.2f}, mAP {:.2f}, {:.4f} GFLOPs/video\n",
               s.metric, s.best_metric, s.best_epoch + 1, s.last.scores.top1,
               s.last.scores.map, s.last.flops.report.gflops());
  if (!s.failures.empty()) {
    fmt::print("{} samples failed to load and were replaced:\n", s.failures.size());
    for (const auto& f : s.failures) fmt::print("  {}: {}\n", f.path, f.message);
  }
  return 0;
}

}  // namespace

void add_train_command(CLI::App& app, Commands& commands, const Runtime& runtime) {
  auto args = std::make_shared<TrainArgs>();
  CLI::App* sub = app.add_subcommand("train", "train a method on labelled videos");
  sub->add_option("--data", args->data, "dataset folder (data.root): lists, classInd.txt, videos or frames");
  sub->add_option("--out", args->out, "run folder for config.yaml, metrics.jsonl, last.pt, best.pt");
  sub->add_option("--resume", args->resume, "continue the run in this folder from its last.pt");
  sub->add_option("--init", args->init,
                  "start from this checkpoint's weights (a staged method's previous stage: stage=N --init "
                  "RUN/stage<N-1>/last.pt)");
  args->config.add_to(*sub);
  commands.push_back({sub, [args, &runtime] { return run(*args, runtime); }});
}

}  // namespace adafocus::cli
