// adafocus predict: classify one video with a trained model; where it looked, what it cost, and a picture of it.
// With --budget, the video runs exit by exit and stops as soon as the prediction is confident enough.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <nlohmann/json.hpp>
#include <optional>

#include "cli/common.h"
#include "core/error.h"
#include "infer/predictor.h"
#include "io/pth.h"
#include "serve/streams.h"
#include "viz/visualize.h"

namespace adafocus::cli {

namespace {

struct PredictArgs {
  std::vector<std::string> videos;
  std::string checkpoint, preset, visualize, thresholds, classes, input_tensor, output, stream;
  std::vector<std::string> overrides;
  int64_t top_k = 5, window = 64, stride = 32;
  double budget = -1;
  bool json = false, raw = false, realtime = false;
};

// A whole model on a prepared clip: X.pt holds a (T, 3, S, S) or (B, T, 3, S, S) tensor, or a dict with 'clip' and
// 'focus' (V2-TSM); Y.pt gets a dict of what the model computed.
int run_on_tensor(const PredictArgs& args, methods::LoadedModel& model, torch::Device device) {
  if (args.output.empty()) throw Error("--input-tensor needs --output Y.pt", args.input_tensor);
  const io::PyValue in = io::read_pth(args.input_tensor);
  auto clip = [&](const io::PyValue* v, const char* what) {
    if (!v) return torch::Tensor();
    if (!v->is_tensor() || (v->tensor.dim() != 4 && v->tensor.dim() != 5) || v->tensor.size(-3) != 3)
      throw Error(std::string(what) + ": expected a (T, 3, S, S) or (B, T, 3, S, S) tensor, found " + v->describe(),
                  args.input_tensor, "normalised frames as the data pipeline gives them");
    const torch::Tensor t = v->tensor.to(torch::kFloat);
    return (t.dim() == 4 ? t.unsqueeze(0) : t).to(device);
  };
  methods::Clips clips{clip(in.is_tensor() ? &in : in.get("clip"), "clip"), clip(in.get("focus"), "focus")};
  if (!clips.frames.defined())
    throw Error("no clip: expected a tensor or a dict with 'clip'", args.input_tensor, "torch.save(clip, path)");
  torch::NoGradGuard no_grad;
  const methods::Prediction p = model.method->predict(clips);
  c10::Dict<std::string, torch::Tensor> out;
  out.insert("logits", p.logits.cpu());
  if (p.regions.defined()) {
    out.insert("regions", p.regions.cpu());
    out.insert("region_frames", p.region_frames.cpu());
  }
  for (const auto& [name, t] : p.outputs) out.insert(name, t.cpu());
  io::write_pth(args.output, out);
  fmt::print("{}: logits {}{}\n", args.output, fmt::join(p.logits.sizes(), "x"),
             p.regions.defined() ? ", regions, region_frames" : "");
  return 0;
}

// A live source (or a file) window by window, as the server's streams do: one line per window as it is classified,
// and one per break, reconnection or end of the source.
int run_on_stream(const PredictArgs& args, methods::LoadedModel& model, torch::Device device,
                  const infer::ExitRule* rule, double budget_used) {
  serve::WindowOptions o;
  o.window = args.window;
  o.stride = args.stride;
  o.realtime = args.realtime;
  if (o.window < 1 || o.stride < 1) throw Error("--window and --stride must be at least 1 frame");
  const size_t k = static_cast<size_t>(std::max<int64_t>(1, args.top_k));
  const std::atomic<bool> stop{false};
  serve::read_windows(
      args.stream, o, infer::prediction_options(model), stop,
      [&](serve::Window& w) {
        const infer::VideoPrediction p = infer::predict_sample(model, w.sample, device, rule);
        const nlohmann::json event = serve::window_event(w, &p, budget_used, k);
        if (args.json) return fmt::print("{}\n", event.dump());
        fmt::print("window {} (frames {}-{}, {:.2f}-{:.2f} s): {} {:.1f}%, {:.4f} GFLOPs{}\n", w.index, w.first_frame,
                   w.last_frame, w.start, w.end, p.classes[0].first, 100 * p.classes[0].second, p.gflops,
                   p.exit >= 0 ? fmt::format(" (exit {})", p.exit) : "");
        std::fflush(stdout);
      },
      [&](const nlohmann::json& event) {
        fmt::print("{}\n", args.json ? event.dump() : event.value("event", "") + ": " + event.dump());
        std::fflush(stdout);
      });
  return 0;
}

// One video's answer: predict --json's (--raw's) document, or the plain-text lines.
void print_prediction(const PredictArgs& args, methods::LoadedModel& model, const std::string& video,
                      torch::Device device, const infer::ExitRule* rule, double expected) {
  const infer::VideoPrediction p = infer::predict_video(model, video, device, rule);
  if (!args.visualize.empty()) viz::visualize(video, model, p, args.visualize);
  const size_t k = std::min(static_cast<size_t>(std::max<int64_t>(1, args.top_k)), p.classes.size());
  if (args.json || args.raw) {
    nlohmann::json out = infer::prediction_json(p, video, model.config.get_string("model.method"), k);
    if (rule) {
      out["budget"] = args.budget;
      out["expected_gflops"] = expected;
    }
    if (!args.visualize.empty()) out["visualization"] = args.visualize;
    if (args.raw) out["raw"] = infer::raw_prediction_json(p.outputs);
    fmt::print("{}\n", args.videos.size() > 1 ? out.dump() : out.dump(2));  // several: JSON Lines
    return;
  }
  fmt::print("{} ({:.4f} GFLOPs)\n", video, p.gflops);
  if (rule)
    fmt::print("  stopped after exit {} of {} (0 = the first): {:.4f} GFLOPs of {:.4f} without early exit\n", p.exit,
               p.exits - 1, p.gflops, p.full_gflops);
  for (size_t i = 0; i < k; ++i) fmt::print("  {:6.2f}%  {}\n", 100 * p.classes[i].second, p.classes[i].first);
  for (const auto& r : p.regions)
    fmt::print("  frame {:4}: looked at x {:.0f} y {:.0f} w {:.0f} h {:.0f}\n", r.frame, r.box[0], r.box[1], r.box[2],
               r.box[3]);
  if (!args.visualize.empty()) fmt::print("{}: the frames read, with the regions looked at\n", args.visualize);
}

int run(const PredictArgs& args, const Runtime& runtime) {
  methods::LoadedModel model = methods::load_model(args.checkpoint, args.preset, args.overrides, runtime.torch_device());
  if (!args.classes.empty()) infer::set_class_names(model, args.classes);
  if (!args.input_tensor.empty()) return run_on_tensor(args, model, runtime.torch_device());
  if (args.videos.empty() == args.stream.empty())
    throw Error("a video or --stream SOURCE (or --input-tensor) is required");
  if (args.raw && (args.budget >= 0 || !args.thresholds.empty()))
    throw Error("--raw shows every exit's output: run it without --budget / --thresholds");
  std::optional<infer::ExitRule> rule;
  double expected = 0, budget_used = -1;
  if (args.budget >= 0 || !args.thresholds.empty()) {
    const infer::ExitTable table = infer::exit_table(model, args.thresholds, args.checkpoint);
    const infer::ExitSetting s = table.for_budget_or_all(args.budget);
    rule = infer::ExitRule{table.criterion, s.thresholds};
    expected = s.gflops;
    budget_used = s.gflops;
  }
  if (!args.stream.empty())
    return run_on_stream(args, model, runtime.torch_device(), rule ? &*rule : nullptr, budget_used);
  if (args.videos.size() > 1 && !args.visualize.empty())
    throw Error("--visualize draws one video: give one video with it");
  for (const std::string& video : args.videos)
    print_prediction(args, model, video, runtime.torch_device(), rule ? &*rule : nullptr, expected);
  return 0;
}

}  // namespace

void add_predict_command(CLI::App& app, Commands& commands, const Runtime& runtime) {
  auto args = std::make_shared<PredictArgs>();
  CLI::App* sub = app.add_subcommand("predict", "classify a video file or frame folder with a trained model");
  sub->add_option("videos", args->videos, "video files or frame folders (several: --json prints a line per video)");
  sub->add_option("--checkpoint", args->checkpoint, "best.pt / last.pt of a run, or an official .pth.tar")->required();
  sub->add_option("-c,--config", args->preset, "preset for checkpoints without a configuration (official ones)");
  sub->add_option("--top-k", args->top_k, "classes to list");
  sub->add_option("--budget", args->budget,
                  "stop early: GFLOPs per video on average (thresholds from --thresholds or the checkpoint)");
  sub->add_option("--thresholds", args->thresholds, "early-exit thresholds (adafocus calibrate --out)");
  sub->add_flag("--json", args->json, "machine-readable output: top, regions, gflops, exit");
  sub->add_flag("--raw", args->raw,
                "JSON output with every exit's logits, the auxiliary heads, the regions in input pixels and the "
                "policy's actions (\"raw\")");
  sub->add_option("--classes", args->classes, "class names (classInd.txt), e.g. for official checkpoints");
  sub->add_option("--input-tensor", args->input_tensor,
                  "run on a prepared clip X.pt ((T, 3, S, S) or (B, T, 3, S, S), or a dict with 'clip' and 'focus')");
  sub->add_option("--output", args->output, "with --input-tensor: write the outputs to Y.pt (a dict of tensors)");
  sub->add_option("--visualize", args->visualize, "write the frames read with the focus boxes to OUT.gif or OUT.mp4");
  sub->add_option("--stream", args->stream,
                  "classify a live source (http, https, rtsp, rtmp URL, or a file) window by window: a line per window")
      ->excludes(sub->get_option("videos"));
  sub->add_option("--window", args->window, "with --stream: frames per window");
  sub->add_option("--stride", args->stride, "with --stream: frames from one window's start to the next");
  sub->add_flag("--realtime", args->realtime, "with --stream: read a file at its own frame rate, as a live source");
  sub->add_option("--set", args->overrides, "dotted key=value overrides (e.g. --set data.segments=16)");
  commands.push_back({sub, [args, &runtime] { return run(*args, runtime); }});
}

}  // namespace adafocus::cli
