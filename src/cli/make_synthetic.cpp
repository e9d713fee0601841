// adafocus make-synthetic: the built-in benchmark, Cluttered Moving Fashion-MNIST videos.
#include <fmt/format.h>

#include "cli/common.h"
#include "core/progress.h"
#include "data/synthetic.h"

namespace adafocus::cli {

namespace {

struct SyntheticArgs {
  ConfigArgs config;
  std::string out, variant, format;
  int64_t train = 1000, val = 200, calib = 0, size = 0, frames = 0;
  uint64_t seed = 0;
};

int run(const SyntheticArgs& args, const CLI::App& app, const Runtime& runtime) {
  std::vector<std::pair<std::string, std::string>> flags;
  if (app.count("--variant")) flags.emplace_back("synthetic.variant", args.variant);
  if (app.count("--format")) flags.emplace_back("synthetic.format", args.format);
  if (app.count("--size")) flags.emplace_back("synthetic.size", std::to_string(args.size));
  if (app.count("--frames")) flags.emplace_back("synthetic.frames", std::to_string(args.frames));
  const Config config = args.config.load(flags);
  if (args.config.print_if_asked(config)) return 0;
  data::SyntheticOptions o = data::SyntheticOptions::from_config(config);
  o.out = args.out;
  o.train = args.train;
  o.val = args.val;
  o.calib = args.calib;
  o.seed = args.seed;
  o.threads = runtime.threads;
  Progress progress("make-synthetic", o.train + o.val + o.calib, "videos");
  data::make_synthetic(o, [&](int64_t done) { progress.update(done); });
  progress.finish();
  fmt::print("{}: {} train + {} val{} {} videos ({}x{}, {} frames) with train.txt, val.txt{}, classInd.txt, meta.jsonl\n",
             o.out, o.train, o.val, o.calib > 0 ? fmt::format(" + {} calib", o.calib) : "", o.variant, o.size, o.size,
             o.frames, o.calib > 0 ? ", calib.txt" : "");
  return 0;
}

}  // namespace

void add_make_synthetic_command(CLI::App& app, Commands& commands, const Runtime& runtime) {
  auto args = std::make_shared<SyntheticArgs>();
  const Config defaults = Config::defaults();
  args->variant = defaults.get_string("synthetic.variant");
  args->format = defaults.get_string("synthetic.format");
  args->size = defaults.get_int("synthetic.size");
  args->frames = defaults.get_int("synthetic.frames");
  CLI::App* sub = app.add_subcommand(
      "make-synthetic", "generate the built-in benchmark: Cluttered Moving Fashion-MNIST videos with ground truth");
  sub->add_option("--out", args->out, "output folder")->required();
  sub->add_option("--train", args->train, "train videos (items from Fashion-MNIST's train split)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--val", args->val, "val videos (items from its test split)")->check(CLI::PositiveNumber);
  sub->add_option("--calib", args->calib,
                  "videos of a held-out split (calib.txt) like the training ones, for adafocus calibrate --list");
  sub->add_option("--seed", args->seed, "same seed, same dataset");
  sub->add_option("--variant", args->variant, "appearance (label = item class) or motion (label = direction)")
      ->check(CLI::IsMember({"appearance", "motion"}));
  sub->add_option("--size", args->size, "frame side in pixels (synthetic.size)");
  sub->add_option("--frames", args->frames, "frames per video (synthetic.frames)");
  sub->add_option("--format", args->format, "video (H.264 .mp4) or frames (JPEG folders)")
      ->check(CLI::IsMember({"video", "frames"}));
  args->config.add_to(*sub);
  commands.push_back({sub, [args, sub, &runtime] { return run(*args, *sub, runtime); }});
}

}  // namespace adafocus::cli
