#include "infer/metrics.h"

#include <algorithm>
#include <map>

namespace adafocus::infer {

Scores classification_scores(const torch::Tensor& logits_in, const torch::Tensor& labels_in) {
  const auto logits = logits_in.detach().to(torch::kCPU, torch::kFloat);
  const auto labels = labels_in.to(torch::kCPU, torch::kLong);
  const int64_t n = logits.size(0), c = logits.size(1);
  Scores s;
  if (n == 0) return s;
  const auto first = labels.select(1, 0);
  const auto top = std::get<1>(logits.topk(std::min<int64_t>(5, c), 1));  // (N, 5)
  const auto hit5 = (top == first.unsqueeze(1)).any(1);
  const auto hit1 = top.select(1, 0) == first;
  s.top1 = 100.0 * hit1.to(torch::kDouble).mean().item<double>();
  s.top5 = 100.0 * hit5.to(torch::kDouble).mean().item<double>();

  std::map<int64_t, std::pair<int64_t, int64_t>> per_class;  // label -> (correct, count)
  for (int64_t i = 0; i < n; ++i) {
    auto& [correct, count] = per_class[first[i].item<int64_t>()];
    correct += hit1[i].item<bool>();
    ++count;
  }
  for (const auto& [label, cc] : per_class) s.mean_class += 100.0 * cc.first / cc.second;
  s.mean_class /= static_cast<double>(per_class.size());

  // cal_map: softmax scores; per class, videos sorted by score, AP = sum of precision at the positives / #positives
  // (at least 1), averaged over every class (a class without positives counts 0).
  auto truth = torch::zeros({n, c}, torch::kFloat);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < labels.size(1); ++j) {
      const int64_t l = labels[i][j].item<int64_t>();
      if (l >= 0 && l < c) truth[i][l] = 1;
    }
  const auto probs = torch::softmax(logits, 1);
  const auto rank = torch::arange(1, n + 1, torch::kFloat);
  double sum = 0;
  for (int64_t k = 0; k < c; ++k) {
    const auto order = std::get<1>(probs.select(1, k).sort(0, /*descending=*/true));
    const auto t = truth.select(1, k).index_select(0, order);
    const auto precision = t.cumsum(0) / rank;
    sum += (precision * t).sum().item<double>() / std::max(1.0, t.sum().item<double>());
  }
  s.map = 100.0 * sum / static_cast<double>(c);
  return s;
}

double box_iou(const std::array<double, 4>& a, const std::array<double, 4>& b) {
  const double x1 = std::max(a[0], b[0]), y1 = std::max(a[1], b[1]);
  const double x2 = std::min(a[0] + a[2], b[0] + b[2]), y2 = std::min(a[1] + a[3], b[1] + b[3]);
  const double inter = std::max(0.0, x2 - x1) * std::max(0.0, y2 - y1);
  const double uni = a[2] * a[3] + b[2] * b[3] - inter;
  return uni > 0 ? inter / uni : 0.0;
}

}  // namespace adafocus::infer
