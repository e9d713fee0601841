#include "infer/evaluate.h"

#include <filesystem>

#include "data/loader.h"
#include "infer/predictor.h"

namespace adafocus::infer {

namespace {

// Where the regions looked at fall, against the ground truth, in original frame pixels.
struct Overlap {
  double iou_sum = 0;
  int64_t iou_frames = 0;       // frames looked at in which the item is visible
  int64_t frames = 0;           // frames looked at
  std::vector<double> on_item;  // by the order of the regions: visible frames among those looked at
  std::vector<int64_t> counts;
};

void add_overlap(const data::Sample& s, const std::string& path, const torch::Tensor& regions,
                 const torch::Tensor& region_frames, const std::map<std::string, data::VideoTruth>& truth,
                 int test_resize, Overlap& o) {
  auto it = truth.find(path);
  if (it == truth.end()) return;
  const double to_original = static_cast<double>(it->second.size) / s.frame_width;  // decoded -> generated frame
  const auto r = static_cast<size_t>(regions.size(0));
  if (o.on_item.size() < r) o.on_item.resize(r), o.counts.resize(r);
  for (size_t i = 0; i < r; ++i) {
    const auto frames = frame_regions(regions.narrow(0, static_cast<int64_t>(i), 1),
                                      region_frames.narrow(0, static_cast<int64_t>(i), 1), s, test_resize);
    for (const Region& region : frames) {
      ++o.frames;
      if (region.frame < it->second.first_visible || region.frame > it->second.last_visible) continue;
      std::array<double, 4> b = region.box;
      for (double& v : b) v *= to_original;
      o.iou_sum += box_iou(b, it->second.boxes.at(static_cast<size_t>(region.frame)));
      ++o.iou_frames;
      o.on_item[i] += 1.0 / static_cast<double>(frames.size());
    }
    ++o.counts[i];
  }
}

}  // namespace

Evaluation evaluate(methods::MethodImpl& method, const Config& config, const EvalOptions& options) {
  data::DatasetOptions dataset_options = data::DatasetOptions::from_config(config, options.list_key, false);
  dataset_options.limit = options.max_videos;
  data::VideoDataset dataset(dataset_options);
  data::LoaderOptions lo = data::LoaderOptions::from_config(config, false);
  data::Loader loader(dataset, lo);

  std::map<std::string, data::VideoTruth> truth;
  const auto meta = std::filesystem::path(dataset.options().list).parent_path() / "meta.jsonl";
  if (std::filesystem::exists(meta)) truth = data::read_synthetic_truth(meta.string());
  const int test_resize = static_cast<int>(config.get_int("data.test_resize"));

  if (!options.policy.empty()) method.set_policy(options.policy);
  method.eval();
  torch::NoGradGuard no_grad;
  torch::manual_seed(static_cast<uint64_t>(config.get_int("seed")));  // random test-time patches repeat
  Evaluation e;
  std::vector<torch::Tensor> logits, labels, centres, final_logits, exits;
  Overlap overlap;
  int64_t macs = 0;
  loader.start_epoch(0);
  const int64_t batches = loader.batches_per_epoch();
  int64_t done = 0;
  while (auto batch = loader.next()) {
    methods::Clips clips{batch->clips.to(options.device),
                         batch->focus.defined() ? batch->focus.to(options.device) : torch::Tensor()};
    std::vector<torch::Tensor> regions, region_frames;  // per video
    if (options.exit_rule) {
      AdaptiveResult r = run_adaptive(method, clips, *options.exit_rule, true);
      macs += r.macs;
      logits.push_back(r.exit_logits.cpu());
      final_logits.push_back(r.logits.cpu());
      exits.push_back(r.exits);
      regions = std::move(r.regions);
      region_frames = std::move(r.region_frames);
    } else {
      const methods::Prediction p = method.predict(clips);
      logits.push_back(p.logits.cpu());
      for (int64_t i = 0; p.regions.defined() && i < p.regions.size(0); ++i) {
        regions.push_back(p.regions[i]);
        region_frames.push_back(p.region_frames[i]);
      }
    }
    labels.push_back(batch->labels);
    for (size_t i = 0; i < regions.size(); ++i) {
      if (!regions[i].defined()) continue;
      const auto r = regions[i].cpu();
      centres.push_back(torch::stack({r.select(1, 0) + r.select(1, 2) / 2, r.select(1, 1) + r.select(1, 3) / 2}));
      add_overlap(batch->samples[i], dataset.entry(batch->indices[i]).path, r, region_frames[i], truth, test_resize,
                  overlap);
    }
    if (options.progress) options.progress(++done, batches);
  }
  e.logits = torch::cat(logits);
  const int64_t width = std::max<int64_t>(1, std::max_element(labels.begin(), labels.end(), [](const auto& a, const auto& b) {
                                                return a.size(1) < b.size(1);
                                              })->size(1));
  for (auto& l : labels)  // pad to the widest batch's number of labels
    l = torch::cat({l, torch::full({l.size(0), width - l.size(1)}, -1, torch::kLong)}, 1);
  e.labels = torch::cat(labels);
  e.videos = e.logits.size(0);
  if (options.exit_rule) {
    e.exits = torch::cat(exits);
    e.scores = classification_scores(torch::cat(final_logits), e.labels);
    e.counted_gflops = static_cast<double>(macs) * 1e-9 / static_cast<double>(e.videos);
  } else {
    e.scores = classification_scores(e.logits.select(1, e.logits.size(1) - 1), e.labels);
    const auto top1 = (exit_correct(e.logits, e.labels).to(torch::kDouble).mean(0) * 100.0).contiguous();
    e.exit_top1.assign(top1.data_ptr<double>(), top1.data_ptr<double>() + top1.numel());
  }
  if (overlap.iou_frames > 0) e.iou = overlap.iou_sum / static_cast<double>(overlap.iou_frames);
  if (overlap.frames > 0) e.on_item = static_cast<double>(overlap.iou_frames) / static_cast<double>(overlap.frames);
  for (size_t i = 0; i < overlap.on_item.size(); ++i)
    e.on_item_by_region.push_back(overlap.on_item[i] / static_cast<double>(std::max<int64_t>(1, overlap.counts[i])));
  e.iou_frames = overlap.iou_frames;
  if (!centres.empty()) e.region_spread = torch::cat(centres, 1).std().item<double>() / config.get_int("data.input_size");
  e.flops = method_flops(method, config.get_int("data.segments"), config.get_int("data.focus_segments"),
                         config.get_int("data.input_size"));
  return e;
}

ExitTable calibrate(methods::MethodImpl& method, const Config& config, EvalOptions options, Criterion criterion,
                    const std::vector<double>& budgets) {
  options.exit_rule = ExitRule{criterion, {}};  // every exit runs
  const Evaluation e = evaluate(method, config, options);
  ExitTable table = fit_exit_table(e.logits, e.labels, criterion, e.flops.exits, budgets.empty() ? e.flops.exits : budgets);
  table.calibration = config.get_string(options.list_key);
  return table;
}

}  // namespace adafocus::infer
