#include "nn/mobilenet_v2.h"

#include <regex>

#include "nn/temporal_shift.h"

namespace adafocus::nn {

namespace {
constexpr int64_t kStemChannels = 32;
constexpr int64_t kLastChannels = 1280;
constexpr double kDropout = 0.2;
// Choice: without gradient, frames go through the network this many at a time. A 224 px frame's expanded maps are
// 4.8 MB (96 x 112 x 112 floats); beyond a few dozen frames they leave the cache, and the depthwise and 1x1
// convolutions, bound by memory traffic, slow down: 128 frames at 224 px took 1231-1284 ms at once and 741-744 in
// chunks of 16 (AMD EPYC Zen 3, 2 threads; chunks of 8 no better, of 64 797-873). ResNet-50 gains nothing from this.
constexpr int64_t kInferenceChunk = 16;

struct StageSetting {
  int64_t expand, channels, repeats, stride;
};
// torchvision / paper Table 2: t, c, n, s
constexpr StageSetting kStages[] = {{1, 16, 1, 1}, {6, 24, 2, 2},  {6, 32, 3, 2}, {6, 64, 4, 2},
                                    {6, 96, 3, 1}, {6, 160, 3, 2}, {6, 320, 1, 1}};
}  // namespace

ConvBNReLU6Impl::ConvBNReLU6Impl(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t groups) {
  conv = register_module("0", torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, kernel)
                                                    .stride(stride)
                                                    .padding((kernel - 1) / 2)
                                                    .groups(groups)
                                                    .bias(false)));
  bn = register_module("1", torch::nn::BatchNorm2d(out));
}

torch::Tensor ConvBNReLU6Impl::forward(const torch::Tensor& x) {
  return relu6_owned(conv_bn(*conv, *bn, folded, x));
}

InvertedResidualImpl::InvertedResidualImpl(int64_t in, int64_t out, int64_t stride, int64_t expand_ratio_,
                                           int64_t tsm_segments, int64_t shift_div)
    : use_residual(stride == 1 && in == out),
      expand_ratio(expand_ratio_),
      tsm_segments_(tsm_segments),
      shift_div_(shift_div) {
  const int64_t hidden = static_cast<int64_t>(std::lround(static_cast<double>(in * expand_ratio)));
  if (expand_ratio != 1) conv->push_back(ConvBNReLU6(in, hidden, 1, 1));
  conv->push_back(ConvBNReLU6(hidden, hidden, 3, stride, hidden));
  project = torch::nn::Conv2d(torch::nn::Conv2dOptions(hidden, out, 1).bias(false));
  project_bn = torch::nn::BatchNorm2d(out);
  conv->push_back(project);
  conv->push_back(project_bn);
  register_module("conv", conv);
}

torch::Tensor InvertedResidualImpl::branch(const torch::Tensor& x) {
  const size_t n = conv->size();  // [expand,] depthwise, project conv, its BN
  auto y = x;
  for (size_t i = 0; i + 2 < n; ++i) y = conv->ptr<ConvBNReLU6Impl>(i)->forward(y);
  return conv_bn(*project, *project_bn, folded_project, y);
}

torch::Tensor InvertedResidualImpl::forward(const torch::Tensor& x) {
  if (!use_residual) return branch(x);
  return add_owned(branch(shifts() ? temporal_shift(x, tsm_segments_, shift_div_) : x), x);
}

void InvertedResidualImpl::fold() {
  const size_t n = conv->size();
  for (size_t i = 0; i + 2 < n; ++i) {
    auto* c = conv->ptr<ConvBNReLU6Impl>(i).get();
    c->folded = nn::fold(*c->conv, *c->bn);
  }
  folded_project = nn::fold(*project, *project_bn);
}

MobileNetV2Impl::MobileNetV2Impl(const BackboneOptions& options) {
  const double width = options.width_mult();
  int64_t channels = make_divisible(kStemChannels * width);
  last_channel_ = make_divisible(kLastChannels * std::max(1.0, width));

  features->push_back(ConvBNReLU6(3, channels, 3, 2));
  expand_ratios_.push_back(0);
  for (const auto& stage : kStages) {
    const int64_t out = make_divisible(stage.channels * width);
    for (int64_t i = 0; i < stage.repeats; ++i) {
      features->push_back(InvertedResidual(channels, out, i == 0 ? stage.stride : 1, stage.expand,
                                           options.tsm_segments(), options.shift_div()));
      expand_ratios_.push_back(stage.expand);
      channels = out;
    }
  }
  features->push_back(ConvBNReLU6(channels, last_channel_, 1, 1));
  expand_ratios_.push_back(0);
  register_module("features", features);

  classifier->push_back(torch::nn::Dropout(kDropout));
  classifier->push_back(torch::nn::Linear(last_channel_, options.num_classes()));
  register_module("classifier", classifier);

  // torchvision's initialisation
  for (auto& module : modules(/*include_self=*/false)) {
    if (auto* c = module->as<torch::nn::Conv2d>()) {
      torch::nn::init::kaiming_normal_(c->weight, 0.0, torch::kFanOut);
    } else if (auto* b = module->as<torch::nn::BatchNorm2d>()) {
      torch::nn::init::ones_(b->weight);
      torch::nn::init::zeros_(b->bias);
    } else if (auto* l = module->as<torch::nn::Linear>()) {
      torch::nn::init::normal_(l->weight, 0.0, 0.01);
      torch::nn::init::zeros_(l->bias);
    }
  }
}

