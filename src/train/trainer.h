// Training a method on a dataset, into a run folder:
//   RUN/config.yaml    the resolved configuration (what --resume reads back)
//   RUN/metrics.jsonl  one line per epoch: lr, training loss and accuracy, validation scores when evaluated, and
//                      while a learned policy trains, where it looked (train_iou, train_hits on the benchmark),
//                      policy_spread and policy_grad
//   RUN/last.pt        model, optimizer state, position (epoch, batch) and running sums: resuming continues exactly
//   RUN/best.pt        the model with the best validation metric (train.metric)
// Every file is written atomically. Randomness (sampling, augmentation, dropout, random patches) is derived from
// (seed, epoch, step), so a run killed at any point and resumed ends with the same metrics as an uninterrupted one
// (same thread count and device).
#pragma once

#include <functional>
#include <string>

#include "core/config.h"
#include "data/loader.h"
#include "infer/evaluate.h"

namespace adafocus::train {

struct TrainOptions {
  std::string run_dir;
  bool resume = false;
  torch::Device device = torch::kCPU;
  bool quiet = false;  ///< no progress display (tests)
};

struct TrainSummary {
  int64_t epochs = 0;
  std::string metric;                        ///< train.metric: what best_metric measures
  double best_metric = -1;
  int64_t best_epoch = -1;
  infer::Evaluation last;                    ///< the final validation
  std::vector<data::LoadFailure> failures;   ///< samples that failed to load and were replaced
  double seconds = 0;
};

/// Trains the method `config` describes (model.*, data.*, train.*). With options.resume the configuration is read
/// from RUN/config.yaml and `config` is ignored. The number of classes comes from data.class_index, else from the
/// labels of the training list. Throws adafocus::Error on a NaN/inf loss, keeping the last good checkpoint.
TrainSummary train(const Config& config, const TrainOptions& options);

/// The number of classes and their names for a configuration's data: data.class_index when it exists (relative to
/// data.root), else "class N" for every label up to the largest in the training list.
std::vector<std::string> class_names(const Config& config);

}  // namespace adafocus::train
