// Training a method on a dataset, into a run folder:
//   RUN/config.yaml    the resolved configuration (what --resume reads back)
//   RUN/metrics.jsonl  one line per epoch: lr, training loss and accuracy, the epoch's wall time (epoch_s),
//                      validation scores when evaluated, while a learned policy trains where it looked (train_iou,
//                      train_hits on the benchmark), policy_spread and policy_grad, and while PPO trains its
//                      statistics (ppo_reward, ppo_advantage, ppo_entropy, ppo_clip_fraction, ppo_value_loss)
//   RUN/last.pt        model, optimizer state, position (epoch, batch) and running sums: resuming continues exactly
//   RUN/best.pt        the model with the best validation metric (train.metric)
// Every file is written atomically. Randomness (sampling, augmentation, dropout, random patches) is derived from
// (seed, epoch, step), so a run killed at any point and resumed ends with the same metrics as an uninterrupted one
// (same thread count and device), the epochs' wall times (epoch_s) aside - also with another number of processes
// when BatchNorm and random draws do not depend on the split (train.sync_bn, methods without random training draws).
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "core/config.h"
#include "data/loader.h"
#include "distributed/dist.h"
#include "infer/evaluate.h"

namespace adafocus::train {

struct TrainOptions {
  std::string run_dir;
  bool resume = false;
  torch::Device device = torch::kCPU;
  bool quiet = false;  ///< no progress display (tests)
  /// A checkpoint whose model weights this run starts from (a staged method's previous stage), or "".
  std::string init;
  /// Data-parallel training with several processes (null: one). Every process calls train() with the same
  /// arguments; data.batch_size is the batch of all of them together, each loads its share of every batch
  /// (a disjoint shard of the epoch), gradients are averaged across them in the backward pass, BatchNorm2d uses
  /// every process's batch with train.sync_bn, and validation is shared and gathered. Only rank 0 reads the run
  /// folder and writes to it (config, metrics, checkpoints, progress): it need not be on a shared filesystem.
  dist::Group* group = nullptr;
  double bucket_mb = 25;  ///< gradient bucket size (dist::GradientReducer)
  /// Told each epoch's line of metrics.jsonl once it and last.pt are written (rank 0 only), e.g. a progress display.
  std::function<void(const nlohmann::json& line)> on_epoch;
};

struct TrainSummary {
  int64_t epochs = 0;
  std::string metric;                        ///< train.metric: what best_metric measures
  double best_metric = -1;
  int64_t best_epoch = -1;
  infer::Evaluation last;                    ///< the final validation
  std::vector<data::LoadFailure> failures;   ///< samples that failed to load and were replaced (this process's)
  double seconds = 0;
};

/// Trains the method `config` describes (model.*, data.*, train.*). With options.resume the configuration is read
/// from RUN/config.yaml and `config` is ignored. A method trained in stages (AdaFocus V1) with `stage` -1 trains every
/// stage in turn into RUN/stage0, RUN/stage1, ..., each from the previous one's last.pt (a finished stage is not
/// redone, an interrupted one resumes); with `stage` N only that stage, from options.init. The number of classes comes from data.class_index, else from the
/// labels of the training list. Throws adafocus::Error on a NaN/inf loss, keeping the last good checkpoint.
TrainSummary train(const Config& config, const TrainOptions& options);

/// The number of classes and their names for a configuration's data: data.class_index when it exists (relative to
/// data.root), else "class N" for every label up to the largest in the training list.
std::vector<std::string> class_names(const Config& config);

/// The configuration of stage `stage` of a staged run: `stage` set, then the train.stage<N> overrides (errors name
/// the stage's key).
Config stage_config(const Config& config, int64_t stage);

}  // namespace adafocus::train
