// adafocus pretrain-items: pretrain a benchmark network on single items (the benchmark's stand-in for ImageNet).
#include <fmt/format.h>

#include "cli/common.h"
#include "core/error.h"
#include "io/pth.h"
#include "methods/method.h"
#include "train/pretrain.h"

namespace adafocus::cli {

namespace {

struct PretrainArgs {
  ConfigArgs config;
  std::string out, section = "local";
  train::PretrainOptions options;
};

int run(const PretrainArgs& args) {
  const Config config = args.config.load();
  if (args.config.print_if_asked(config)) return 0;
  if (args.out.empty()) throw Error("--out FILE.pth is required");
  const std::string section = "model." + args.section;
  train::PretrainOptions o = args.options;
  const train::PretrainInput in = train::pretrain_input(config, section);
  o.side = in.side;
  o.seed = static_cast<uint64_t>(config.get_int("seed"));
  const train::Pretrained p = train::pretrain_on_items(methods::backbone_options(config, section, 10, 1), in.items, o);
  io::write_state_dict(args.out, nn::state_dict(*p.backbone));
  fmt::print("{}: {} ({}) pretrained on {} items at a {} px frame's scale on {} px canvases, held-out accuracy {:.1f}%\n",
             args.out, section, in.name, o.images, in.items.size, o.side, p.accuracy);
  return 0;
}

}  // namespace

void add_pretrain_items_command(CLI::App& app, Commands& commands, const Runtime&) {
  auto args = std::make_shared<PretrainArgs>();
  CLI::App* sub = app.add_subcommand(
      "pretrain-items", "pretrain a benchmark network on single Fashion-MNIST items (the benchmark's ImageNet)");
  sub->add_option("--out", args->out, "weights to write (torchvision layout), for model.<section>.weights");
  sub->add_option("--section", args->section, "which network of the preset")
      ->check(CLI::IsMember({"local", "glance", "backbone"}));
  sub->add_option("--images", args->options.images, "training items");
  sub->add_option("--epochs", args->options.epochs, "passes over them");
  args->config.add_to(*sub);
  commands.push_back({sub, [args] { return run(*args); }});
}

}  // namespace adafocus::cli
