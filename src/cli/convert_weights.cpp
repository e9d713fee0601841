// adafocus convert-weights: translate a backbone's weights from another layout (official AdaFocus / TSM MobileNetV2,
// DataParallel prefixes, nested checkpoints) to the torchvision layout, checked by loading them strictly.
#include <fmt/format.h>

#include "cli/common.h"
#include "core/error.h"
#include "io/pth.h"

namespace adafocus::cli {

namespace {

struct ConvertArgs {
  ConfigArgs config;
  std::string arch, input, output;
};

int run(const ConvertArgs& args, const CLI::App& app) {
  std::vector<std::pair<std::string, std::string>> flags;
  if (app.count("--arch")) flags.emplace_back("model.backbone.arch", args.arch);
  const Config config = args.config.load(flags);
  if (args.config.print_if_asked(config)) return 0;
  if (args.input.empty() || args.output.empty()) throw Error("--input and --output are required");
  const nn::StateDict state = io::read_state_dict(args.input);
  nn::Backbone model = nn::load_backbone(single_backbone_options(config), state, args.input);
  const nn::StateDict converted = nn::state_dict(*model);
  io::write_state_dict(args.output, converted);
  fmt::print("{}: {} tensors in torchvision layout ({} read from {})\n", args.output, converted.size(), state.size(),
             args.input);
  return 0;
}

}  // namespace

void add_convert_weights_command(CLI::App& app, Commands& commands, const Runtime&) {
  auto args = std::make_shared<ConvertArgs>();
  args->arch = Config::defaults().get_string("model.backbone.arch");
  CLI::App* sub = app.add_subcommand(
      "convert-weights", "rewrite backbone weights (official AdaFocus/TSM layout, .pth.tar) in torchvision layout");
  sub->add_option("--arch", args->arch, "backbone (model.backbone.arch): mobilenet_v2, resnet10, resnet18, resnet34, resnet50");
  sub->add_option("--input", args->input, "weights to read: state dict or checkpoint with 'state_dict'");
  sub->add_option("--output", args->output, "torchvision-layout state dict to write");
  args->config.add_to(*sub);
  commands.push_back({sub, [args, sub] { return run(*args, *sub); }});
}

}  // namespace adafocus::cli
