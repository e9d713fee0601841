// The methods by name. Each method describes itself in its own file (a MethodInfo: its factory, training stages,
// the pretrained weights its presets need, its presets, the statistics its training logs, ...) and the registry
// holds them, so that the trainer, evaluator, CLI and server work over every method without naming one. A method
// outside the library (a test's, a user's) joins with register_method().
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/config.h"
#include "methods/method.h"

namespace adafocus::methods {

struct MethodInfo {
  /// A figure its training steps report (Losses::statistics), averaged per epoch into metrics.jsonl.
  struct Statistic {
    std::string name;
    std::string display;  ///< how the progress line shows it, an fmt format of the value ("" : not shown)
  };
  /// Another way `adafocus bench` times it, beside the model as configured.
  struct BenchVariant {
    std::string label;
    std::vector<std::string> overrides;  ///< key=value applied to the model's configuration
    bool dense_cost = false;             ///< computes everything: its GFLOPs are the dense count, not the video's
  };

  std::string name;  ///< model.method
  std::function<Method(const Config& config, int64_t num_classes)> make;
  int64_t stages = 1;  ///< trained in this many stages one after the other, numbered from 0 (AdaFocus V1: 4)
  /// Config sections (model.<section>) whose ImageNet weights a preset with model.from_scratch: false needs.
  std::vector<std::string> pretrained;
  std::vector<std::string> presets;         ///< its built-in paper presets (configs/)
  std::vector<Statistic> statistics;        ///< in the order metrics.jsonl and checkpoints keep them
  /// The full-frame network of the same backbone at the same input, which bench and the demo time it against.
  std::function<Config(const Config& config)> dense_baseline;
  std::vector<BenchVariant> bench_variants;
  std::string bench_label = "no early exit";  ///< what bench calls the model as configured
  std::string baseline_label = "full frame";  ///< ... and its dense_baseline
  std::string flops_note;  ///< what `flops -c` adds to its count
};

/// A MethodInfo named `name` whose factory builds an `Impl` from `Options::from_config` (the usual start of one).
template <typename Impl, typename Options>
MethodInfo method_info_of(const std::string& name) {
  MethodInfo m;
  m.name = name;
  m.make = [](const Config& c, int64_t classes) { return std::make_shared<Impl>(Options::from_config(c), classes); };
  return m;
}

/// Adds a method; throws adafocus::Error if one of that name exists.
void register_method(MethodInfo info);
/// The method `name`; throws adafocus::Error naming the known ones. `where` names the key's origin in errors.
const MethodInfo& method_info(const std::string& name, const std::string& where = "");
/// Every registered method's name, in registration order.
std::vector<std::string> method_names();

}  // namespace adafocus::methods
