// What the subcommands share: global options, config loading, model building and plain-text tables.
#pragma once

#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include "core/config.h"
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
void add_train_command(CLI::App& app, Commands& commands, const Runtime& runtime);
void add_eval_command(CLI::App& app, Commands& commands, const Runtime& runtime);
void add_predict_command(CLI::App& app, Commands& commands, const Runtime& runtime);
void add_pretrain_items_command(CLI::App& app, Commands& commands, const Runtime& runtime);
void add_check_data_command(CLI::App& app, Commands& commands, const Runtime& runtime);
void add_make_list_command(CLI::App& app, Commands& commands, const Runtime& runtime);
void add_make_synthetic_command(CLI::App& app, Commands& commands, const Runtime& runtime);
void add_export_command(CLI::App& app, Commands& commands, const Runtime& runtime);

/// `adafocus bench --compare-python`: our inference and training steps against the same models in PyTorch eager
/// (bench/python_reference.py), outputs checked to agree first; writes OUT/compare.json.
struct CompareArgs {
  std::string out = "build/bench";
  std::string script;  ///< python_reference.py (default: the source tree's)
  std::string demo;    ///< a finished demo folder: its models' top-1 in fp32 and bf16 (bf16_top1_change)
  int64_t warmup = 1, rounds = 3;
  bool tiny = false;   ///< small shapes (tests): checks the agreement, times nothing meaningful
};
int run_compare_python(const CompareArgs& args, const Runtime& runtime);

/// Replaces the model's class names by those of a classInd.txt (official checkpoints have none); the count must fit.
void set_class_names(methods::LoadedModel& model, const std::string& class_index);

/// What `adafocus demo` runs (its flags); `adafocus sweep` runs it once per benchmark setting.
struct DemoArgs {
  std::string out = "demo";
  std::string methods = "adafocus_v2,adafocus_v3,random_patch,full_frame_low_res,full_frame_full_res";
  int64_t train_videos = 2000, val_videos = 500, epochs = 0, full_res_epochs = 0, pretrain_images = 20000,
          calibration_videos = 500;
  std::vector<std::string> overrides;  ///< key=value applied to every method and to the generator
};
/// Generates the benchmark, trains and evaluates the methods into args.out (steps already done are skipped), prints
/// the table and the claims, and writes results.json; returns the exit status.
int run_demo(const DemoArgs& args, const Runtime& runtime);
void add_sweep_command(CLI::App& app, Commands& commands, const Runtime& runtime);

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
nn::BackboneOptions backbone_options(const Config& config);

/// The early-exit thresholds for `model`: from `file` when given, else those its checkpoint carries; throws with a
/// hint when there are none.
infer::ExitTable exit_table(const methods::LoadedModel& model, const std::string& file, const std::string& checkpoint);

/// "a,b,,c" -> {"a", "b", "c"}.
std::vector<std::string> split_commas(const std::string& s);

/// Prints rows under a header, columns left-aligned and padded.
void print_table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows);

}  // namespace adafocus::cli
