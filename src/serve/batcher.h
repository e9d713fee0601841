// Batching across requests, exit by exit. Decoded videos wait in a queue; one thread takes up to max_batch of them
// (waiting at most max_delay after the oldest arrived, and only while more are being decoded) and runs them through the
// same exit-by-exit path as eval and predict (infer::run_adaptive), each video with its own exit thresholds (the budget
// it is served at). A video's answer goes out as it leaves the batch, not when the batch ends.
//
// Choice: videos that arrive while a batch runs wait for the next batch rather than join it midway. A method's
// steps are not alike (V3: glance and policy at exit 0, one cube per exit after), so a newcomer would need its own
// exit 0 beside the others' exit k - a second, smaller batch in the same step, sharing nothing but the classifier
// heads. Since videos leave early, batches are short, and the next one starts as soon as this one ends.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "data/dataset.h"
#include "infer/adaptive.h"
#include "infer/precision.h"
#include "methods/checkpoint.h"

namespace adafocus::serve {

/// What the network gave one video.
struct VideoResult {
  torch::Tensor logits;                  ///< (C) at the exit it left at
  torch::Tensor regions, region_frames;  ///< (R, 4), (R, F) what it looked at (undefined: nothing)
  int64_t exit = 0;
  double gflops = 0;                    ///< what it cost
  double queue_ms = 0, network_ms = 0;  ///< waiting for its batch; in the network until it left
};

struct Job {
  data::Sample sample;                    ///< the decoded clip (test view)
  const infer::ExitRule* rule = nullptr;  ///< its exit thresholds; null: every exit runs
  std::chrono::steady_clock::time_point queued;
  /// Called once, from the batching thread: the result, or an error message when the batch failed.
  std::function<void(const VideoResult* result, const std::string& error)> done;
};

struct BatcherOptions {
  int64_t max_batch = 8;
  std::chrono::microseconds max_delay{10000};
  torch::Device device = torch::kCPU;
  infer::Precision precision = infer::Precision::Fp32;
  std::vector<double> exit_gflops;  ///< what leaving at each exit costs a video (infer::MethodFlops::exits)
};

class Batcher {
 public:
  /// `on_batch(videos, gflops, seconds, exits)` after each batch (the controller's measurement, the metrics).
  Batcher(
      methods::LoadedModel& model, BatcherOptions options,
      std::function<void(int64_t videos, double gflops, double seconds, const std::vector<int64_t>& exits)> on_batch);
  ~Batcher();
  /// A video is on its way (admitted, being decoded): batches wait for it, at most max_delay. Each expect() is
  /// followed by one submit(job, true) or one unexpect() (its decoding failed).
  void expect();
  void unexpect();
  void submit(std::shared_ptr<Job> job, bool expected = false);
  size_t queued() const;
  /// Runs what is queued, then stops the thread.
  void drain();

 private:
  void loop();
  void run(std::vector<std::shared_ptr<Job>>& batch);

  methods::LoadedModel& model_;
  const BatcherOptions options_;
  std::function<void(int64_t, double, double, const std::vector<int64_t>&)> on_batch_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Job>> queue_;
  int64_t coming_ = 0;  // expected and not submitted yet
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace adafocus::serve
