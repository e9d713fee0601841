// Early exits without retraining (AdaFocusV2+ and AdaFocusV3, after MSDNet): a method gives a prediction after every
// exit (a frame, a cube); a sample leaves at the first exit whose confidence reaches that exit's threshold. The
// thresholds are fitted on a calibration set so that the average cost meets a budget:
//   - the official sweep: the fraction leaving at exit k is proportional to q^k; for each exit in turn, the most
//     confident of the samples still present leave, as many as that fraction of the set (V2 early_exit.py);
//   - for a budget B in GFLOPs per video (the V3 paper's Eq. 7, solved as MSDNet does): the most accurate q whose
//     expected cost on the calibration set is at most B - searched also over the first exit anyone may take.
// The cost of leaving at each exit is measured by the FLOPs counter on the method's exit-by-exit path.
//
// Legend: N samples, K exits, C classes.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

namespace adafocus::infer {

/// How confident a prediction is: max raw logit (the official "confidence"), max softmax, or entropy (the V3
/// paper; a sample leaves when its entropy is low enough - the score is the negative entropy).
enum class Criterion { MaxLogit, MaxSoftmax, Entropy };
Criterion parse_criterion(const std::string& name);  ///< max_logit | max_softmax | entropy; throws otherwise
std::string criterion_name(Criterion criterion);

/// Confidence of every exit's prediction, larger = more confident: logits (N, K, C) -> scores (N, K).
torch::Tensor exit_scores(const torch::Tensor& logits, Criterion criterion);
/// Whether each exit's top class is one of the labels: logits (N, K, C), labels (N, L) -1 padded -> (N, K) bool.
torch::Tensor exit_correct(const torch::Tensor& logits, const torch::Tensor& labels);

/// Fractions leaving at exits 1..K proportional to q^k (sum 1); with `first` > 0, none at the exits before it.
std::vector<double> geometric_proportions(double q, int64_t exits, int64_t first = 0);

/// Thresholds (K) that make floor(N p_k) of the samples still present leave at exit k, the most confident first;
/// everyone left leaves at the last exit (threshold -inf). Each threshold lies halfway between the score of the
/// last sample that leaves and the next one (the official code takes the former: the same samples leave, but a
/// score recomputed with a different batch then cannot fall on the wrong side).
std::vector<double> fit_thresholds(const torch::Tensor& scores, const std::vector<double>& proportions);

/// The exit each sample takes: the first k whose score reaches threshold k -> (N,) int64.
torch::Tensor take_exits(const torch::Tensor& scores, const std::vector<double>& thresholds);

/// One operating point: thresholds and what they did on the calibration set.
struct ExitSetting {
  double budget = -1;               ///< GFLOPs per video asked for (-1: a point of the sweep)
  double q = 0;                     ///< ratio of the geometric exit proportions
  int64_t first = 0;                ///< the first exit anyone may take
  std::vector<double> thresholds;   ///< K, the last -inf
  std::vector<double> proportions;  ///< fraction of the calibration set leaving at each exit
  double gflops = 0;                ///< expected GFLOPs per video on the calibration set
  double top1 = 0;                  ///< % correct on the calibration set
};

/// The setting of proportions ∝ q^k (from exit `first` on) on a calibration set: scores and correct (N, K),
/// exit_gflops (K).
ExitSetting geometric_setting(const torch::Tensor& scores, const torch::Tensor& correct,
                              const std::vector<double>& exit_gflops, double q, int64_t first = 0);

/// Eq. 7: the most accurate geometric setting (q over a fine logarithmic grid, and every first exit) whose expected
/// cost is at most `budget`; when even leaving at the first exit costs more, that setting (its gflops then exceed
/// the budget). Choice: MSDNet's family (first = 0) sends a share of the videos out at the first exit whatever q,
/// which costs accuracy when that exit is weak - AdaFocusV3's p_0 from the glance alone; letting the family start
/// later also contains "everyone after k cubes", so a budget is never served worse than a fixed number of exits on
/// the calibration set.
ExitSetting budget_setting(const torch::Tensor& scores, const torch::Tensor& correct,
                           const std::vector<double>& exit_gflops, double budget);

/// What `adafocus calibrate` writes: the settings for some budgets and the official sweep, with what they cost.
struct ExitTable {
  Criterion criterion = Criterion::Entropy;
  std::vector<double> exit_gflops;  ///< cost of leaving at each exit, GFLOPs per video
  std::vector<double> exit_top1;    ///< calibration accuracy of each exit without early exit
  std::string calibration;          ///< what the thresholds were fitted on
  int64_t videos = 0;
  std::vector<ExitSetting> budgets; ///< one per budget asked for
  std::vector<ExitSetting> sweep;   ///< the official q = 0.5 ... 3.9

  /// The most accurate setting (of both lists) expected to cost at most `budget`; when none is that cheap,
  /// everyone leaves at the first exit.
  ExitSetting for_budget(double budget) const;
  /// for_budget(budget), or with a negative budget (none asked) the setting for the cost of every exit - the most
  /// accurate: what predict, bench and the Python package run with thresholds but no budget.
  ExitSetting for_budget_or_all(double budget) const { return for_budget(budget >= 0 ? budget : exit_gflops.back()); }
  std::string to_json() const;
  /// Throws adafocus::Error naming `source` when the text is not an exit table.
  static ExitTable from_json(const std::string& text, const std::string& source);
};

/// Fits the table on calibration logits (N, K, C) and labels (N, L): a setting per budget and the official sweep.
ExitTable fit_exit_table(const torch::Tensor& logits, const torch::Tensor& labels, Criterion criterion,
                         const std::vector<double>& exit_gflops, const std::vector<double>& budgets);

}  // namespace adafocus::infer
