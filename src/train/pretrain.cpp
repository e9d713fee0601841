#include "train/pretrain.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/progress.h"
#include "core/rng.h"
#include "train/optimizer.h"

namespace adafocus::train {

PretrainInput pretrain_input(const Config& c, const std::string& section) {
  const int64_t patch = c.get_int("model.patch_size"), input = c.get_int("data.input_size");
  const bool local = section == "model.local";  // the patch: cut from the frame as it is
  const int64_t resolution = local ? 0 : c.get_int(section + ".resolution");
  const int64_t seen = resolution > 0 ? resolution : input;  // the frame's side as the network sees it
  PretrainInput p;
  p.items = data::SyntheticOptions::from_config(c);
  p.items.size = static_cast<int>(std::lround(static_cast<double>(p.items.size) * static_cast<double>(seen) / input));
  // Choice: a canvas no larger than the patch. Items at a network's scale are what it must learn; a whole 128 px
  // frame as canvas would cost 10x the time and memory of the patch's for the same features.
  p.side = static_cast<int>(std::min(local ? patch : seen, patch));
  p.name = fmt::format("{}_w{}{}_{}_{}px_items{}", c.get_string(section + ".arch"), c.get_int(section + ".base_width"),
                       c.get_float(section + ".width_mult") == 1.0 ? "" : fmt::format("x{}", c.get_float(section + ".width_mult")),
                       c.get_string(section + ".stem"), p.side, p.items.size);
  return p;
}

Pretrained pretrain_on_items(const nn::BackboneOptions& network, const data::SyntheticOptions& items,
                             const PretrainOptions& o) {
  // Before the backbone is built: LibTorch seeds its default generator at random in every process.
  torch::manual_seed(o.seed);
  // Single images have no time axis: the temporal shift (which has no weights of its own) stays off, as it would
  // zero a quarter of the channels of a one-frame clip. The weights load into the shifted network all the same.
  nn::Backbone backbone = nn::make_backbone(nn::BackboneOptions(network).tsm_segments(0));
  auto [images, labels] = data::item_images(items, o.side, o.images, o.seed);
  auto [test_images, test_labels] = data::item_images(items, o.side, 2000, o.seed + 1);
  std::vector<methods::ParamGroup> groups{{"backbone", {}, 1.0}};
  for (const auto& p : backbone->named_parameters()) groups[0].params.emplace_back(p.key(), p.value());
  OptimizerOptions oo;
  oo.kind = "adam";
  oo.weight_decay = 1e-4;
  Optimizer optimizer(groups, oo);
  const int64_t steps = o.images / o.batch_size;
  Progress progress("pretrain on items", steps * o.epochs, "steps");
  backbone->train();
  for (int e = 0; e < o.epochs; ++e) {
    std::vector<int64_t> order(static_cast<size_t>(o.images));
    std::iota(order.begin(), order.end(), 0);
    Rng::derive(o.seed, {4, static_cast<uint64_t>(e)}).shuffle(order);
    const auto perm = torch::tensor(order);
    for (int64_t s = 0; s < steps; ++s) {
      const auto idx = perm.slice(0, s * o.batch_size, (s + 1) * o.batch_size);
      const auto loss = torch::nn::functional::cross_entropy(backbone->forward(images.index_select(0, idx)),
                                                             labels.index_select(0, idx));
      optimizer.zero_grad();
      loss.backward();
      optimizer.step(learning_rate("onecycle", o.lr, e, s, steps, o.epochs, 0.1));
      if (!o.quiet) progress.update(e * steps + s + 1, fmt::format("loss {:.3f}", loss.item<double>()));
    }
  }
  if (!o.quiet) progress.finish();
  backbone->eval();
  torch::NoGradGuard no_grad;
  const auto correct = (backbone->forward(test_images).argmax(1) == test_labels).sum().item<double>();
  return {backbone, 100.0 * correct / static_cast<double>(test_labels.size(0))};
}

}  // namespace adafocus::train
