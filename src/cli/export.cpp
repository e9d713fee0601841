// adafocus export: a trained model as the official code's checkpoint file, which its scripts load with
// load_state_dict(strict=True): V2, V2-TSM, AdaFuse {'state_dict': ...} with DataParallel's "module." prefixes; V1,
// V1-TSM the dict their stage scripts save ('model_state_dict', 'glancer', 'focuser', 'fc', 'policy', ...).
#include <fmt/format.h>

#include "cli/common.h"
#include "core/error.h"

namespace adafocus::cli {

namespace {

struct ExportArgs {
  std::string checkpoint, preset, format = "official", out;
  std::vector<std::string> overrides;
};

int run(const ExportArgs& args) {
  if (args.format != "official")
    throw Error("--format must be official, not '" + args.format + "'", "",
                "our own checkpoints are torch.save dicts already: torch.load(path)['state_dict']");
  methods::LoadedModel model = methods::load_model(args.checkpoint, args.preset, args.overrides, torch::kCPU);
  std::vector<std::string> entries;
  for (const auto& [name, size] : methods::save_official_checkpoint(*model.method, args.out))
    entries.push_back(fmt::format("'{}': {} tensors", name, size));
  fmt::print("{}: the official {} checkpoint ({}); class names are not part of it: {} classes\n", args.out,
             model.config.get_string("model.method"), fmt::join(entries, ", "), model.classes.size());
  return 0;
}

}  // namespace

void add_export_command(CLI::App& app, Commands& commands, const Runtime&) {
  auto args = std::make_shared<ExportArgs>();
  CLI::App* sub = app.add_subcommand("export", "write a trained model as an official-code checkpoint (.pth.tar)");
  sub->add_option("--checkpoint", args->checkpoint, "best.pt / last.pt of a run")->required();
  sub->add_option("-c,--config", args->preset, "preset for checkpoints without a configuration");
  sub->add_option("--format", args->format, "official: the official AdaFocus code's layout");
  sub->add_option("--out", args->out, "file to write, e.g. model.pth.tar")->required();
  sub->add_option("--set", args->overrides, "dotted key=value overrides");
  commands.push_back({sub, [args] { return run(*args); }});
}

}  // namespace adafocus::cli
