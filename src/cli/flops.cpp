// adafocus flops: GFLOPs counted from the layers (see nn/flop_counter.h for the convention): of a backbone per frame
// (--arch, --size), or of a whole method per video (-c PRESET).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "core/error.h"
#include "infer/adaptive.h"
#include "methods/registry.h"
#include "nn/flop_counter.h"

namespace adafocus::cli {

namespace {

struct FlopsArgs {
  ConfigArgs config;
  std::string arch, size = "224";
  double width_mult = 1.0;
  bool json = false, verbose = false;
};

// "224" -> (224, 224); "160x128" -> height 160, width 128.
std::pair<int64_t, int64_t> parse_size(const std::string& size) {
  const size_t x = size.find('x');
  const std::string h = size.substr(0, x), w = x == std::string::npos ? h : size.substr(x + 1);
  auto positive = [](const std::string& s) {
    return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos && std::stol(s) > 0;
  };
  if (!positive(h) || !positive(w)) throw Error("--size must be S or HxW, got '" + size + "'", "", "e.g. --size 224");
  return {std::stol(h), std::stol(w)};
}

nlohmann::json layers_json(const nn::FlopsReport& report) {
  auto out = nlohmann::json::array();
  for (const auto& l : report.layers)
    out.push_back({{"name", l.name}, {"op", l.op}, {"input", l.input_shape}, {"output", l.output_shape},
                   {"macs", l.macs}});
  return out;
}

void print_layers(const nn::FlopsReport& report) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& l : report.layers)
    rows.push_back({l.name, l.op, fmt::format("{}", fmt::join(l.input_shape, "x")),
                    fmt::format("{}", fmt::join(l.output_shape, "x")), fmt::format("{:.6f}", l.macs * 1e-6)});
  print_table({"layer", "op", "input", "output", "MFLOPs"}, rows);
  fmt::print("\n");
}

// The whole method of a preset, per video.
int method_flops(const FlopsArgs& args, const Config& config) {
  const int64_t frames = config.get_int("data.segments"), focus = config.get_int("data.focus_segments"),
                size = config.get_int("data.input_size");
  methods::Method method = methods::make_method(config, config.get_int("model.num_classes"));
  const infer::MethodFlops f = infer::method_flops(*method, frames, focus, size);
  const std::string name = config.get_string("model.method");
  if (args.json) {
    nlohmann::json out{{"method", name}, {"gflops", f.report.gflops()}, {"exits", f.exits},
                       {"frames", frames}, {"focus_frames", focus}, {"input_size", size}};
    if (args.verbose) out["layers"] = layers_json(f.report);
    fmt::print("{}\n", out.dump(2));
    return 0;
  }
  if (args.verbose) print_layers(f.report);
  fmt::print("{} ({}): {:.4f} GFLOPs per video, {} frames{} at {}x{}\n", name, args.config.file, f.report.gflops(),
             frames, focus > 0 ? fmt::format(" + {} focus frames", focus) : "", size, size);
  if (f.exits.size() > 1)
    fmt::print("leaving at exit 0..{} (exit by exit): {:.4f} GFLOPs\n", f.exits.size() - 1, fmt::join(f.exits, " "));
  if (const std::string& note = methods::method_info(name).flops_note; !note.empty()) fmt::print("{}\n", note);
  return 0;
}

int run(const FlopsArgs& args, const CLI::App& app) {
  std::vector<std::pair<std::string, std::string>> flags;
  if (app.count("--arch")) flags.emplace_back("model.backbone.arch", args.arch);
  if (app.count("--width-mult")) flags.emplace_back("model.backbone.width_mult", fmt::format("{}", args.width_mult));
  const Config config = args.config.load(flags);
  if (args.config.print_if_asked(config)) return 0;
  if (!args.config.file.empty()) return method_flops(args, config);

  const auto [height, width] = parse_size(args.size);
  if (height < 32 || width < 32)
    throw Error(fmt::format("input {}x{} is too small: backbones downsample by 32", height, width), "",
                "use at least 32x32");
  const nn::BackboneOptions options = single_backbone_options(config);
  nn::Backbone backbone = nn::make_backbone(options);
  const int64_t frames = std::max<int64_t>(1, options.tsm_segments());
  const nn::FlopsReport report = nn::backbone_flops(*backbone, height, width, frames);

  int64_t params = 0;
  for (const auto& p : backbone->named_parameters())
    if (p.key().rfind(backbone->classifier_prefix(), 0) != 0) params += p.value().numel();

  if (args.json) {
    nlohmann::json out{{"arch", options.arch()},     {"height", height},
                       {"width", width},             {"width_mult", options.width_mult()},
                       {"tsm_segments", options.tsm_segments()}, {"gflops", report.gflops()},
                       {"macs", report.total},       {"params", params}};
    if (args.verbose) out["layers"] = layers_json(report);
    fmt::print("{}\n", out.dump(2));
    return 0;
  }
  if (args.verbose) print_layers(report);
  fmt::print("{} @ {}x{}{}: {:.9f} GFLOPs per frame without the classifier, {:.2f} M parameters\n", options.arch(),
             height, width, options.width_mult() != 1.0 ? fmt::format(", width x{}", options.width_mult()) : "",
             report.gflops(), params * 1e-6);
  return 0;
}

}  // namespace

void add_flops_command(CLI::App& app, Commands& commands, const Runtime&) {
  auto args = std::make_shared<FlopsArgs>();
  const Config defaults = Config::defaults();
  args->arch = defaults.get_string("model.backbone.arch");
  args->width_mult = defaults.get_float("model.backbone.width_mult");

  CLI::App* sub = app.add_subcommand(
      "flops", "GFLOPs counted from the layers: a backbone per frame (--arch, --size), or a method per video (-c)");
  sub->add_option("--arch", args->arch,
                  "backbone (model.backbone.arch): mobilenet_v2, resnet10, resnet18, resnet34, resnet50");
  sub->add_option("--size", args->size, "backbone input size S or HxW");
  sub->add_option("--width-mult", args->width_mult, "MobileNetV2 width multiplier (model.backbone.width_mult)");
  sub->add_flag("--json", args->json, "machine-readable output (key gflops)");
  sub->add_flag("--verbose", args->verbose, "per-layer table");
  args->config.add_to(*sub);
  commands.push_back({sub, [args, sub] { return run(*args, *sub); }});
}

}  // namespace adafocus::cli
