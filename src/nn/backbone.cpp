#include "nn/backbone.h"

#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <mutex>
#include <optional>
#include <set>

#include "core/error.h"
#include "nn/fused_conv.h"
#include "nn/kernels.h"
#include "nn/mobilenet_v2.h"
#include "nn/resnet.h"

namespace adafocus::nn {

torch::Tensor BackboneImpl::pool(const torch::Tensor& map) const {
  return torch::adaptive_avg_pool2d(map, {1, 1}).flatten(1);
}

namespace {
thread_local bool folding_on = true;
BatchNormSync batch_norm_sync;
}  // namespace

void set_batch_norm_sync(BatchNormSync sync) { batch_norm_sync = std::move(sync); }

torch::Tensor batch_norm(torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x) {
  if (batch_norm_sync && bn.is_training()) return batch_norm_sync(bn, x);
  return use_channels_last_batch_norm(bn, x) ? channels_last_batch_norm(bn, x) : bn.forward(x);
}

namespace {

std::vector<int64_t> pair_of(const torch::ExpandingArray<2>& a) { return {a->at(0), a->at(1)}; }

c10::optional<c10::OperatorHandle> prepacked_op(const char* name) {  // none where LibTorch is built without oneDNN
  return c10::Dispatcher::singleton().findSchema({name, ""});
}

// The weights reordered for oneDNN, `attr` its post-op ("none" or "relu"); none where LibTorch has no oneDNN.
c10::IValue prepack(const torch::Tensor& weight, const torch::Tensor& bias,
                    const torch::nn::detail::ConvNdOptions<2>& o, bool relu) {
  static const auto op = prepacked_op("mkldnn_prepacked::conv2d_prepack");
  if (!op || !weight.device().is_cpu()) return {};
  const int64_t side = std::max<int64_t>(8, weight.size(2));
  torch::jit::Stack stack{weight, bias, pair_of(*o.stride()), pair_of(c10::get<torch::ExpandingArray<2>>(o.padding())),
                          pair_of(*o.dilation()), o.groups(), std::vector<int64_t>{1, o.in_channels(), side, side},
                          std::string(relu ? "relu" : "none")};
  op->callBoxed(&stack);
  return stack.at(0);
}

torch::Tensor run_packed(const torch::Tensor& x, const c10::IValue& packed) {
  static const auto op = prepacked_op("mkldnn_prepacked::conv2d_run");
  torch::jit::Stack stack{x, packed};
  op->callBoxed(&stack);
  return stack.at(0).toTensor();  // channels-last, x's type
}

}  // namespace

// Choice: our own oneDNN primitive per input size (a ConvChain of one, channels-last), not LibTorch's prepacked
// convolution: that one lays the weights out for a guessed input, and at the ResNets' sizes oneDNN's kernels ask for
// another layout (ABcd16b16a against Acdb64a for every 1x1 convolution, whatever the input size given), so 40 of
// ResNet-50's 53 convolutions reordered their weights on every call.
struct PackedConv {
  explicit PackedConv(const torch::nn::detail::ConvNdOptions<2>& o) : options(o) {}
  std::optional<ConvChain> chain;  // none for convolutions it does not take (dilated, uneven padding)
  torch::nn::detail::ConvNdOptions<2> options;
  // LibTorch's prepacked convolution, made on first use: where the chain cannot run (ChainOffGuard: what the chains
  // are timed against; oneDNN with only its reference kernels at a size).
  std::once_flag once;
  c10::IValue libtorch;
};

FoldedConv fold(const torch::nn::Conv2dImpl& conv, const torch::nn::BatchNorm2dImpl& bn, bool relu) {
  torch::NoGradGuard no_grad;
  const auto scale = bn.weight / torch::sqrt(bn.running_var + bn.options.eps());  // (Cout,)
  FoldedConv out{(conv.weight * scale.view({-1, 1, 1, 1})).contiguous(torch::MemoryFormat::ChannelsLast),
                 bn.bias - bn.running_mean * scale, relu};
  if (out.weight.scalar_type() != torch::kFloat || !out.weight.device().is_cpu()) return out;
  auto packed = std::make_shared<PackedConv>(conv.options);
  const auto &k = *conv.options.kernel_size(), &s = *conv.options.stride(), &d = *conv.options.dilation();
  const auto* padding = c10::get_if<torch::ExpandingArray<2>>(&conv.options.padding());
  const auto p = padding ? **padding : std::array<int64_t, 2>{-1, -1};
  if (k[0] == k[1] && s[0] == s[1] && d[0] == 1 && d[1] == 1 && p[0] == (k[0] - 1) / 2 && p[1] == p[0]) {
    ChainLayer layer{{out.weight, out.bias}, s[0], conv.options.groups()};
    layer.relu = relu;
    packed->chain.emplace(std::vector<ChainLayer>{layer}, /*channels_last=*/true);
  }
  out.packed = std::move(packed);
  return out;
}

torch::Tensor conv_bn(torch::nn::Conv2dImpl& conv, torch::nn::BatchNorm2dImpl& bn, const FoldedConv& folded,
                      const torch::Tensor& x, bool relu) {
  TORCH_CHECK(relu || !folded.relu, "conv_bn: ", conv.options.out_channels(), " channels folded with their ReLU");
  if (!folded.weight.defined() || bn.is_training() || !folding_on) {
    const auto y = batch_norm(bn, conv.forward(x));
    return relu ? relu_owned(y) : y;
  }
  // Channels-last from the network's input on (a no-op after the first convolution); oneDNN would otherwise convert
  // each NCHW input itself.
  const auto in = x.contiguous(torch::MemoryFormat::ChannelsLast);
  torch::Tensor y;  // on packed weights, ReLU'd inside when folded with it; in bf16 under bf16 autocast
  if (PackedConv* packed = folded.packed.get()) {
    if (packed->chain && ConvChain::runs(in)) y = (*packed->chain)(in);
    if (!y.defined() && onednn_inference(in)) {
      std::call_once(packed->once,
                     [&] { packed->libtorch = prepack(folded.weight, folded.bias, packed->options, folded.relu); });
      if (!packed->libtorch.isNone()) y = run_packed(in, packed->libtorch);
    }
  }
  if (y.defined()) return relu && !folded.relu ? relu_owned(y) : y;
  const auto& o = conv.options;
  y = torch::conv2d(in, folded.weight, folded.bias, *o.stride(), c10::get<torch::ExpandingArray<2>>(o.padding()),
                    *o.dilation(), o.groups());
  return relu ? relu_owned(y) : y;
}

torch::Tensor relu_owned(torch::Tensor y) { return at::GradMode::is_enabled() ? torch::relu(y) : y.relu_(); }

torch::Tensor relu6_owned(torch::Tensor y) {
  return at::GradMode::is_enabled() ? torch::hardtanh(y, 0.0, 6.0) : torch::hardtanh_(y, 0.0, 6.0);
}

torch::Tensor add_owned(torch::Tensor y, const torch::Tensor& z) {
  // (under bf16 autocast both are bf16; were they not, the sum takes the wider type, which y cannot hold)
  return at::GradMode::is_enabled() || y.scalar_type() != z.scalar_type() ? y + z : y.add_(z);
}

torch::Tensor add_relu_owned(torch::Tensor y, const torch::Tensor& z) {
  if (at::GradMode::is_enabled() || y.scalar_type() != z.scalar_type()) return torch::relu(y + z);
  return add_relu_(std::move(y), z);
}

bool folding_enabled() { return folding_on; }

bool onednn_inference(const torch::Tensor& x, bool bf16_autocast) {
  const bool bf16 = bf16_autocast && at::autocast::is_cpu_enabled() &&
                    at::autocast::get_autocast_cpu_dtype() == at::kBFloat16;
  return x.device().is_cpu() && !torch::GradMode::is_enabled() &&
         (x.scalar_type() == torch::kFloat || (bf16 && x.scalar_type() == torch::kBFloat16)) &&
         (!at::autocast::is_cpu_enabled() || bf16);
}

UnfoldedGuard::UnfoldedGuard() : previous_(folding_on) { folding_on = false; }
UnfoldedGuard::~UnfoldedGuard() { folding_on = previous_; }

namespace {

// Every block with a temporal shift, whatever the architecture.
std::vector<int64_t*> shift_segments(BackboneImpl& backbone) {
  std::vector<int64_t*> out;
  for (auto& m : backbone.modules(/*include_self=*/false)) {
    int64_t* segments = nullptr;
    if (auto* b = m->as<BasicBlockImpl>()) segments = &b->tsm_segments_;
    if (auto* b = m->as<BottleneckImpl>()) segments = &b->tsm_segments_;
    if (auto* b = m->as<InvertedResidualImpl>()) segments = &b->tsm_segments_;
    if (segments && *segments > 0) out.push_back(segments);
  }
  return out;
}

}  // namespace

int64_t BackboneImpl::tsm_segments() {
  const auto blocks = shift_segments(*this);
  return blocks.empty() ? 0 : *blocks.front();
}

void BackboneImpl::set_tsm_segments(int64_t segments) {
  for (int64_t* s : shift_segments(*this)) *s = segments;
}

TemporalShiftSegments::TemporalShiftSegments(BackboneImpl& backbone, int64_t segments)
    : backbone_(backbone), previous_(backbone.tsm_segments()) {
  if (previous_ > 0) backbone_.set_tsm_segments(segments);
}

TemporalShiftSegments::~TemporalShiftSegments() {
  if (previous_ > 0) backbone_.set_tsm_segments(previous_);
}

StateDict BackboneImpl::import_state_dict(const StateDict& state) const {
  // TSM wraps the shifted convolution in a module named "net": layer1.0.conv1.net.weight -> layer1.0.conv1.weight.
  StateDict out;
  for (const auto& item : state) {
    std::string key = item.key();
    const size_t at = key.find(".net.");
    if (at != std::string::npos) key.erase(at, 4);
    out.insert(key, item.value());
  }
  return out;
}

StateDict BackboneImpl::wrap_shifted(const StateDict& state) const {
  const std::vector<std::string> layers = shifted_layers();
  if (layers.empty()) return state;
  const std::set<std::string> wrapped(layers.begin(), layers.end());
  StateDict out;
  for (const auto& item : state) {
    const std::string& key = item.key();
    const size_t dot = key.rfind('.');  // the layer owning the tensor: "layer1.0.conv1" of "layer1.0.conv1.weight"
    const bool shifted = dot != std::string::npos && wrapped.count(key.substr(0, dot)) > 0;
    out.insert(shifted ? key.substr(0, dot) + ".net" + key.substr(dot) : key, item.value());
  }
  return out;
}

const std::vector<std::string>& backbone_archs() {
  static const std::vector<std::string> archs{"mobilenet_v2", "resnet10", "resnet18", "resnet34", "resnet50"};
  return archs;
}

Backbone make_backbone(const BackboneOptions& options) {
  const std::string& arch = options.arch();
  if (arch == "mobilenet_v2") return std::make_shared<MobileNetV2Impl>(options);
  if (arch == "resnet10" || arch == "resnet18" || arch == "resnet34" || arch == "resnet50")
    return std::make_shared<ResNetImpl>(options);
  std::string known;
  for (const auto& a : backbone_archs()) known += (known.empty() ? "" : ", ") + a;
  throw Error("unknown backbone arch '" + arch + "'", "", "use one of: " + known);
}

Backbone load_backbone(BackboneOptions options, const StateDict& state, const std::string& source) {
  Backbone backbone = make_backbone(options);
  const StateDict imported = backbone->import_state_dict(strip_module_prefix(state));
  for (const auto& item : imported) {
    if (item.key().rfind(backbone->classifier_prefix(), 0) == 0 && item.value().dim() == 2 &&
        item.value().size(0) != options.num_classes()) {
      backbone = make_backbone(options.num_classes(item.value().size(0)));
      break;
    }
  }
  load_state_dict(*backbone, imported, source);
  return backbone;
}

int64_t make_divisible(double v, int64_t divisor) {
  int64_t rounded = std::max<int64_t>(divisor, static_cast<int64_t>(v + divisor / 2.0) / divisor * divisor);
  if (rounded < 0.9 * v) rounded += divisor;
  return rounded;
}

}  // namespace adafocus::nn
