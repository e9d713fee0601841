// Pretraining a backbone on single benchmark items, the built-in benchmark's stand-in for ImageNet weights.
#pragma once

#include "core/config.h"
#include "data/synthetic.h"
#include "nn/backbone.h"

namespace adafocus::train {

struct PretrainOptions {
  int side = 40;            ///< canvas side: the patch size of the network that will use the weights
  int64_t images = 20000;   ///< items per epoch (drawn once, then shuffled each epoch)
  int epochs = 2;
  int64_t batch_size = 128;
  double lr = 0.002;        ///< Adam, cosine-annealed to zero
  uint64_t seed = 0;
  bool quiet = false;
};

struct Pretrained {
  nn::Backbone backbone;
  double accuracy = 0;  ///< % correct on 2000 held-out items
};

/// What the network `section` of a preset (model.local, model.glance, model.backbone) sees of the benchmark, so that it
/// is pretrained at that scale as ImageNet networks are at theirs: items as large as its input shows them (the patch
/// is cut from the frame at full resolution; the glance and the full-frame networks see the frame resized to their
/// resolution) on a canvas of its input side, at most the patch's.
struct PretrainInput {
  int side = 40;
  data::SyntheticOptions items;  ///< items.size: the frame's side at the network's scale
  std::string name;              ///< the network and its input: of one seed and setting, equal names give equal weights
};
PretrainInput pretrain_input(const Config& config, const std::string& section);

/// Builds a backbone (`network`, with 10 classes) and trains it as an item classifier. The seed fixes the
/// initialisation too, so the same options give the same weights.
Pretrained pretrain_on_items(const nn::BackboneOptions& network, const data::SyntheticOptions& items,
                             const PretrainOptions& options);

}  // namespace adafocus::train
