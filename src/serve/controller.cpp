#include "serve/controller.h"

#include <algorithm>
#include <cmath>

namespace adafocus::serve {

BudgetController::BudgetController(std::vector<Level> levels, ControllerOptions options)
    : levels_(std::move(levels)),
      options_(options),
      in_force_(levels_.empty() ? 0 : levels_.size() - 1),
      changed_(std::chrono::steady_clock::now()) {}

void BudgetController::observe_batch(int64_t videos, double gflops, double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  const double n = static_cast<double>(videos), w = options_.decay;
  snn_ = w * snn_ + n * n, sng_ = w * sng_ + n * gflops, sgg_ = w * sgg_ + gflops * gflops;
  sns_ = w * sns_ + n * seconds, sgs_ = w * sgs_ + gflops * seconds;
  const double det = snn_ * sgg_ - sng_ * sng_;
  if (det > 1e-12 * snn_ * sgg_) {  // two unknowns: batches of different costs
    a_ = (sns_ * sgg_ - sgs_ * sng_) / det;
    b_ = (snn_ * sgs_ - sng_ * sns_) / det;
  }
  if (!(det > 1e-12 * snn_ * sgg_) || a_ < 0 || b_ < 0) {
    // Batches all alike so far (or a fit that says a video costs less than nothing): time in proportion to videos.
    a_ = sns_ / snn_;
    b_ = 0;
  }
}

void BudgetController::observe_decode(double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  decode_ = options_.decay * decode_ + seconds;
  decode_weight_ = options_.decay * decode_weight_ + 1;
}

double BudgetController::seconds_at(size_t level) const {
  return a_ + b_ * (levels_.empty() ? 0.0 : levels_[std::min(level, levels_.size() - 1)].gflops);
}

double BudgetController::video_seconds(size_t level) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return seconds_at(level);
}

Admission BudgetController::admit(size_t asked, bool degrade, double work_ahead, int64_t decodes_ahead, bool decode) {
  std::lock_guard<std::mutex> lock(mutex_);
  Admission out;
  asked = std::min(asked, levels_.empty() ? 0 : levels_.size() - 1);
  const double slo = options_.slo_seconds;
  const double d = decode_weight_ > 0 ? decode_ / decode_weight_ : 0.0;
  const double decoding = d * (static_cast<double>(decodes_ahead) / std::max(1, options_.decoders) + (decode ? 1 : 0));
  auto predicted = [&](size_t level) { return decoding + work_ahead + seconds_at(level); };
  if (slo > 0 && !levels_.empty()) {
    // The largest level that meets the SLO now: lowered to at once, raised to a level at a time with room to spare.
    size_t fits = options_.min_level;
    while (fits + 1 < levels_.size() && predicted(fits + 1) <= slo) ++fits;
    const auto now = std::chrono::steady_clock::now();
    if (fits < in_force_ || predicted(in_force_) > slo) {
      in_force_ = std::max(options_.min_level, std::min(fits, in_force_));
      changed_ = now;
    } else if (fits > in_force_ && predicted(in_force_ + 1) <= options_.raise_margin * slo &&
               now - changed_ >= options_.hold) {
      ++in_force_;
      changed_ = now;
    }
  }
  out.level = degrade ? std::min(asked, in_force_) : asked;
  out.degraded = out.level < asked;
  out.predicted = predicted(out.level);
  // Lowered as far as allowed, or not allowed to be: served only when it meets the SLO.
  out.accepted = slo <= 0 || out.predicted <= slo;
  if (!out.accepted) out.retry_after = std::max(1.0, std::ceil(out.predicted - slo));
  return out;
}

size_t BudgetController::level_in_force() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return in_force_;
}

}  // namespace adafocus::serve
