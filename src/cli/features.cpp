// adafocus features: run a backbone on a tensor of frames saved from Python and save what it computes.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <filesystem>

#include "cli/common.h"
#include "core/error.h"
#include "data/dataset.h"
#include "io/pth.h"

namespace adafocus::cli {

namespace {

struct FeaturesArgs {
  ConfigArgs config;
  std::string arch, weights, input, output, layer = "pool";
  int64_t tsm_segments = 0, batch_size = 64;
};

// A tensor file as it is; a video file or frame folder as the test view of the data.* settings: data.segments
// frames (TSN centre sampling), short side data.test_resize, centre crop data.input_size, ImageNet normalisation.
torch::Tensor read_frames(const std::string& input, const Config& config) {
  const std::string ext = std::filesystem::path(input).extension().string();
  if (ext == ".pt" || ext == ".pth") return io::read_tensor(input);
  Rng unused(0);  // the test view draws nothing
  return data::load_clip(input, data::DatasetOptions::from_config(config, "data.val_list", false), unused).clip;
}

int run(const FeaturesArgs& args, const CLI::App& app, const Runtime& runtime) {
  std::vector<std::pair<std::string, std::string>> flags;
  if (app.count("--arch")) flags.emplace_back("model.backbone.arch", args.arch);
  if (app.count("--weights")) flags.emplace_back("model.backbone.weights", args.weights);
  if (app.count("--tsm-segments")) {  // clips of T frames with the temporal shift
    flags.emplace_back("model.backbone.tsm", "true");
    flags.emplace_back("data.segments", std::to_string(args.tsm_segments));
  }
  const Config config = args.config.load(flags);
  if (args.config.print_if_asked(config)) return 0;
  const std::string weights = config.get_string("model.backbone.weights");
  if (weights.empty()) throw Error("no weights given", "", "pass --weights FILE.pth (a torchvision state dict)");
  if (args.input.empty() || args.output.empty()) throw Error("--input and --output are required");

  nn::Backbone model = nn::load_backbone(single_backbone_options(config), io::read_state_dict(weights), weights);
  model->eval();
  model->to(runtime.torch_device());

  torch::Tensor frames = read_frames(args.input, config);
  if (frames.dim() != 4 || frames.size(1) != 3 || !frames.is_floating_point())
    throw Error(fmt::format("expected a float tensor (N, 3, H, W), got {} ({})", c10::toString(frames.scalar_type()),
                            fmt::join(frames.sizes(), ", ")),
                args.input, "normalised RGB frames, e.g. torch.save(torch.randn(8, 3, 224, 224), path)");
  const int64_t segments = config.get_bool("model.backbone.tsm") ? config.get_int("data.segments") : 1;
  if (frames.size(0) % segments != 0)
    throw Error(fmt::format("{} frames are not whole clips of {} TSM segments", frames.size(0), segments), args.input,
                "the batch must hold clips x segments frames, each clip's frames adjacent");

  // Whole clips per chunk, so the temporal shift never sees a clip cut in two.
  const int64_t chunk = std::max<int64_t>(1, args.batch_size / segments) * segments;
  std::vector<torch::Tensor> outputs;
  torch::NoGradGuard no_grad;
  for (int64_t start = 0; start < frames.size(0); start += chunk) {
    auto x = frames.slice(0, start, start + chunk).to(runtime.torch_device(), torch::kFloat);
    auto map = model->feature_map(x);                        // (n, C, h, w)
    torch::Tensor y = args.layer == "map"    ? map
                      : args.layer == "pool" ? model->pool(map)                   // (n, C)
                                             : model->classify(model->pool(map));  // (n, K)
    outputs.push_back(y.cpu());
  }
  const torch::Tensor result = torch::cat(outputs);
  io::write_tensor(args.output, result);
  fmt::print("{}: {} {} ({})\n", args.output, config.get_string("model.backbone.arch"), args.layer, fmt::join(result.sizes(), ", "));
  return 0;
}

}  // namespace

void add_features_command(CLI::App& app, Commands& commands, const Runtime& runtime) {
  auto args = std::make_shared<FeaturesArgs>();
  const Config defaults = Config::defaults();
  args->arch = defaults.get_string("model.backbone.arch");

  CLI::App* sub = app.add_subcommand("features", "run a backbone on frames saved with torch.save and save its output");
  sub->add_option("--arch", args->arch, "backbone (model.backbone.arch): mobilenet_v2, resnet10, resnet18, resnet34, resnet50");
  sub->add_option("--weights", args->weights, "state dict .pth: torchvision or official layout (model.backbone.weights)");
  sub->add_option("--input", args->input,
                  "float tensor (N, 3, H, W) saved by torch.save (.pt/.pth), or a video file or frame folder");
  sub->add_option("--output", args->output, "where to torch.save the result");
  sub->add_option("--layer", args->layer, "logits (N, K), pool (N, C) or map (N, C, H/32, W/32)")
      ->check(CLI::IsMember({"logits", "pool", "map"}));
  sub->add_option("--tsm-segments", args->tsm_segments, "> 0: temporal shift over clips of this many frames");
  sub->add_option("--batch-size", args->batch_size, "frames per forward pass")->check(CLI::PositiveNumber);
  args->config.add_to(*sub);
  commands.push_back({sub, [args, sub, &runtime] { return run(*args, *sub, runtime); }});
}

}  // namespace adafocus::cli
