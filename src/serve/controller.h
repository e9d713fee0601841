// The load-adaptive budget (the AdaFocusV3 paper's online budget, done for real): the server serves every request at
// one of the calibrated budgets (the levels) and picks, as requests arrive, the largest level whose predicted
// latency - the work queued ahead plus the request's own - meets the SLO. It lowers the level in force at once when
// the queue grows and raises it one level at a time, only when that level would meet the SLO with room to spare
// (a margin) and a hold time has passed since the last change, so that it does not oscillate. Below the lowest
// allowed level it sheds: the request is refused (503) with the time after which to retry.
//
// The time of a video at each level is measured online: batches of n videos costing G GFLOPs in all take
// s = a n + b G seconds, a and b fitted by exponentially weighted least squares over the batches run, so a video at
// a level of g GFLOPs takes a + b g. Decoding an upload takes d seconds (a moving average), the same at every level;
// with P decoding threads, a request that has k uploads to decode before its own waits k d / P for them. Its
// predicted latency is that, plus d, plus the network time of every video admitted before it, plus its own:
// a sum rather than a pipeline's max, as decoding and the network share the same cores.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <vector>

namespace adafocus::serve {

/// A calibrated setting of the exit thresholds.
struct Level {
  double gflops = 0;  ///< what it costs per video on average (the calibration's expectation)
  double top1 = 0;    ///< its accuracy on the calibration videos
};

struct ControllerOptions {
  double slo_seconds = 0;                ///< 0: no latency objective (only the queue bound sheds)
  size_t min_level = 0;                  ///< the cheapest level requests may be lowered to (--min-budget)
  double raise_margin = 0.7;             ///< raise only when the next level's prediction is under this share of the SLO
  std::chrono::milliseconds hold{1000};  ///< no raise sooner than this after a change
  double decay = 0.9;                    ///< weight of the past at each batch in the cost fit (and at each decode)
  int decoders = 1;                      ///< threads decoding uploads
};

struct Admission {
  bool accepted = false;
  size_t level = 0;        ///< the level it is served at
  bool degraded = false;   ///< below the level it asked for
  double predicted = 0;    ///< predicted seconds until its answer
  double retry_after = 0;  ///< refused: seconds after which the load is likely lower
};

class BudgetController {
 public:
  BudgetController(std::vector<Level> levels, ControllerOptions options);
  /// A batch of `videos` costing `gflops` in all took `seconds`.
  void observe_batch(int64_t videos, double gflops, double seconds);
  /// Decoding an upload took `seconds`.
  void observe_decode(double seconds);
  /// Seconds a video at `level` is predicted to take in the network (in a batch of its kind).
  double video_seconds(size_t level) const;
  /// A request asking for level `asked`, with `work_ahead` seconds of network work admitted before it,
  /// `decodes_ahead` uploads to decode before it, and its own to decode when `decode` (an upload, not a stream's
  /// window).
  Admission admit(size_t asked, bool degrade, double work_ahead, int64_t decodes_ahead = 0, bool decode = false);
  size_t level_in_force() const;
  const std::vector<Level>& levels() const { return levels_; }

 private:
  double seconds_at(size_t level) const;  // without the lock

  const std::vector<Level> levels_;
  const ControllerOptions options_;
  mutable std::mutex mutex_;
  double snn_ = 0, sng_ = 0, sgg_ = 0, sns_ = 0, sgs_ = 0;  // weighted sums of the normal equations
  double a_ = 0, b_ = 0;                                    // seconds per video, per GFLOP
  double decode_ = 0, decode_weight_ = 0;                   // decoding: weighted sum of seconds, of weights
  size_t in_force_;
  std::chrono::steady_clock::time_point changed_;
};

}  // namespace adafocus::serve
