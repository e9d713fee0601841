#include "data/loader.h"

#include <cstring>
#include <numeric>

#include "core/error.h"
#include "core/host.h"

namespace adafocus::data {

namespace {
// torch::stack would start an OpenMP team inside every worker thread; a plain copy keeps workers single-threaded.
torch::Tensor stack(const std::vector<torch::Tensor>& items) {
  std::vector<int64_t> shape{static_cast<int64_t>(items.size())};
  for (int64_t d : items[0].sizes()) shape.push_back(d);
  torch::Tensor out = torch::empty(shape, items[0].options());
  const size_t bytes = items[0].numel() * items[0].element_size();
  for (size_t i = 0; i < items.size(); ++i)
    std::memcpy(static_cast<char*>(out.data_ptr()) + i * bytes, items[i].contiguous().data_ptr(), bytes);
  return out;
}
}  // namespace

LoaderOptions LoaderOptions::from_config(const Config& c, bool train) {
  LoaderOptions o;
  o.batch_size = c.get_int("data.batch_size");
  o.workers = static_cast<int>(c.get_int("data.workers"));
  o.prefetch = static_cast<int>(c.get_int("data.prefetch"));
  o.shuffle = train;
  o.drop_last = train;
  o.seed = static_cast<uint64_t>(c.get_int("seed"));
  const std::string on_error = c.get_string("data.on_error");
  if (on_error != "replace" && on_error != "strict")
    throw Error("data.on_error must be replace or strict, not '" + on_error + "'", c.origin("data.on_error"));
  o.strict = on_error == "strict";
  if (o.batch_size <= 0 || o.workers < 0 || o.prefetch <= 0)
    throw Error("data.batch_size and data.prefetch must be > 0, data.workers >= 0", c.origin("data.batch_size"));
  return o;
}

Loader::Loader(const VideoDataset& dataset, LoaderOptions options) : dataset_(dataset), options_(options) {
  if (dataset_.size() == 0) throw Error("the dataset is empty", dataset_.options().list);
}

Loader::~Loader() { stop_workers(); }

int64_t Loader::samples_per_epoch() const {
  const int64_t n = static_cast<int64_t>(dataset_.size()), w = options_.world;
  return options_.drop_last ? (n + w - 1) / w : (n - options_.rank + w - 1) / w;
}

int64_t Loader::batches_per_epoch() const {
  const int64_t n = samples_per_epoch(), b = options_.batch_size;
  return options_.drop_last ? n / b : (n + b - 1) / b;
}

void Loader::stop_workers() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  space_.notify_all();
  for (auto& w : workers_) w.join();
  workers_.clear();
}

void Loader::start_epoch(int64_t epoch, int64_t first_batch) {
  stop_workers();
  epoch_ = epoch;
  order_.resize(dataset_.size());
  std::iota(order_.begin(), order_.end(), size_t{0});
  if (options_.shuffle) {
    Rng rng = Rng::derive(options_.seed, {static_cast<uint64_t>(epoch), 0x5eedULL});
    rng.shuffle(order_);
  }
  if (options_.drop_last)  // pad to a multiple of the processes with the order's start, as DistributedSampler
    for (size_t i = 0; order_.size() % static_cast<size_t>(options_.world) != 0; ++i) order_.push_back(order_[i]);
  positions_.clear();
  for (size_t p = static_cast<size_t>(options_.rank); p < order_.size(); p += static_cast<size_t>(options_.world))
    positions_.push_back(p);
  end_batch_ = batches_per_epoch();
  next_batch_ = claimed_ = std::min(first_batch, end_batch_);
  done_.clear();
  error_ = nullptr;
  stopping_ = false;
  for (int i = 0; i < options_.workers; ++i)
    workers_.emplace_back([this] {
      while (true) {
        int64_t batch;
        {
          std::unique_lock<std::mutex> lock(mutex_);
          space_.wait(lock, [&] {
            return stopping_ || claimed_ >= end_batch_ || claimed_ < next_batch_ + options_.prefetch;
          });
          if (stopping_ || claimed_ >= end_batch_) return;
          batch = claimed_++;
        }
        try {
          Batch loaded = load_batch(batch);
          std::lock_guard<std::mutex> lock(mutex_);
          done_.emplace(batch, std::move(loaded));
        } catch (...) {
          std::lock_guard<std::mutex> lock(mutex_);
          if (!error_) error_ = std::current_exception();
        }
        ready_.notify_all();
      }
    });
}

