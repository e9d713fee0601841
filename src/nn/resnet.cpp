#include "nn/resnet.h"

#include "core/error.h"
#include "nn/temporal_shift.h"

namespace adafocus::nn {

namespace {

torch::nn::Conv2d conv(int64_t in, int64_t out, int64_t kernel, int64_t stride = 1) {
  return torch::nn::Conv2d(
      torch::nn::Conv2dOptions(in, out, kernel).stride(stride).padding(kernel / 2).bias(false));
}

// 1x1 conv + BN on the identity path when the block changes resolution or width; null otherwise.
torch::nn::Sequential make_downsample(int64_t in, int64_t out, int64_t stride) {
  if (stride == 1 && in == out) return nullptr;
  return torch::nn::Sequential(conv(in, out, 1, stride), torch::nn::BatchNorm2d(out));
}

// The downsample's conv and BN (its "0" and "1").
torch::nn::Conv2dImpl& down_conv(const torch::nn::SequentialImpl& down) { return *down.ptr(0)->as<torch::nn::Conv2d>(); }
torch::nn::BatchNorm2dImpl& down_bn(const torch::nn::SequentialImpl& down) {
  return *down.ptr(1)->as<torch::nn::BatchNorm2d>();
}

FoldedConv fold_downsample(const torch::nn::Sequential& down) { return fold(down_conv(*down), down_bn(*down)); }
}  // namespace

torch::Tensor downsample_shortcut(const torch::nn::SequentialImpl& down, const FoldedConv& folded, const torch::Tensor& x) {
  auto& conv = down_conv(down);
  // oneDNN 2.6 (LibTorch 1.13) writes past its workspace in the weight gradient of a strided 1x1 convolution on
  // channels-last input with fewer input channels than its channel block (16 with AVX-512; oneDNN issue 6035): the
  // heap is corrupted and the process dies later (channels-last training of the benchmark's 8-channel ResNet-10 at
  // 128 px did). Every other pixel taken first, then convolved with stride 1, is the same and avoids that kernel.
  const auto stride = (*conv.options.stride())[0];
  if (stride > 1 && torch::GradMode::is_enabled() && x.size(1) < 16 &&
      x.is_contiguous(torch::MemoryFormat::ChannelsLast) && !x.is_contiguous()) {
    const auto every = x.slice(2, 0, x.size(2), stride).slice(3, 0, x.size(3), stride);  // (N, C, H/s, W/s)
    return batch_norm(down_bn(down), torch::conv2d(every, conv.weight));
  }
  return conv_bn(conv, down_bn(down), folded, x);
}

BasicBlockImpl::BasicBlockImpl(int64_t in, int64_t planes, int64_t stride, int64_t tsm_segments, int64_t shift_div)
    : tsm_segments_(tsm_segments), shift_div_(shift_div) {
  conv1 = register_module("conv1", conv(in, planes, 3, stride));
  bn1 = register_module("bn1", torch::nn::BatchNorm2d(planes));
  conv2 = register_module("conv2", conv(planes, planes, 3));
  bn2 = register_module("bn2", torch::nn::BatchNorm2d(planes));
  downsample = make_downsample(in, planes * kExpansion, stride);
  if (downsample) register_module("downsample", downsample);
}

torch::Tensor BasicBlockImpl::forward(const torch::Tensor& x) {
  auto in = tsm_segments_ > 0 ? temporal_shift(x, tsm_segments_, shift_div_) : x;
  auto out = conv_bn(*conv1, *bn1, folded1, in, /*relu=*/true);
  out = conv_bn(*conv2, *bn2, folded2, out);
  return add_relu_owned(out, downsample ? downsample_shortcut(*downsample, folded_down, x) : x);
}

void BasicBlockImpl::fold() {
  folded1 = nn::fold(*conv1, *bn1, /*relu=*/true);
  folded2 = nn::fold(*conv2, *bn2);
  if (downsample) folded_down = fold_downsample(downsample);
}

BottleneckImpl::BottleneckImpl(int64_t in, int64_t planes, int64_t stride, int64_t tsm_segments, int64_t shift_div)
    : tsm_segments_(tsm_segments), shift_div_(shift_div) {
  conv1 = register_module("conv1", conv(in, planes, 1));
  bn1 = register_module("bn1", torch::nn::BatchNorm2d(planes));
  conv2 = register_module("conv2", conv(planes, planes, 3, stride));
  bn2 = register_module("bn2", torch::nn::BatchNorm2d(planes));
  conv3 = register_module("conv3", conv(planes, planes * kExpansion, 1));
  bn3 = register_module("bn3", torch::nn::BatchNorm2d(planes * kExpansion));
  downsample = make_downsample(in, planes * kExpansion, stride);
  if (downsample) register_module("downsample", downsample);
}

torch::Tensor BottleneckImpl::forward(const torch::Tensor& x) {
  auto in = tsm_segments_ > 0 ? temporal_shift(x, tsm_segments_, shift_div_) : x;
  auto out = conv_bn(*conv1, *bn1, folded1, in, /*relu=*/true);
  out = conv_bn(*conv2, *bn2, folded2, out, /*relu=*/true);
  out = conv_bn(*conv3, *bn3, folded3, out);
  return add_relu_owned(out, downsample ? downsample_shortcut(*downsample, folded_down, x) : x);
}

void BottleneckImpl::fold() {
  folded1 = nn::fold(*conv1, *bn1, /*relu=*/true);
  folded2 = nn::fold(*conv2, *bn2, /*relu=*/true);
  folded3 = nn::fold(*conv3, *bn3);
  if (downsample) folded_down = fold_downsample(downsample);
}

ResNetImpl::ResNetImpl(const BackboneOptions& options) : stem_(options.stem()) {
  if (stem_ != "imagenet" && stem_ != "small" && stem_ != "small_s2")
    throw Error("unknown ResNet stem '" + stem_ + "'", "", "use imagenet, small or small_s2");
  const std::string& arch = options.arch();
  const bool bottleneck = arch == "resnet50";
  const std::vector<int64_t> blocks = arch == "resnet10"   ? std::vector<int64_t>{1, 1, 1, 1}
                                      : arch == "resnet18" ? std::vector<int64_t>{2, 2, 2, 2}
                                                           : std::vector<int64_t>{3, 4, 6, 3};
  const int64_t expansion = bottleneck ? BottleneckImpl::kExpansion : BasicBlockImpl::kExpansion;
  const int64_t width = options.base_width();

  conv1 = register_module("conv1", stem_ == "imagenet" ? conv(3, width, 7, 2) : conv(3, width, 3, stem_ == "small" ? 1 : 2));
  bn1 = register_module("bn1", torch::nn::BatchNorm2d(width));
  int64_t channels = width;
  torch::nn::Sequential* layers[] = {&layer1, &layer2, &layer3, &layer4};
  for (int stage = 0; stage < 4; ++stage) {
    const int64_t planes = width << stage;
    for (int64_t i = 0; i < blocks[stage]; ++i) {
      const int64_t stride = (stage > 0 && i == 0) ? 2 : 1;
      if (bottleneck)
        (*layers[stage])->push_back(Bottleneck(channels, planes, stride, options.tsm_segments(), options.shift_div()));
      else
        (*layers[stage])->push_back(BasicBlock(channels, planes, stride, options.tsm_segments(), options.shift_div()));
      channels = planes * expansion;
    }
    register_module("layer" + std::to_string(stage + 1), *layers[stage]);
  }
  feature_dim_ = channels;
  fc = register_module("fc", torch::nn::Linear(feature_dim_, options.num_classes()));

  // torchvision's initialisation (fc keeps PyTorch's default Linear init)
  for (auto& module : modules(/*include_self=*/false)) {
    if (auto* c = module->as<torch::nn::Conv2d>()) {
      torch::nn::init::kaiming_normal_(c->weight, 0.0, torch::kFanOut, torch::kReLU);
    } else if (auto* b = module->as<torch::nn::BatchNorm2d>()) {
      torch::nn::init::ones_(b->weight);
      torch::nn::init::zeros_(b->bias);
    }
  }
}

torch::Tensor ResNetImpl::stem(const torch::Tensor& x) {
  auto y = conv_bn(*conv1, *bn1, folded_stem_, x, /*relu=*/true);
  return stem_ == "imagenet" ? torch::max_pool2d(y, 3, 2, 1) : y;
}

void ResNetImpl::fold_batchnorm() {
  folded_stem_ = fold(*conv1, *bn1, /*relu=*/true);
  for (const auto& layer : {layer1, layer2, layer3, layer4})
    for (const auto& block : layer->children()) {
      if (auto* b = block->as<BasicBlockImpl>()) b->fold();
      if (auto* b = block->as<BottleneckImpl>()) b->fold();
    }
}

std::vector<std::string> ResNetImpl::shifted_layers() const {
  // TSM's "blockres" place: conv1 of every block (official TSM shifts every other block in stages of 23 blocks or
  // more, ResNet-101 and deeper, which we do not build).
  std::vector<std::string> out;
  const torch::nn::Sequential layers[] = {layer1, layer2, layer3, layer4};
  for (size_t stage = 0; stage < 4; ++stage)
    for (size_t i = 0; i < layers[stage]->size(); ++i) {
      const auto block = layers[stage]->ptr(i);
      const auto* basic = block->as<BasicBlockImpl>();
      const auto* bottleneck = block->as<BottleneckImpl>();
      if ((basic ? basic->tsm_segments_ : bottleneck ? bottleneck->tsm_segments_ : 0) > 0)
        out.push_back("layer" + std::to_string(stage + 1) + "." + std::to_string(i) + ".conv1");
    }
  return out;
}

torch::Tensor ResNetImpl::feature_map(const torch::Tensor& x) {
  // Training in channels-last: oneDNN's convolutions of few channels run 2.5-4x faster so, and batch norm keeps up
  // through nn/kernels.h (docs/performance.md); at inference the folded convolutions take channels-last anyway.
  const auto in = is_training() && x.dim() == 4 ? x.contiguous(torch::MemoryFormat::ChannelsLast) : x;
  return layer4->forward(layer3->forward(layer2->forward(layer1->forward(stem(in)))));
}

}  // namespace adafocus::nn
