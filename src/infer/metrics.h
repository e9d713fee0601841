// Video classification metrics as the official code computes them, and box overlap.
#pragma once

#include <torch/torch.h>

#include <array>

namespace adafocus::infer {

struct Scores {
  double top1 = 0, top5 = 0;   ///< % of videos whose first label is the top-1 / among the top-5 classes
  double mean_class = 0;       ///< top-1 averaged over the classes (by first label) present
  double map = 0;              ///< mean average precision over all classes, multi-label aware (official cal_map)
};

/// logits (N, C), labels (N, L) int64 padded with -1 (the first label is the main one).
Scores classification_scores(const torch::Tensor& logits, const torch::Tensor& labels);

/// Intersection over union of two (x, y, w, h) boxes.
double box_iou(const std::array<double, 4>& a, const std::array<double, 4>& b);

}  // namespace adafocus::infer
