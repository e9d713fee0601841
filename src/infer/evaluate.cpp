#include "infer/evaluate.h"

#include <filesystem>

#include "data/loader.h"
#include "infer/predictor.h"

namespace adafocus::infer {

namespace {

// Mean IoU of a batch's regions with the ground-truth item boxes, in original frame pixels.
void add_iou(const data::Batch& batch, const torch::Tensor& regions, const data::VideoDataset& dataset,
             const std::map<std::string, data::VideoTruth>& truth, int test_resize, double& sum, int64_t& count) {
  for (size_t i = 0; i < batch.samples.size(); ++i) {
    auto it = truth.find(dataset.entry(batch.indices[i]).path);
    if (it == truth.end()) continue;
    const data::Sample& s = batch.samples[i];
    const double to_original = static_cast<double>(it->second.size) / s.frame_width;  // decoded -> generated frame
    for (const Region& region : frame_regions(regions[static_cast<int64_t>(i)], s, test_resize)) {
      if (region.frame < it->second.first_visible || region.frame > it->second.last_visible) continue;
      std::array<double, 4> b = region.box;
      for (double& v : b) v *= to_original;
      sum += box_iou(b, it->second.boxes.at(static_cast<size_t>(region.frame)));
      ++count;
    }
  }
}

}  // namespace

Evaluation evaluate(methods::MethodImpl& method, const Config& config, const EvalOptions& options) {
  data::VideoDataset dataset(data::DatasetOptions::from_config(config, options.list_key, false));
  data::LoaderOptions lo = data::LoaderOptions::from_config(config, false);
  data::Loader loader(dataset, lo);

  std::map<std::string, data::VideoTruth> truth;
  const auto meta = std::filesystem::path(dataset.options().list).parent_path() / "meta.jsonl";
  if (std::filesystem::exists(meta)) truth = data::read_synthetic_truth(meta.string());

  if (!options.policy.empty()) method.set_policy(options.policy);
  method.eval();
  torch::NoGradGuard no_grad;
  torch::manual_seed(static_cast<uint64_t>(config.get_int("seed")));  // random test-time patches repeat
  Evaluation e;
  std::vector<torch::Tensor> logits, labels, centres;
  double iou_sum = 0;
  loader.start_epoch(0);
  const int64_t batches = loader.batches_per_epoch();
  int64_t done = 0;
  while (auto batch = loader.next()) {
    methods::Clips clips{batch->clips.to(options.device),
                         batch->focus.defined() ? batch->focus.to(options.device) : torch::Tensor()};
    const methods::Prediction p = method.predict(clips);
    logits.push_back(p.logits.cpu());
    labels.push_back(batch->labels);
    if (p.regions.defined()) {
      centres.push_back((p.regions.select(2, 0) + p.regions.select(2, 2) / 2).flatten().cpu());
      centres.push_back((p.regions.select(2, 1) + p.regions.select(2, 3) / 2).flatten().cpu());
      if (!truth.empty())
        add_iou(*batch, p.regions, dataset, truth, static_cast<int>(config.get_int("data.test_resize")), iou_sum,
                e.iou_frames);
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
  e.scores = classification_scores(e.logits.select(1, e.logits.size(1) - 1), e.labels);
  if (e.iou_frames > 0) e.iou = iou_sum / static_cast<double>(e.iou_frames);
  if (!centres.empty()) e.region_spread = torch::cat(centres).std().item<double>() / config.get_int("data.input_size");
  e.flops = method_flops(method, config.get_int("data.segments"), config.get_int("data.focus_segments"),
                         config.get_int("data.input_size"));
  return e;
}

}  // namespace adafocus::infer
