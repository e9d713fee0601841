// Options of the methods in the LibTorch style (chainable TORCH_ARG setters whose defaults are those of
// configs/defaults.yaml), so that a model can be built from code without a configuration. Each family's
// from_config() reads its keys in one place, with errors that name the key and where it was set. This file holds
// what several families share; each family's own options are in its header.
#pragma once

#include <torch/torch.h>

#include <string>

#include "core/config.h"
#include "nn/backbone.h"

namespace adafocus::methods {

/// Learning-rate multipliers of a method's parameter groups (train.lr_*; the official per-group ratios).
struct LearningRates {
  static LearningRates from_config(const Config& config);

  TORCH_ARG(double, policy) = 0.1;      ///< train.lr_policy
  TORCH_ARG(double, glance) = 0.5;      ///< train.lr_glance
  TORCH_ARG(double, local) = 1.0;       ///< train.lr_local (a single backbone's too)
  TORCH_ARG(double, classifier) = 5.0;  ///< train.lr_classifier
};

/// What AdaFocus V1, V2 and V3 share: a glance network on the downsized clip, a policy on its feature maps, a local
/// network on patches or cubes, and a classifier over both.
struct GlanceFocusOptions {
  GlanceFocusOptions(nn::BackboneOptions glance, nn::BackboneOptions local)
      : glance_(std::move(glance)), local_(std::move(local)) {}

  /// The keys below; the glance's TSM shifts over data.segments frames, the local network's over `local_segments`
  /// (the frames it sees as one clip); the backbones' own classifiers have 1000 classes (unused by V2 and V3).
  /// Checks that the patch fits the input.
  static GlanceFocusOptions from_config(const Config& config, int64_t local_segments);

  TORCH_ARG(nn::BackboneOptions, glance);        ///< model.glance, TSM over the clip's frames
  TORCH_ARG(nn::BackboneOptions, local);         ///< model.local
  TORCH_ARG(int64_t, frames) = 16;               ///< data.segments: frames of the clip (T)
  TORCH_ARG(int64_t, focus_frames) = 0;          ///< data.focus_segments: a separate clip for the local network
  TORCH_ARG(int64_t, input_size) = 224;          ///< data.input_size: side of the clip's frames (S)
  TORCH_ARG(int64_t, glance_size) = 224;         ///< model.glance.resolution: the glance's side
  TORCH_ARG(std::string, resize) = "bilinear";   ///< model.resize: how the glance's frames are shrunk
  TORCH_ARG(int64_t, patch_size) = 128;          ///< model.patch_size (P)
  TORCH_ARG(std::string, policy) = "learned";    ///< model.policy: where patches go at test time
  TORCH_ARG(int64_t, policy_channels) = 64;      ///< model.policy_channels
  TORCH_ARG(int64_t, policy_hidden) = 2048;      ///< model.policy_hidden
  TORCH_ARG(int64_t, classifier_hidden) = 4096;  ///< model.classifier_hidden
  TORCH_ARG(double, dropout) = 0.2;              ///< model.dropout: before the final heads
  TORCH_ARG(double, fc_dropout) = 0.2;           ///< model.fc_dropout: before the auxiliary heads
  TORCH_ARG(LearningRates, lr);
};

}  // namespace adafocus::methods
