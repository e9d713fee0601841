// adafocus flops: GFLOPs of a backbone, counted from its layers (see infer/flops.h for the convention).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "core/error.h"
#include "infer/flops.h"

namespace adafocus::cli {

namespace {

struct FlopsArgs {
  ConfigArgs config;
  std::string arch, size;
  double width_mult = 1.0;
  bool json = false, verbose = false;
};

// "224" -> (224, 224); "160x128" -> height 160, width 128.
std::pair<std::string, std::string> parse_size(const std::string& size) {
  const size_t x = size.find('x');
  const std::string h = size.substr(0, x), w = x == std::string::npos ? h : size.substr(x + 1);
  auto positive = [](const std::string& s) {
    return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos && std::stol(s) > 0;
  };
  if (!positive(h) || !positive(w)) throw Error("--size must be S or HxW, got '" + size + "'", "", "e.g. --size 224");
  return {h, w};
}

int run(const FlopsArgs& args, const CLI::App& app) {
  std::vector<std::pair<std::string, std::string>> flags;
  if (app.count("--arch")) flags.emplace_back("model.arch", args.arch);
  if (app.count("--width-mult")) flags.emplace_back("model.width_mult", fmt::format("{}", args.width_mult));
  if (app.count("--size")) {
    auto [h, w] = parse_size(args.size);
    flags.emplace_back("input.height", h);
    flags.emplace_back("input.width", w);
  }
  const Config config = args.config.load(flags);
  if (args.config.print_if_asked(config)) return 0;
  const int64_t height = config.get_int("input.height"), width = config.get_int("input.width");
  if (height < 32 || width < 32)
    throw Error(fmt::format("input {}x{} is too small: backbones downsample by 32", height, width), "",
                "use at least 32x32");
  const nn::BackboneOptions options = backbone_options(config);
  nn::Backbone backbone = nn::make_backbone(options);
  const int64_t frames = std::max<int64_t>(1, options.tsm_segments());
  const infer::FlopsReport report = infer::backbone_flops(*backbone, height, width, frames);

  int64_t params = 0;
  for (const auto& p : backbone->named_parameters())
    if (p.key().rfind(backbone->classifier_prefix(), 0) != 0) params += p.value().numel();

  if (args.json) {
    nlohmann::json out{{"arch", options.arch()},     {"height", height},
                       {"width", width},             {"width_mult", options.width_mult()},
                       {"tsm_segments", options.tsm_segments()}, {"gflops", report.gflops()},
                       {"macs", report.total},       {"params", params}};
    if (args.verbose) {
      out["layers"] = nlohmann::json::array();
      for (const auto& l : report.layers)
        out["layers"].push_back({{"name", l.name}, {"op", l.op}, {"input", l.input_shape},
                                 {"output", l.output_shape}, {"macs", l.macs}});
    }
    fmt::print("{}\n", out.dump(2));
    return 0;
  }
  if (args.verbose) {
    std::vector<std::vector<std::string>> rows;
    for (const auto& l : report.layers)
      rows.push_back({l.name, l.op, fmt::format("{}", fmt::join(l.input_shape, "x")),
                      fmt::format("{}", fmt::join(l.output_shape, "x")), fmt::format("{:.6f}", l.macs * 1e-6)});
    print_table({"layer", "op", "input", "output", "MFLOPs"}, rows);
    fmt::print("\n");
  }
  fmt::print("{} @ {}x{}{}: {:.9f} GFLOPs per frame without the classifier, {:.2f} M parameters\n", options.arch(),
             height, width, options.width_mult() != 1.0 ? fmt::format(", width x{}", options.width_mult()) : "",
             report.gflops(), params * 1e-6);
  return 0;
}

}  // namespace

void add_flops_command(CLI::App& app, Commands& commands, const Runtime&) {
  auto args = std::make_shared<FlopsArgs>();
  const Config defaults = Config::defaults();
  args->arch = defaults.get_string("model.arch");
  args->size = std::to_string(defaults.get_int("input.height"));
  args->width_mult = defaults.get_float("model.width_mult");

  CLI::App* sub = app.add_subcommand(
      "flops", "GFLOPs of a backbone without its classifier: MACs of conv/linear layers + 1 per BN channel");
  sub->add_option("--arch", args->arch, "backbone (model.arch): mobilenet_v2, resnet18, resnet34, resnet50");
  sub->add_option("--size", args->size, "input size S or HxW (input.height, input.width)");
  sub->add_option("--width-mult", args->width_mult, "MobileNetV2 width multiplier (model.width_mult)");
  sub->add_flag("--json", args->json, "machine-readable output (key gflops)");
  sub->add_flag("--verbose", args->verbose, "per-layer table");
  args->config.add_to(*sub);
  commands.push_back({sub, [args, sub] { return run(*args, *sub); }});
}

}  // namespace adafocus::cli
