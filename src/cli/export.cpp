// adafocus export: a trained model in the official code's checkpoint layout ({'state_dict': ...} with DataParallel's
// "module." prefixes, tonylins' MobileNetV2), which the official scripts load with load_state_dict(strict=True).
#include <fmt/format.h>

#include "cli/common.h"
#include "core/error.h"
#include "io/pth.h"

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
  c10::Dict<std::string, torch::Tensor> state;
  for (const auto& item : model.method->export_official_state_dict(nn::state_dict(*model.method)))
    state.insert("module." + item.key(), item.value().detach().cpu().contiguous());
  c10::impl::GenericDict root(c10::StringType::get(), c10::AnyType::get());
  root.insert("state_dict", state);
  io::write_pth(args.out, root);
  fmt::print("{}: {} tensors in the official {} layout (checkpoint['state_dict'], 'module.' prefixes); class names "
             "are not part of it: {} classes\n",
             args.out, state.size(), model.config.get_string("model.method"), model.classes.size());
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
