// adafocus demo: what `make demo` runs. Until the AdaFocusV2 method lands it shows the backbones: their GFLOPs,
// counted from their layers, and their measured speed on this machine.
#include <fmt/format.h>

#include <chrono>

#include "cli/common.h"
#include "infer/flops.h"

namespace adafocus::cli {

namespace {

struct DemoArgs {
  int64_t batch = 8, size = 224, repeats = 3;
};

// Median wall time of `repeats` eval forwards after one warm-up, in milliseconds.
double forward_ms(nn::BackboneImpl& model, const torch::Tensor& x, int64_t repeats) {
  torch::NoGradGuard no_grad;
  model.forward(x);
  std::vector<double> times;
  for (int64_t i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    model.forward(x);
    times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

int run(const DemoArgs& args, const Runtime& runtime) {
  fmt::print("adafocus backbones: GFLOPs per frame without the classifier (MACs + BN channels) and eval forward time "
             "(batch {}, {}x{}, {} threads, {})\n\n",
             args.batch, args.size, args.size, runtime.threads, runtime.device);
  const int64_t sizes[] = {96, 128, 224};
  std::vector<std::vector<std::string>> rows;
  for (const auto& arch : nn::backbone_archs()) {
    nn::Backbone model = nn::make_backbone(nn::BackboneOptions(arch));
    model->to(runtime.torch_device());
    model->eval();
    int64_t params = 0;
    for (const auto& p : model->parameters()) params += p.numel();
    std::vector<std::string> row{arch, fmt::format("{:.2f}", params * 1e-6)};
    for (int64_t s : sizes) row.push_back(fmt::format("{:.4f}", infer::backbone_flops(*model, s, s).gflops()));
    const auto x = torch::randn({args.batch, 3, args.size, args.size}, torch::device(runtime.torch_device()));
    row.push_back(fmt::format("{:.0f}", forward_ms(*model, x, args.repeats)));
    rows.push_back(row);
    fmt::print(".");
    std::fflush(stdout);
  }
  fmt::print("\r");
  print_table({"arch", "params (M)", "GFLOPs@96", "GFLOPs@128", "GFLOPs@224", "forward ms"}, rows);
  fmt::print("\nNext: adafocus flops --arch resnet50 --size 128 --verbose (per-layer counts), adafocus features "
             "(run a backbone on your frames), adafocus convert-weights (official weights to torchvision layout).\n");
  return 0;
}

}  // namespace

void add_demo_command(CLI::App& app, Commands& commands, const Runtime& runtime) {
  auto args = std::make_shared<DemoArgs>();
  CLI::App* sub = app.add_subcommand("demo", "show the backbones' GFLOPs and speed on this machine");
  sub->add_option("--batch", args->batch, "frames per timed forward")->check(CLI::PositiveNumber);
  sub->add_option("--size", args->size, "frame side for the timing")->check(CLI::Range(32, 1024));
  sub->add_option("--repeats", args->repeats, "timed forwards per backbone (median reported)")
      ->check(CLI::PositiveNumber);
  commands.push_back({sub, [args, &runtime] { return run(*args, runtime); }});
}

}  // namespace adafocus::cli