std::optional<Batch> Loader::next() {
  check_interrupt();  // a host's Ctrl-C (the Python package) stops here, between batches
  if (next_batch_ >= end_batch_) return std::nullopt;
  if (options_.workers == 0) return load_batch(next_batch_++);
  std::unique_lock<std::mutex> lock(mutex_);
  ready_.wait(lock, [&] { return done_.count(next_batch_) > 0 || error_; });
  if (!done_.count(next_batch_)) {
    std::exception_ptr error = error_;
    lock.unlock();
    stop_workers();
    std::rethrow_exception(error);
  }
  Batch batch = std::move(done_.at(next_batch_));
  done_.erase(next_batch_++);
  lock.unlock();
  space_.notify_all();
  return batch;
}

std::vector<LoadFailure> Loader::failures() const {
  std::lock_guard<std::mutex> lock(failures_mutex_);
  return failures_;
}

std::pair<size_t, Sample> Loader::load_sample(size_t position) const {
  size_t index = order_[position];
  for (int attempt = 0;; ++attempt) {
    // The stream depends on where the sample sits in the epoch, never on which thread loads it or when.
    Rng rng = Rng::derive(options_.seed, {static_cast<uint64_t>(epoch_), position, static_cast<uint64_t>(attempt)});
    try {
      return {index, dataset_.get(index, rng)};
    } catch (const Error& e) {
      if (options_.strict) throw;
      {
        std::lock_guard<std::mutex> lock(failures_mutex_);
        failures_.push_back({index, dataset_.resolve(dataset_.entry(index)), e.message()});
      }
      if (attempt >= options_.max_replacements)
        throw Error("gave up after " + std::to_string(attempt + 1) + " samples in a row failed to load; last: " +
                        e.what(),
                    dataset_.options().list, "run adafocus check-data on this list");
      index = static_cast<size_t>(rng.below(static_cast<int64_t>(dataset_.size())));  // a deterministic stand-in
    }
  }
}

Batch Loader::load_batch(int64_t batch) const {
  const size_t begin = static_cast<size_t>(batch * options_.batch_size);
  const size_t end = std::min(begin + static_cast<size_t>(options_.batch_size), positions_.size());
  Batch out;
  std::vector<torch::Tensor> clips, focus;
  size_t max_labels = 1;
  for (size_t i = begin; i < end; ++i) {
    auto [index, sample] = load_sample(positions_[i]);
    clips.push_back(std::move(sample.clip));
    if (sample.focus.defined()) focus.push_back(std::move(sample.focus));
    max_labels = std::max(max_labels, sample.labels.size());
    out.indices.push_back(index);
    out.samples.push_back(std::move(sample));
  }
  out.clips = stack(clips);  // (B, T, 3, S, S)
  if (!focus.empty()) out.focus = stack(focus);
  out.labels = torch::full({static_cast<int64_t>(out.samples.size()), static_cast<int64_t>(max_labels)}, -1,
                           torch::kLong);
  for (size_t i = 0; i < out.samples.size(); ++i)
    for (size_t j = 0; j < out.samples[i].labels.size(); ++j)
      out.labels[static_cast<int64_t>(i)][static_cast<int64_t>(j)] = out.samples[i].labels[j];
  out.target = out.labels.select(1, 0).clone();
  return out;
}

}  // namespace adafocus::data
