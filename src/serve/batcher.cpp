#include "serve/batcher.h"

#include "core/progress.h"

namespace adafocus::serve {

Batcher::Batcher(methods::LoadedModel& model, BatcherOptions options,
                 std::function<void(int64_t, double, double, const std::vector<int64_t>&)> on_batch)
    : model_(model), options_(std::move(options)), on_batch_(std::move(on_batch)) {
  thread_ = std::thread([this] { loop(); });
}

Batcher::~Batcher() { drain(); }

void Batcher::expect() {
  std::lock_guard<std::mutex> lock(mutex_);
  ++coming_;
}

void Batcher::unexpect() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    --coming_;
  }
  wake_.notify_one();
}

void Batcher::submit(std::shared_ptr<Job> job, bool expected) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    job->queued = std::chrono::steady_clock::now();
    queue_.push_back(std::move(job));
    if (expected) --coming_;
  }
  wake_.notify_one();
}

size_t Batcher::queued() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return queue_.size();
}

void Batcher::drain() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_one();
  if (thread_.joinable()) thread_.join();
}

void Batcher::loop() {
  // The network runs on this thread: autocast (bf16), which is per thread, is set here.
  infer::PrecisionGuard precision(options_.precision);
  torch::NoGradGuard no_grad;
  while (true) {
    std::vector<std::shared_ptr<Job>> batch;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and everything answered
      // A full batch, or what waits once nothing more is being decoded or the oldest has waited max_delay: a video
      // alone goes at once rather than waiting for company that is not coming.
      const auto deadline = queue_.front()->queued + options_.max_delay;
      wake_.wait_until(lock, deadline, [this] {
        return stopping_ || coming_ <= 0 || static_cast<int64_t>(queue_.size()) >= options_.max_batch;
      });
      while (!queue_.empty() && static_cast<int64_t>(batch.size()) < options_.max_batch) {
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    run(batch);
  }
}

void Batcher::run(std::vector<std::shared_ptr<Job>>& batch) {
  const auto start = std::chrono::steady_clock::now();
  try {
    std::vector<torch::Tensor> frames, focus;
    std::vector<const infer::ExitRule*> rules;
    for (const auto& job : batch) {
      frames.push_back(job->sample.clip);
      if (job->sample.focus.defined()) focus.push_back(job->sample.focus);
      rules.push_back(job->rule);
    }
    const methods::Clips clips{torch::stack(frames).to(options_.device),
                               focus.empty() ? torch::Tensor() : torch::stack(focus).to(options_.device)};
    double gflops = 0;
    std::vector<int64_t> exits;
    infer::run_adaptive(
        *model_.method, clips, rules, false, [&](const std::vector<int64_t>& rows, const infer::AdaptiveResult& r) {
          const double network_ms = 1e3 * seconds_since(start);
          for (const int64_t i : rows) {
            const Job& job = *batch[static_cast<size_t>(i)];
            VideoResult v;
            v.logits = r.logits[i].cpu();
            v.regions =
                r.regions[static_cast<size_t>(i)].defined() ? r.regions[static_cast<size_t>(i)].cpu() : torch::Tensor();
            v.region_frames = r.regions[static_cast<size_t>(i)].defined()
                                  ? r.region_frames[static_cast<size_t>(i)].cpu()
                                  : torch::Tensor();
            v.exit = r.exits[i].item<int64_t>();
            v.gflops = r.video_gflops.defined() ? r.video_gflops[i].item<double>()
                                                : options_.exit_gflops.at(static_cast<size_t>(v.exit));
            v.queue_ms = 1e3 * std::chrono::duration<double>(start - job.queued).count();
            v.network_ms = network_ms;
            gflops += v.gflops;
            exits.push_back(v.exit);
            job.done(&v, "");
          }
        });
    if (on_batch_) on_batch_(static_cast<int64_t>(batch.size()), gflops, seconds_since(start), exits);
  } catch (const std::exception& e) {
    for (const auto& job : batch) job->done(nullptr, e.what());  // a job already answered ignores this
  }
}

}  // namespace adafocus::serve
