// What the subcommands share: global options, config loading, model building and plain-text tables.
#pragma once

#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/text.h"
#include "experiments/resources.h"
#include "infer/early_exit.h"
#include "infer/precision.h"
#include "methods/checkpoint.h"
#include "nn/backbone.h"

namespace adafocus::cli {

/// Global options, applied before any subcommand runs.
struct Runtime {
  int threads = 0;      // intra-op threads
  std::string device;   // "cpu" or "cuda"
  infer::Precision precision = infer::Precision::Fp32;  // inference commands only
  torch::Device torch_device() const { return torch::Device(device); }
  experiments::Resources resources() const { return {threads, device}; }
};

/// A registered subcommand and what it runs once the command line is parsed; `run` returns the exit status.
struct Command {
  CLI::App* app;
  std::function<int()> run;
};
using Commands = std::vector<Command>;

void add_flops_command(CLI::App& app, Commands& commands, const Runtime& runtime);
void add_features_command(CLI::App& app, Commands& commands, const Runtime& runtime);
void add_convert_weights_command(CLI::App& app, Commands& commands, const Runtime& runtime);
void add_calibrate_command(CLI::App& app, Commands& commands, const Runtime& runtime);
void add_bench_command(CLI::App& app, Commands& commands, const Runtime& runtime);
void add_demo_command(CLI::App& app, Commands& commands, const Runtime& runtime);
void add_sweep_command(CLI::App& app, Commands& commands, const Runtime& runtime);
void add_train_command(CLI::App& app, Commands& commands, const Runtime& runtime);
void add_eval_command(CLI::App& app, Commands& commands, const Runtime& runtime);
void add_predict_command(CLI::App& app, Commands& commands, const Runtime& runtime);
void add_pretrain_items_command(CLI::App& app, Commands& commands, const Runtime& runtime);
void add_check_data_command(CLI::App& app, Commands& commands, const Runtime& runtime);
void add_make_list_command(CLI::App& app, Commands& commands, const Runtime& runtime);
void add_make_synthetic_command(CLI::App& app, Commands& commands, const Runtime& runtime);
void add_export_command(CLI::App& app, Commands& commands, const Runtime& runtime);
void add_serve_command(CLI::App& app, Commands& commands, const Runtime& runtime);

/// `-c/--config FILE`, trailing `key=value` overrides and `--print-config` on a subcommand.
struct ConfigArgs {
  std::string file;
  std::vector<std::string> overrides;
  bool print = false;

  void add_to(CLI::App& app);
  /// defaults <- file <- flag shorthands (e.g. {"model.backbone.arch", "resnet18"}) <- key=value overrides.
  Config load(const std::vector<std::pair<std::string, std::string>>& flags = {}) const;
  /// With --print-config: prints `config` as YAML and returns true (the command then stops).
  bool print_if_asked(const Config& config) const;
};

/// The backbone model.backbone describes, for the single-network commands (flops, features, convert-weights);
/// clips of data.segments frames when it has the temporal shift.
nn::BackboneOptions single_backbone_options(const Config& config);

}  // namespace adafocus::cli
