// The comparison with PyTorch (adafocus bench --compare-python): our speed against the same models in PyTorch eager, in one process tree. We build
// each model, write its weights and an input as .pth files, time our own runs, then start bench/python_reference.py,
// which loads the same weights into PyTorch modules, checks that its outputs agree with ours and times the same work
// with the same threads. The two never run at the same time. Ratios are ours over theirs inverted (higher = we are
// faster); they are printed and written to OUT/compare.json with the figures behind them.
#pragma once

#include <string>

#include "experiments/resources.h"

namespace adafocus::experiments {

struct CompareOptions {
  std::string out = "build/bench";
  std::string script;  ///< python_reference.py (default: the source tree's)
  std::string demo;    ///< a finished demo folder: its models' top-1 in fp32 and bf16 (bf16_top1_change)
  int64_t warmup = 1, rounds = 3;
  bool tiny = false;   ///< small shapes (tests): checks the agreement, times nothing meaningful
  bool speed_only = false;  ///< only the realised-speed cases (ours against our dense networks; no PyTorch)
};

/// AdaFocusV2 P=128 and the ResNet-50 TSN (inference, batch 1 and 8), AdaFocusV3 with early exit and the demo's
/// training steps against the same models and weights in PyTorch eager, outputs checked to agree first; writes
/// OUT/compare.json; returns the exit status.
int run_compare_python(const CompareOptions& options, const Resources& resources);

}  // namespace adafocus::experiments
