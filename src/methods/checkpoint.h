// Checkpoints: a torch.save-compatible dict {'state_dict': ..., 'optimizer': ..., 'epoch': ..., 'config': ...} that
// Python's torch.load reads and that resumes a run exactly. Official AdaFocus checkpoints (V2: {'state_dict'} with
// 'module.' prefixes; V1: {'model_state_dict', 'policy', ...}) load too, with a preset giving the configuration.
#pragma once

#include <string>
#include <vector>

#include "core/config.h"
#include "methods/method.h"

namespace adafocus::methods {

struct Checkpoint {
  std::string config_yaml;              ///< the resolved configuration of the run
  std::vector<std::string> classes;     ///< class names in label order
  nn::StateDict model;
  nn::StateDict optimizer;              ///< train::Optimizer::state()
  int64_t epoch = 0;                    ///< the epoch to run next (with `batch`)
  int64_t batch = 0;                    ///< batches of `epoch` already done
  double best_metric = -1;
  int64_t best_epoch = -1;
  std::vector<double> epoch_sums;       ///< running sums of the interrupted epoch (loss, correct, videos, the policy's)
  std::string exits_json;               ///< early-exit thresholds (adafocus calibrate --embed), "" if none
  NamedStateDicts official_entries;     ///< an official file's state dicts by entry name (V1: 'model_state_dict',
                                        ///< 'glancer', 'focuser', 'fc', 'policy'); empty for ours
};

/// Writes atomically (temporary file + fsync + rename).
void save_checkpoint(const std::string& path, const Checkpoint& checkpoint);
/// Reads ours or an official one (then only `model` and `official_entries` are filled). Throws adafocus::Error naming
/// the file.
Checkpoint load_checkpoint(const std::string& path);

/// The model state of `checkpoint` in `method`'s names: MethodImpl::import_checkpoint after dropping DataParallel's
/// "module." prefixes (official names translated, ours unchanged).
nn::StateDict model_state(const MethodImpl& method, const Checkpoint& checkpoint);

/// Writes `method` as the official code's checkpoint file (MethodImpl::export_official_checkpoint: the official
/// scripts load it with load_state_dict(strict=True)); returns the names of its state dicts and their sizes.
std::vector<std::pair<std::string, size_t>> save_official_checkpoint(const MethodImpl& method, const std::string& path);

/// A trained model ready for inference.
struct LoadedModel {
  Config config;
  std::vector<std::string> classes;
  Method method;
  std::string exits_json;  ///< the early-exit thresholds it carries, "" if none
};

/// The model of a checkpoint, in eval mode on `device`, optimised for inference (MethodImpl::optimize_for_inference:
/// not for training). `preset` (a file or built-in name, may be "") supplies the
/// configuration when the checkpoint has none (official checkpoints) and overrides keys of one that has; `overrides`
/// are key=value. A checkpoint of another method or shape is an error naming the keys.
LoadedModel load_model(const std::string& path, const std::string& preset, const std::vector<std::string>& overrides,
                       torch::Device device);

}  // namespace adafocus::methods
