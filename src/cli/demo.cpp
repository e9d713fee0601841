// adafocus demo: what `make demo` runs. On the built-in benchmark (generated if absent) it trains AdaFocusV2 and the
// baselines it is measured against, evaluates them, and shows the papers' claims on our data: accuracy against
// GFLOPs, where the learned policy looks (IoU with the item) compared with random and centred patches.
//
// DIR/data (the benchmark), DIR/runs/<method> (training runs), DIR/<method>.pt (final models), DIR/results.json,
// DIR/accuracy_vs_gflops.svg, DIR/focus.gif. Finished steps are not redone when the demo is run again.
#include <fmt/format.h>

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/common.h"
#include "core/error.h"
#include "core/files.h"
#include "core/progress.h"
#include "data/synthetic.h"
#include "infer/evaluate.h"
#include "infer/predictor.h"
#include "io/pth.h"
#include "train/pretrain.h"
#include "train/trainer.h"

namespace adafocus::cli {

namespace {

namespace fs = std::filesystem;

struct DemoArgs {
  std::string out = "demo";
  std::string methods = "adafocus_v2,random_patch,center_patch,full_frame_low_res,full_frame_full_res";
  int64_t train_videos = 2000, val_videos = 500, epochs = 0, full_res_epochs = 0, pretrain_images = 20000;
  std::vector<std::string> overrides;
};

struct Row {
  std::string method;
  double gflops = 0, top1 = 0, top5 = 0, map = 0, iou = -1;
  std::string note;
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string item; std::getline(in, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

// An accuracy-vs-GFLOPs scatter plot (log-scaled GFLOPs), as a self-contained SVG.
void write_plot(const std::string& path, const std::vector<Row>& rows) {
  constexpr double W = 640, H = 420, L = 70, R = 190, T = 30, B = 60;
  double lo = 1e30, hi = 0, acc_lo = 100, acc_hi = 0;
  for (const auto& r : rows) {
    lo = std::min(lo, r.gflops), hi = std::max(hi, r.gflops);
    acc_lo = std::min(acc_lo, r.top1), acc_hi = std::max(acc_hi, r.top1);
  }
  const double x0 = std::log10(lo) - 0.15, x1 = std::log10(hi) + 0.15;
  const double y0 = std::max(0.0, std::floor(acc_lo / 10) * 10 - 5), y1 = std::min(100.0, std::ceil(acc_hi / 10) * 10 + 5);
  auto px = [&](double g) { return L + (std::log10(g) - x0) / (x1 - x0) * (W - L - R); };
  auto py = [&](double a) { return H - B - (a - y0) / (y1 - y0) * (H - T - B); };
  std::string svg = fmt::format(
      "<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{}' font-family='sans-serif' font-size='12'>\n"
      "<rect width='100%' height='100%' fill='white'/>\n"
      "<text x='{}' y='20' font-size='14'>Built-in benchmark: top-1 vs GFLOPs per video</text>\n"
      "<line x1='{}' y1='{}' x2='{}' y2='{}' stroke='black'/><line x1='{}' y1='{}' x2='{}' y2='{}' stroke='black'/>\n"
      "<text x='{}' y='{}'>GFLOPs per video (log scale)</text>\n"
      "<text x='15' y='{}' transform='rotate(-90 15 {})'>top-1 (%)</text>\n",
      W, H, L, L, H - B, W - R, H - B, L, T, L, H - B, (W - R + L) / 2 - 80, H - 20, (H - B + T) / 2, (H - B + T) / 2);
  for (double a = y0; a <= y1 + 1e-9; a += 10)
    svg += fmt::format("<text x='{}' y='{}' text-anchor='end'>{:.0f}</text><line x1='{}' y1='{}' x2='{}' y2='{}' "
                       "stroke='#ddd'/>\n",
                       L - 6, py(a) + 4, a, L, py(a), W - R, py(a));
  for (int e = static_cast<int>(std::floor(x0)); e <= static_cast<int>(std::ceil(x1)); ++e)
    for (double m : {1.0, 2.0, 5.0}) {
      const double g = m * std::pow(10.0, e);
      if (std::log10(g) < x0 || std::log10(g) > x1) continue;
      svg += fmt::format("<text x='{}' y='{}' text-anchor='middle'>{:g}</text>\n", px(g), H - B + 18, g);
    }
  const char* colours[] = {"#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2"};
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& r = rows[i];
    const char* c = colours[i % 7];
    svg += fmt::format("<circle cx='{}' cy='{}' r='6' fill='{}'/>\n", px(r.gflops), py(r.top1), c);
    svg += fmt::format("<circle cx='{}' cy='{}' r='6' fill='{}'/><text x='{}' y='{}'>{} ({:.1f}%)</text>\n", W - R + 20,
                       T + 20 + 22 * i, c, W - R + 32, T + 24 + 22 * i, r.method, r.top1);
  }
  write_file_atomic(path, svg + "</svg>\n");
}

int run(const DemoArgs& args, const Runtime& runtime) {
  const auto start = std::chrono::steady_clock::now();
  const std::string data_dir = args.out + "/data";
  fs::create_directories(args.out);

  // 1. The benchmark: JPEG frame folders in the official layout, so that the minutes go to training rather than to
  //    decoding the same videos every epoch (make-synthetic writes H.264 videos by default).
  Config base = Config::defaults();
  base.merge_file("benchmark/adafocus_v2");
  for (const auto& o : args.overrides) base.set(o);
  if (!fs::exists(data_dir + "/train.txt")) {
    data::SyntheticOptions o = data::SyntheticOptions::from_config(base);
    o.out = data_dir;
    o.train = args.train_videos;
    o.val = args.val_videos;
    o.seed = static_cast<uint64_t>(base.get_int("seed"));
    o.format = "frames";
    o.threads = runtime.threads;
    Progress progress("generate benchmark", o.train + o.val, "videos");
    data::make_synthetic(o, [&](int64_t done) { progress.update(done); });
    progress.finish();
  }

  // 2. The benchmark's stand-in for ImageNet weights: the patch network pretrained on single items.
  const std::string pretrained = args.out + "/pretrained_local.pth";
  if (!fs::exists(pretrained)) {
    train::PretrainOptions po;
    po.side = static_cast<int>(base.get_int("model.patch_size"));
    po.seed = static_cast<uint64_t>(base.get_int("seed"));
    po.images = args.pretrain_images;
    const train::Pretrained p = train::pretrain_on_items(methods::backbone_options(base, "model.local", 10, 1),
                                                        data::SyntheticOptions::from_config(base), po);
    io::write_state_dict(pretrained, nn::state_dict(*p.backbone));
    fmt::print(stderr, "  items held out: {:.1f}% correct\n", p.accuracy);
  }

  // 3. Train and evaluate every method.
  std::vector<Row> rows;
  std::vector<train::TrainSummary> summaries;
  for (const std::string& method : split(args.methods)) {
    Config config = Config::defaults();
    config.merge_file("benchmark/" + method);
    config.set("data.root", data_dir, "demo");
    config.set("model.local.weights", pretrained, "demo");
    config.set("model.backbone.weights", pretrained, "demo");
    config.set("train.eval_every", "0", "demo");  // the demo evaluates the final models itself
    config.set("train.eval_last", "0", "demo");
    if (args.epochs > 0) config.set("train.epochs", std::to_string(args.epochs), "demo");
    if (args.full_res_epochs > 0 && method == "full_frame_full_res")
      config.set("train.epochs", std::to_string(args.full_res_epochs), "demo");
    for (const auto& o : args.overrides) config.set(o);
    const std::string run_dir = args.out + "/runs/" + method, model = args.out + "/" + method + ".pt";
    if (!fs::exists(model)) {
      fmt::print(stderr, "== {} ==\n", method);
      train::TrainOptions to;
      to.run_dir = run_dir;
      to.device = runtime.torch_device();
      to.resume = fs::exists(run_dir + "/last.pt");
      train::train(config, to);
      fs::copy_file(run_dir + "/last.pt", model + ".tmp", fs::copy_options::overwrite_existing);
      fs::rename(model + ".tmp", model);
    }
    methods::LoadedModel m = methods::load_model(model, "", {}, runtime.torch_device());
    infer::EvalOptions eo;
    eo.device = runtime.torch_device();
    const infer::Evaluation e = infer::evaluate(*m.method, m.config, eo);
    rows.push_back({method, e.flops.report.gflops(), e.scores.top1, e.scores.top5, e.scores.map, e.iou, ""});
    fmt::print(stderr, "  {}: top-1 {:.1f}%, {:.4f} GFLOPs/video{}\n", method, e.scores.top1, e.flops.report.gflops(),
               e.iou >= 0 ? fmt::format(", patch/item IoU {:.3f}", e.iou) : "");
    // The same trained AdaFocusV2 with other patches at test time: does the learned placement matter?
    if (method == "adafocus_v2")
      for (const std::string policy : {"random", "center"}) {
        eo.policy = policy;
        const infer::Evaluation swapped = infer::evaluate(*m.method, m.config, eo);
        rows.push_back({"adafocus_v2 (" + policy + " patches at test)", swapped.flops.report.gflops(),
                        swapped.scores.top1, swapped.scores.top5, swapped.scores.map, swapped.iou, "same model"});
      }
  }

  // 4. Report.
  std::vector<std::vector<std::string>> table;
  nlohmann::json results = nlohmann::json::array();
  for (const auto& r : rows) {
    table.push_back({r.method, fmt::format("{:.4f}", r.gflops), fmt::format("{:.1f}", r.top1),
                     fmt::format("{:.1f}", r.map), r.iou >= 0 ? fmt::format("{:.3f}", r.iou) : "-"});
    nlohmann::json j{{"method", r.method}, {"gflops", r.gflops}, {"top1", r.top1}, {"top5", r.top5}, {"map", r.map}};
    if (r.iou >= 0) j["iou"] = r.iou;
    results.push_back(j);
  }
  fmt::print("\n");
  print_table({"method", "GFLOPs/video", "top-1", "mAP", "IoU patch/item"}, table);
  write_file_atomic(args.out + "/results.json", results.dump(2) + "\n");
  std::vector<Row> plotted;
  for (const auto& r : rows)
    if (r.note.empty()) plotted.push_back(r);
  write_plot(args.out + "/accuracy_vs_gflops.svg", plotted);

  // What the papers claim, checked on these numbers.
  auto find = [&](const std::string& name) -> const Row* {
    for (const auto& r : rows)
      if (r.method == name) return &r;
    return nullptr;
  };
  const Row *v2 = find("adafocus_v2"), *full = find("full_frame_full_res"), *low = find("full_frame_low_res"),
            *random = find("random_patch"), *v2_random = find("adafocus_v2 (random patches at test)"),
            *v2_center = find("adafocus_v2 (center patches at test)");
  auto claim = [](bool ok, const std::string& text) { fmt::print("  [{}] {}\n", ok ? "yes" : "NO ", text); };
  fmt::print("\nClaims on this run:\n");
  if (v2 && full) {
    claim(v2->gflops <= full->gflops / 3, fmt::format("AdaFocusV2 costs <= 1/3 of full-frame full-res ({:.1f}%)",
                                                      100 * v2->gflops / full->gflops));
    claim(v2->top1 >= 0.9 * full->top1, fmt::format("and reaches >= 90% of its top-1 ({:.1f}%)", 100 * v2->top1 / full->top1));
  }
  if (v2 && low) claim(v2->top1 >= low->top1 + 5, fmt::format("beats full-frame low-res by >= 5 points ({:+.1f})", v2->top1 - low->top1));
  if (v2 && random) {
    claim(v2->iou >= 2 * random->iou, fmt::format("its patches overlap the item >= 2x as much as random ones "
                                                  "(IoU {:.3f} vs {:.3f})", v2->iou, random->iou));
    claim(v2->top1 >= random->top1 + 3, fmt::format("beats the random_patch model by >= 3 points ({:+.1f})", v2->top1 - random->top1));
  }
  if (v2 && v2_random && v2_center)
    claim(v2->top1 > v2_random->top1 && v2->top1 > v2_center->top1,
          fmt::format("on the same model, policy patches beat random and centre ones ({:.1f} vs {:.1f} / {:.1f})",
                      v2->top1, v2_random->top1, v2_center->top1));

  // 5. Where AdaFocusV2 looks, on a validation video in which the item shows.
  if (fs::exists(args.out + "/adafocus_v2.pt")) {
    methods::LoadedModel m = methods::load_model(args.out + "/adafocus_v2.pt", "", {}, runtime.torch_device());
    const io::ListFile val = io::read_list(data_dir + "/val.txt");
    const std::string video = data_dir + "/" + val.entries.front().path;
    infer::visualize(video, m, infer::predict_video(m, video, runtime.torch_device()), args.out + "/focus.gif");
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  fmt::print("\n{}: results.json, accuracy_vs_gflops.svg, focus.gif and one .pt per method ({:.0f} s)\n", args.out,
             seconds);
  return 0;
}

}  // namespace

void add_demo_command(CLI::App& app, Commands& commands, const Runtime& runtime) {
  auto args = std::make_shared<DemoArgs>();
  CLI::App* sub = app.add_subcommand(
      "demo", "train AdaFocusV2 and its baselines on the built-in benchmark and show accuracy vs GFLOPs");
  sub->add_option("--out", args->out, "folder for the benchmark, runs, models and results");
  sub->add_option("--methods", args->methods, "comma-separated presets of configs/benchmark/");
  sub->add_option("--train-videos", args->train_videos, "benchmark videos to train on")->check(CLI::PositiveNumber);
  sub->add_option("--val-videos", args->val_videos, "benchmark videos to evaluate on")->check(CLI::PositiveNumber);
  sub->add_option("--epochs", args->epochs, "> 0: override every method's epochs (a quick look)");
  sub->add_option("--full-res-epochs", args->full_res_epochs, "> 0: override full_frame_full_res's epochs");
  sub->add_option("--pretrain-images", args->pretrain_images, "single items the patch network is pretrained on")
      ->check(CLI::PositiveNumber);
  sub->add_option("--set", args->overrides, "key=value applied to every method (e.g. --set data.batch_size=16)");
  commands.push_back({sub, [args, &runtime] { return run(*args, runtime); }});
}

}  // namespace adafocus::cli