torch::Tensor MobileNetV2Impl::run_features(const torch::Tensor& x) {
  if (fused_ && !is_training() && ConvChain::runs(x))
    if (auto y = (*fused_)(x); y.defined()) return y;  // (N, C, h, w)
  return features->forward(x);
}

torch::Tensor MobileNetV2Impl::feature_map(const torch::Tensor& x) {
  if (torch::GradMode::is_enabled() || x.size(0) <= kInferenceChunk) return run_features(x);  // (N, C, h, w)
  const int64_t segments = tsm_segments();  // TSM shifts along each video's frames: a chunk holds whole videos
  const int64_t chunk = segments > 0 ? (kInferenceChunk + segments - 1) / segments * segments : kInferenceChunk;
  std::vector<torch::Tensor> maps;
  for (const auto& frames : x.split(chunk)) maps.push_back(run_features(frames));  // (chunk, C, h, w)
  return torch::cat(maps);                                                               // (N, C, h, w)
}

void MobileNetV2Impl::fold_batchnorm() {
  std::vector<ChainLayer> chain;
  bool shifts = false;
  auto conv_layer = [](const ConvBNReLU6Impl& c) {
    return ChainLayer{c.folded, c.conv->options.stride()->at(0), c.conv->options.groups(), true};
  };
  for (const auto& m : features->children()) {
    if (auto* c = m->as<ConvBNReLU6Impl>()) {
      c->folded = fold(*c->conv, *c->bn);
      chain.push_back(conv_layer(*c));
    }
    if (auto* b = m->as<InvertedResidualImpl>()) {
      b->fold();
      shifts |= b->shifts();
      const size_t n = b->conv->size();  // [expand,] depthwise, project, its BN
      const auto& depthwise = *b->conv->ptr<ConvBNReLU6Impl>(n - 3);
      const auto block_input = static_cast<int64_t>(chain.size());
      if (n == 4) {  // the expansion with its depthwise convolution fused in
        ChainLayer expand = conv_layer(*b->conv->ptr<ConvBNReLU6Impl>(0));
        expand.depthwise = depthwise.folded;
        expand.depthwise_stride = depthwise.conv->options.stride()->at(0);
        chain.push_back(expand);
      } else {
        chain.push_back(conv_layer(depthwise));
      }
      ChainLayer project{b->folded_project};
      if (b->use_residual) project.residual = block_input;
      chain.push_back(project);
    }
  }
  // Choice: with the temporal shift (TSM), LibTorch's layers as before; the shift would take the maps out of
  // oneDNN's blocked layout and back in every residual block.
  if (!shifts && chain.front().conv.weight.device().is_cpu()) fused_.emplace(chain);
}

torch::Tensor MobileNetV2Impl::classify(const torch::Tensor& pooled) { return classifier->forward(pooled); }

namespace {

// Official flat Sequential indices within a block -> torchvision's nested ones (ReLU6 occupies the skipped indices).
const std::map<std::string, std::string> kNoExpand{{"0", "0.0"}, {"1", "0.1"}, {"3", "1"}, {"4", "2"}};
const std::map<std::string, std::string> kExpand{{"0", "0.0"}, {"1", "0.1"}, {"3", "1.0"},
                                                 {"4", "1.1"}, {"6", "2"},   {"7", "3"}};

}  // namespace

StateDict MobileNetV2Impl::rename_keys(const StateDict& state, bool to_official) const {
  static const std::regex kBlockKey(R"(features\.(\d+)\.conv\.(\d+\.\d+|\d+)\.([a-z_]+))");
  StateDict out;
  for (const auto& item : state) {
    std::string key = item.key();
    std::smatch m;
    if (std::regex_match(key, m, kBlockKey)) {
      const size_t block = std::stoul(m[1]);
      if (block < expand_ratios_.size() && expand_ratios_[block] > 0)
        for (const auto& [official, ours] : expand_ratios_[block] == 1 ? kNoExpand : kExpand)
          if ((to_official ? ours : official) == m[2].str()) {
            key = "features." + m[1].str() + ".conv." + (to_official ? official : ours) + "." + m[3].str();
            break;
          }
    } else if (to_official && key.rfind("classifier.1.", 0) == 0) {
      key = "classifier." + key.substr(std::string("classifier.1.").size());
    } else if (!to_official && (key == "classifier.weight" || key == "classifier.bias")) {
      key = "classifier.1." + key.substr(std::string("classifier.").size());
    }
    out.insert(key, item.value());
  }
  return out;
}

StateDict MobileNetV2Impl::export_official_state_dict(const StateDict& state) const {
  return wrap_shifted(rename_keys(state, true));
}

std::vector<std::string> MobileNetV2Impl::shifted_layers() const {
  // In tonylins' flat layout the expanding conv is conv.0 (ours: conv.0.0), so TSM's wrapper holds the conv alone.
  std::vector<std::string> out;
  for (size_t i = 0; i < features->size(); ++i)
    if (const auto* block = features->ptr(i)->as<InvertedResidualImpl>(); block && block->shifts())
      out.push_back("features." + std::to_string(i) + ".conv.0");
  return out;
}

StateDict MobileNetV2Impl::import_state_dict(const StateDict& state) const {
  StateDict in = BackboneImpl::import_state_dict(state);
  // The official layout keeps the first block's depthwise conv at features.1.conv.0 (torchvision: conv.0.0).
  if (!in.contains("features.1.conv.0.weight") && !in.contains("classifier.weight")) return in;
  return rename_keys(in, false);
}

}  // namespace adafocus::nn
