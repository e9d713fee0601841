#include "infer/early_exit.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <numeric>

#include "core/error.h"

namespace adafocus::infer {

namespace {

constexpr const char* kFormat = "adafocus-exits-1";
// Thresholds nobody / everybody reaches. Finite, so that they survive JSON (which has no infinities).
constexpr double kNobody = 1e30, kEverybody = -1e30;
// q at or above this puts everyone at the last exit.
constexpr double kAllLast = 1e12;

std::vector<double> column(const torch::Tensor& t, int64_t k) {
  const auto c = t.select(1, k).to(torch::kDouble).contiguous();
  return {c.data_ptr<double>(), c.data_ptr<double>() + c.numel()};
}

void check_shapes(const torch::Tensor& scores, const torch::Tensor& correct, const std::vector<double>& exit_gflops) {
  TORCH_CHECK(scores.dim() == 2 && scores.size(0) > 0, "early exit: scores must be (N, K), got ", scores.sizes());
  TORCH_CHECK(correct.sizes() == scores.sizes(), "early exit: correct ", correct.sizes(), " vs scores ", scores.sizes());
  TORCH_CHECK(static_cast<int64_t>(exit_gflops.size()) == scores.size(1), "early exit: ", exit_gflops.size(),
              " exit costs for ", scores.size(1), " exits");
}

ExitSetting setting_of(const torch::Tensor& scores, const torch::Tensor& correct, const std::vector<double>& exit_gflops,
                       double q, int64_t first) {
  check_shapes(scores, correct, exit_gflops);
  ExitSetting s;
  s.q = q;
  s.first = first;
  const int64_t n = scores.size(0), k = scores.size(1);
  s.thresholds = fit_thresholds(scores, geometric_proportions(q, k, first));
  const auto exits = take_exits(scores, s.thresholds);
  const auto counts = torch::bincount(exits, {}, k).to(torch::kDouble) / static_cast<double>(n);
  s.proportions.assign(counts.data_ptr<double>(), counts.data_ptr<double>() + k);
  for (int64_t e = 0; e < k; ++e) s.gflops += s.proportions[static_cast<size_t>(e)] * exit_gflops[static_cast<size_t>(e)];
  s.top1 = 100.0 * correct.to(torch::kDouble).gather(1, exits.unsqueeze(1)).mean().item<double>();
  return s;
}

nlohmann::json setting_json(const ExitSetting& s) {
  nlohmann::json j{{"q", s.q},           {"first", s.first},  {"thresholds", s.thresholds},
                   {"proportions", s.proportions}, {"gflops", s.gflops}, {"top1", s.top1}};
  if (s.budget >= 0) j["budget"] = s.budget;
  return j;
}

// An integer field, `absent` when missing (a JSON float past int64's range would be undefined behaviour to convert).
int64_t integer_field(const nlohmann::json& j, const char* key, int64_t absent) {
  if (!j.contains(key)) return absent;
  const auto& v = j.at(key);
  if (!v.is_number_integer()) throw nlohmann::json::type_error::create(302, std::string(key) + " must be an integer", &v);
  return v.get<int64_t>();
}

ExitSetting setting_from(const nlohmann::json& j) {
  ExitSetting s;
  s.budget = j.value("budget", -1.0);
  s.q = j.at("q");
  s.first = integer_field(j, "first", 0);
  s.thresholds = j.at("thresholds").get<std::vector<double>>();
  s.proportions = j.at("proportions").get<std::vector<double>>();
  s.gflops = j.at("gflops");
  s.top1 = j.at("top1");
  return s;
}

}  // namespace

Criterion parse_criterion(const std::string& name) {
  if (name == "max_logit") return Criterion::MaxLogit;
  if (name == "max_softmax") return Criterion::MaxSoftmax;
  if (name == "entropy") return Criterion::Entropy;
  throw Error("unknown exit criterion '" + name + "'", "",
              "use entropy (the V3 paper), max_logit (the official 'confidence') or max_softmax");
}

std::string criterion_name(Criterion c) {
  switch (c) {
    case Criterion::MaxLogit: return "max_logit";
    case Criterion::MaxSoftmax: return "max_softmax";
    case Criterion::Entropy: return "entropy";
  }
  return "?";
}

torch::Tensor exit_scores(const torch::Tensor& logits, Criterion c) {
  TORCH_CHECK(logits.dim() == 3, "exit_scores: logits must be (N, K, C), got ", logits.sizes());
  const auto x = logits.to(torch::kDouble);
  switch (c) {
    case Criterion::MaxLogit: return std::get<0>(x.max(2));
    case Criterion::MaxSoftmax: return std::get<0>(torch::softmax(x, 2).max(2));
    case Criterion::Entropy: {
      const auto log_p = torch::log_softmax(x, 2);
      return (log_p.exp() * log_p).sum(2);  // -H: 0 for a certain prediction
    }
  }
  return {};
}

torch::Tensor exit_correct(const torch::Tensor& logits, const torch::Tensor& labels) {
  TORCH_CHECK(logits.dim() == 3 && labels.dim() == 2 && labels.size(0) == logits.size(0),
              "exit_correct: logits (N, K, C) and labels (N, L), got ", logits.sizes(), " and ", labels.sizes());
  const auto top = logits.argmax(2);                                                      // (N, K)
  return (top.unsqueeze(2) == labels.to(top.device()).unsqueeze(1)).any(2);               // (N, K)
}

std::vector<double> geometric_proportions(double q, int64_t exits, int64_t first) {
  TORCH_CHECK(first >= 0 && first < exits, "geometric_proportions: first exit ", first, " of ", exits);
  std::vector<double> p(static_cast<size_t>(exits), 0.0);
  if (q <= 0) {
    p[static_cast<size_t>(first)] = 1.0;
    return p;
  }
  if (q >= kAllLast) {
    p.back() = 1.0;
    return p;
  }
  // q^k / sum_j q^j, computed relative to the largest term so that large q does not overflow.
  const int64_t n = exits - first;
  const double largest = q >= 1 ? static_cast<double>(n) : 1.0;
  double sum = 0;
  for (int64_t k = 1; k <= n; ++k)
    sum += p[static_cast<size_t>(first + k - 1)] = std::pow(q, static_cast<double>(k) - largest);
  for (double& v : p) v /= sum;
  return p;
}

std::vector<double> fit_thresholds(const torch::Tensor& scores, const std::vector<double>& proportions) {
  TORCH_CHECK(scores.dim() == 2 && static_cast<int64_t>(proportions.size()) == scores.size(1),
              "fit_thresholds: scores (N, K) and K proportions, got ", scores.sizes(), " and ", proportions.size());
  const int64_t n = scores.size(0), k = scores.size(1);
  std::vector<double> thresholds(static_cast<size_t>(k), kNobody);
  thresholds.back() = kEverybody;
  std::vector<bool> left(static_cast<size_t>(n), false);
  for (int64_t e = 0; e + 1 < k; ++e) {
    const std::vector<double> s = column(scores, e);
    std::vector<int64_t> present;
    for (int64_t i = 0; i < n; ++i)
      if (!left[static_cast<size_t>(i)]) present.push_back(i);
    std::stable_sort(present.begin(), present.end(),
                     [&](int64_t a, int64_t b) { return s[static_cast<size_t>(a)] > s[static_cast<size_t>(b)]; });
    // The official quota: floor(N p_k) of the whole set, taken from those still present.
    const auto quota = static_cast<size_t>(std::floor(static_cast<double>(n) * proportions[static_cast<size_t>(e)]));
    double& t = thresholds[static_cast<size_t>(e)];
    if (quota == 0) continue;
    if (quota >= present.size()) {
      t = kEverybody;
    } else {
      t = 0.5 * (s[static_cast<size_t>(present[quota - 1])] + s[static_cast<size_t>(present[quota])]);
      if (t <= s[static_cast<size_t>(present[quota])]) t = s[static_cast<size_t>(present[quota - 1])];  // a tie
    }
    for (int64_t i : present)
      if (s[static_cast<size_t>(i)] >= t) left[static_cast<size_t>(i)] = true;
  }
  return thresholds;
}

torch::Tensor take_exits(const torch::Tensor& scores, const std::vector<double>& thresholds) {
  TORCH_CHECK(scores.dim() == 2 && static_cast<int64_t>(thresholds.size()) == scores.size(1),
              "take_exits: scores (N, K) and K thresholds, got ", scores.sizes(), " and ", thresholds.size());
  auto t = torch::tensor(thresholds, torch::kDouble).to(scores.device());
  t.index_put_({-1}, kEverybody);  // everyone still present leaves at the last exit
  const auto reached = scores.to(torch::kDouble) >= t.unsqueeze(0);  // (N, K)
  return reached.to(torch::kLong).argmax(1);                          // the first exit reached
}

ExitSetting geometric_setting(const torch::Tensor& scores, const torch::Tensor& correct,
                              const std::vector<double>& exit_gflops, double q, int64_t first) {
  return setting_of(scores, correct, exit_gflops, q, first);
}

ExitSetting budget_setting(const torch::Tensor& scores, const torch::Tensor& correct,
                           const std::vector<double>& exit_gflops, double budget) {
  // q = 0 (everyone at the first exit), a grid of q from 1e-3 to 1e3 (ratio 1.059), and everyone at the last.
  std::vector<double> qs{0.0};
  for (int i = 0; i <= 240; ++i) qs.push_back(std::pow(10.0, -3.0 + i / 40.0));
  qs.push_back(kAllLast);
  const double tolerance = 1e-9 * std::max(1.0, std::abs(budget));
  ExitSetting best, cheapest;
  bool found = false, any = false;
  for (int64_t first = 0; first < scores.size(1); ++first)
    for (double q : qs) {
      ExitSetting s = setting_of(scores, correct, exit_gflops, q, first);
      if (!any || s.gflops < cheapest.gflops) cheapest = s;
      any = true;
      if (s.gflops > budget + tolerance) continue;
      if (!found || s.top1 > best.top1 || (s.top1 == best.top1 && s.gflops < best.gflops)) best = s;
      found = true;
    }
  ExitSetting out = found ? best : cheapest;
  out.budget = budget;
  return out;
}

ExitSetting ExitTable::for_budget(double budget) const {
  const ExitSetting* best = nullptr;
  for (const auto* list : {&budgets, &sweep})
    for (const auto& s : *list) {
      if (s.gflops > budget * (1 + 1e-9)) continue;
      if (!best || s.top1 > best->top1 || (s.top1 == best->top1 && s.gflops < best->gflops)) best = &s;
    }
  if (best) return *best;
  ExitSetting first;  // nothing fits: the cheapest there is
  first.budget = budget;
  first.thresholds.assign(exit_gflops.size(), kEverybody);
  first.proportions.assign(exit_gflops.size(), 0.0);
  first.proportions.front() = 1.0;
  first.gflops = exit_gflops.front();
  first.top1 = exit_top1.empty() ? 0 : exit_top1.front();
  return first;
}

std::string ExitTable::to_json() const {
  nlohmann::json j{{"format", kFormat},       {"criterion", criterion_name(criterion)},
                   {"calibration", calibration}, {"videos", videos},
                   {"exit_gflops", exit_gflops}, {"exit_top1", exit_top1}};
  j["budgets"] = nlohmann::json::array();
  for (const auto& s : budgets) j["budgets"].push_back(setting_json(s));
  j["sweep"] = nlohmann::json::array();
  for (const auto& s : sweep) j["sweep"].push_back(setting_json(s));
  return j.dump(2) + "\n";
}

ExitTable ExitTable::from_json(const std::string& text, const std::string& source) {
  try {
    const auto j = nlohmann::json::parse(text);
    if (j.value("format", "") != kFormat)
      throw Error("not an exit table (format '" + j.value("format", "") + "', expected " + kFormat + ")", source,
                  "write one with adafocus calibrate");
    ExitTable t;
    t.criterion = parse_criterion(j.at("criterion"));
    t.calibration = j.value("calibration", "");
    t.videos = integer_field(j, "videos", 0);
    t.exit_gflops = j.at("exit_gflops").get<std::vector<double>>();
    if (t.exit_gflops.empty()) throw Error("an exit table without exits", source, "write the table again with adafocus calibrate");
    t.exit_top1 = j.value("exit_top1", std::vector<double>{});
    for (const auto& s : j.at("budgets")) t.budgets.push_back(setting_from(s));
    for (const auto& s : j.at("sweep")) t.sweep.push_back(setting_from(s));
    for (const auto* list : {&t.budgets, &t.sweep})
      for (const auto& s : *list)
        if (s.thresholds.size() != t.exit_gflops.size() || s.proportions.size() != t.exit_gflops.size())
          throw Error(fmt::format("a setting has {} thresholds and {} proportions for {} exits", s.thresholds.size(),
                                  s.proportions.size(), t.exit_gflops.size()),
                      source, "write the table again with adafocus calibrate");
    return t;
  } catch (const nlohmann::json::exception& e) {
    throw Error(std::string("malformed exit table: ") + e.what(), source, "write one with adafocus calibrate");
  }
}

ExitTable fit_exit_table(const torch::Tensor& logits, const torch::Tensor& labels, Criterion criterion,
                         const std::vector<double>& exit_gflops, const std::vector<double>& budgets) {
  ExitTable t;
  t.criterion = criterion;
  t.exit_gflops = exit_gflops;
  t.videos = logits.size(0);
  const auto scores = exit_scores(logits, criterion);
  const auto correct = exit_correct(logits, labels);
  const auto mean = (correct.to(torch::kDouble).mean(0) * 100.0).contiguous();
  t.exit_top1.assign(mean.data_ptr<double>(), mean.data_ptr<double>() + mean.numel());
  for (double b : budgets) t.budgets.push_back(budget_setting(scores, correct, exit_gflops, b));
  for (int i = 5; i <= 39; ++i) t.sweep.push_back(geometric_setting(scores, correct, exit_gflops, i / 10.0));
  return t;
}

}  // namespace adafocus::infer
