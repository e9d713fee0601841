#include "infer/evaluate.h"

#include <fmt/format.h>

#include <filesystem>

#include "core/error.h"
#include "data/loader.h"
#include "infer/predictor.h"

namespace adafocus::infer {

OverlapMeter::OverlapMeter(const std::string& list, int input_size, int test_resize)
    : input_size_(input_size), test_resize_(test_resize) {
  const auto meta = std::filesystem::path(list).parent_path() / "meta.jsonl";
  if (std::filesystem::exists(meta)) truth_ = data::read_synthetic_truth(meta.string());
}

void OverlapMeter::add(const data::Sample& s, const std::string& path, const torch::Tensor& regions,
                       const torch::Tensor& region_frames) {
  auto it = truth_.find(path);
  if (it == truth_.end()) return;
  const double to_original = static_cast<double>(it->second.size) / s.frame_width;  // decoded -> generated frame
  const auto r = static_cast<size_t>(regions.size(0));
  if (on_item_.size() < r) on_item_.resize(r), counts_.resize(r);
  for (size_t i = 0; i < r; ++i) {
    const auto frames = data::frame_regions(regions.narrow(0, static_cast<int64_t>(i), 1),
                                            region_frames.narrow(0, static_cast<int64_t>(i), 1), s, input_size_,
                                            test_resize_);
    for (const data::Region& region : frames) {
      ++frames_;
      if (region.frame < it->second.first_visible || region.frame > it->second.last_visible) continue;
      std::array<double, 4> b = region.box;
      for (double& v : b) v *= to_original;
      const double iou = box_iou(b, it->second.boxes.at(static_cast<size_t>(region.frame)));
      iou_sum_ += iou;
      hits_ += iou > 0;
      ++iou_frames_;
      on_item_[i] += 1.0 / static_cast<double>(frames.size());
    }
    ++counts_[i];
  }
}

double OverlapMeter::iou() const { return iou_frames_ > 0 ? iou_sum_ / static_cast<double>(iou_frames_) : -1; }
double OverlapMeter::hits() const { return iou_frames_ > 0 ? static_cast<double>(hits_) / static_cast<double>(iou_frames_) : -1; }
double OverlapMeter::on_item() const { return frames_ > 0 ? static_cast<double>(iou_frames_) / static_cast<double>(frames_) : -1; }

void OverlapMeter::clear() {
  iou_sum_ = 0;
  iou_frames_ = hits_ = frames_ = 0;
  on_item_.clear();
  counts_.clear();
}

void OverlapMeter::sum_across(dist::Group& group) {
  // Regions per video may be unknown to a process that saw none: the widest.
  const int64_t regions = group.all_gather_rows(torch::tensor({static_cast<int64_t>(on_item_.size())})).max().item<int64_t>();
  on_item_.resize(static_cast<size_t>(regions));
  counts_.resize(static_cast<size_t>(regions));
  std::vector<double> v{iou_sum_, static_cast<double>(iou_frames_), static_cast<double>(hits_), static_cast<double>(frames_)};
  v.insert(v.end(), on_item_.begin(), on_item_.end());
  v.insert(v.end(), counts_.begin(), counts_.end());
  auto t = torch::tensor(v, torch::kDouble);
  group.all_reduce(t);
  const auto* s = t.data_ptr<double>();
  iou_sum_ = s[0];
  iou_frames_ = static_cast<int64_t>(s[1]);
  hits_ = static_cast<int64_t>(s[2]);
  frames_ = static_cast<int64_t>(s[3]);
  for (size_t i = 0; i < on_item_.size(); ++i) {
    on_item_[i] = s[4 + i];
    counts_[i] = static_cast<int64_t>(s[4 + on_item_.size() + i]);
  }
}

std::vector<double> OverlapMeter::on_item_by_region() const {
  std::vector<double> out;
  for (size_t i = 0; i < on_item_.size(); ++i)
    out.push_back(on_item_[i] / static_cast<double>(std::max<int64_t>(1, counts_[i])));
  return out;
}

Evaluation evaluate(methods::MethodImpl& method, const Config& config, const EvalOptions& options) {
  data::DatasetOptions dataset_options = data::DatasetOptions::from_config(config, options.list_key, false);
  dataset_options.limit = options.max_videos;
  data::VideoDataset dataset(dataset_options);
  data::LoaderOptions lo = data::LoaderOptions::from_config(config, false);
  if (options.group && static_cast<int64_t>(dataset.size()) < options.group->world())
    throw Error(fmt::format("{} videos to evaluate, fewer than the {} processes", dataset.size(), options.group->world()),
                dataset.options().list, "evaluate with fewer processes, or on a longer list");
  if (options.group) {
    lo.rank = options.group->rank();
    lo.world = options.group->world();
  }
  data::Loader loader(dataset, lo);

  OverlapMeter overlap(dataset.options().list, static_cast<int>(config.get_int("data.input_size")),
                       static_cast<int>(config.get_int("data.test_resize")));

  if (!options.policy.empty()) method.set_policy(options.policy);
  method.eval();
  torch::NoGradGuard no_grad;
  torch::manual_seed(static_cast<uint64_t>(config.get_int("seed")));  // random test-time patches repeat
  Evaluation e;
  std::vector<torch::Tensor> logits, labels, centres, final_logits, exits, video_gflops;
  std::map<std::string, std::vector<torch::Tensor>> video_means, part_logits;  // by name, a tensor per batch
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
      logits.push_back(r.exit_logits.cpu().to(torch::kFloat));  // float also from a bf16 model
      final_logits.push_back(r.logits.cpu().to(torch::kFloat));
      exits.push_back(r.exits);
      regions = std::move(r.regions);
      region_frames = std::move(r.region_frames);
    } else {
      const methods::Prediction p = method.predict(clips);
      logits.push_back(p.logits.cpu().to(torch::kFloat));  // float also from a bf16 model
      if (p.gflops.defined()) video_gflops.push_back(p.gflops.cpu());
      for (const auto& [name, values] : p.video_means) video_means[name].push_back(values.cpu().to(torch::kDouble));
      for (const auto& [name, l] : p.part_logits) part_logits[name].push_back(l.cpu().to(torch::kFloat));
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
      overlap.add(batch->samples[i], dataset.entry(batch->indices[i]).path, r, region_frames[i]);
    }
    if (options.progress) options.progress(++done, batches);
  }
  int64_t width = 1;
  for (const auto& l : labels) width = std::max(width, l.size(1));
  if (options.group) width = options.group->all_gather_rows(torch::tensor({width})).max().item<int64_t>();
  for (auto& l : labels)  // pad to the widest batch's number of labels
    l = torch::cat({l, torch::full({l.size(0), width - l.size(1)}, -1, torch::kLong)}, 1);
  if (options.group) {  // every process's videos, in rank order; the counts summed
    dist::Group& group = *options.group;
    std::vector<std::vector<torch::Tensor>*> gathered{&logits, &labels, &final_logits, &exits, &video_gflops};
    for (auto* named : {&video_means, &part_logits})  // every process has the same names, in the same order
      for (auto& [name, parts] : *named) gathered.push_back(&parts);
    for (auto* parts : gathered)
      if (!parts->empty()) *parts = {group.all_gather_rows(torch::cat(*parts))};
    if (!centres.empty()) centres = {group.all_gather_rows(torch::cat(centres, 1).t()).t()};
    auto total = torch::tensor({macs});
    group.all_reduce(total);
    macs = total.item<int64_t>();
    overlap.sum_across(group);
  }
  e.logits = torch::cat(logits);
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
  if (!video_gflops.empty()) e.video_gflops = torch::cat(video_gflops).mean().item<double>();
  for (const auto& [name, parts] : video_means) e.statistics[name] = torch::cat(parts).mean().item<double>();
  for (const auto& [name, parts] : part_logits)
    e.statistics[name + "_top1"] = classification_scores(torch::cat(parts), e.labels).top1;
  e.iou = overlap.iou();
  e.on_item = overlap.on_item();
  e.on_item_by_region = overlap.on_item_by_region();
  e.iou_frames = overlap.iou_frames();
  if (!centres.empty()) e.region_spread = torch::cat(centres, 1).std().item<double>() / config.get_int("data.input_size");
  e.flops = method_flops(method, config.get_int("data.segments"), config.get_int("data.focus_segments"),
                         config.get_int("data.input_size"));
  return e;
}

ExitTable calibrate(methods::MethodImpl& method, const Config& config, EvalOptions options, Criterion criterion,
                    const std::vector<double>& budgets) {
  if (method.exits() < 2)
    throw Error(config.get_string("model.method") + " has a single exit: there is nothing to stop early", "model.method",
                "calibrate a model that predicts after every frame or cube (AdaFocusV2+, V3, V1)");
  options.exit_rule = ExitRule{criterion, {}};  // every exit runs
  const Evaluation e = evaluate(method, config, options);
  ExitTable table = fit_exit_table(e.logits, e.labels, criterion, e.flops.exits, budgets.empty() ? e.flops.exits : budgets);
  table.calibration = config.get_string(options.list_key);
  return table;
}

}  // namespace adafocus::infer
