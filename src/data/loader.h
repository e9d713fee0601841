// Batches of clips from worker threads. The batches of an epoch depend only on (seed, epoch): the shuffled order and
// every sample's random stream are derived from them, and batches are delivered in order whatever the number of
// workers or their timing, or - in data-parallel training - of the number of processes: the samples at a position of
// the epoch are the same whichever process loads them. A sample that fails to load is replaced by another (deterministically) and reported;
// with on_error=strict the first failure stops the epoch.
//
// Legend: B batch, T frames, S input side.
#pragma once

#include <torch/torch.h>

#include <condition_variable>
#include <exception>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "data/dataset.h"

namespace adafocus::data {

struct LoaderOptions {
  int64_t batch_size = 8;
  int workers = 2;        ///< 0: load in the calling thread
  int prefetch = 4;       ///< batches prepared ahead of the consumer
  bool shuffle = false;
  bool drop_last = false;
  uint64_t seed = 0;
  bool strict = false;    ///< true: the first sample that fails to load throws; false: replace and report
  int max_replacements = 10;  ///< attempts to replace one failed sample before giving up
  /// Data parallel: this process loads every `world`-th position of the epoch's order from `rank` on, as PyTorch's
  /// DistributedSampler - when training (drop_last) the order is first padded with its own start to a multiple of
  /// `world`; when evaluating it is not, so that no video counts twice. batch_size is then this process's share.
  int rank = 0, world = 1;

  static LoaderOptions from_config(const Config& config, bool train);
};

struct Batch {
  torch::Tensor clips;   ///< (B, T, 3, S, S)
  torch::Tensor focus;   ///< (B, Tf, 3, S, S), or undefined
  torch::Tensor labels;  ///< (B, L) int64, -1 padded (multi-label lists)
  torch::Tensor target;  ///< (B,) the first label
  std::vector<size_t> indices;  ///< dataset items, after replacements
  std::vector<Sample> samples;  ///< frame indices, crops (the clips are in `clips`)
};

struct LoadFailure {
  size_t index;
  std::string path;
  std::string message;
};

class Loader {
 public:
  Loader(const VideoDataset& dataset, LoaderOptions options);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  /// Starts epoch `epoch` at batch `first_batch` (to resume an interrupted epoch).
  void start_epoch(int64_t epoch, int64_t first_batch = 0);
  /// The next batch of the epoch in order, or nullopt when the epoch is over. Rethrows a worker's error.
  std::optional<Batch> next();
  int64_t batches_per_epoch() const;
  /// The samples this process loads per epoch (its shard, padded when training with several processes).
  int64_t samples_per_epoch() const;
  /// Samples that failed and were replaced, so far.
  std::vector<LoadFailure> failures() const;

 private:
  Batch load_batch(int64_t batch) const;
  /// Item at `position` of the epoch's order, or its replacements; returns the item loaded and its sample.
  std::pair<size_t, Sample> load_sample(size_t position) const;
  void stop_workers();

  const VideoDataset& dataset_;
  LoaderOptions options_;
  int64_t epoch_ = 0, next_batch_ = 0, end_batch_ = 0;
  std::vector<size_t> order_;       // the epoch's order of dataset items (all processes')
  std::vector<size_t> positions_;   // the positions of order_ this process loads

  mutable std::mutex mutex_;
  std::condition_variable ready_, space_;
  std::map<int64_t, Batch> done_;
  int64_t claimed_ = 0;
  std::exception_ptr error_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
  mutable std::mutex failures_mutex_;
  mutable std::vector<LoadFailure> failures_;
};

}  // namespace adafocus::data
