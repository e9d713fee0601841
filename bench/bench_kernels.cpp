// Our CPU kernels (src/nn/kernels.h) against the LibTorch operators they replace, on the demo's shapes (median of 7
// runs, ms): training-mode BatchNorm2d forward + backward on small-channel maps (ours on channels-last against
// LibTorch's on channels-last and on NCHW), the enlarged-patch cut of the demo's AdaFocusV2 (crop_bilinear against
// the 3-d grid_sample it replaces and a 2-d one), the glance's area resize (area_downsample) and AdaFuse's
// frame-by-frame gated convolution (sparse_conv2d: BLAS products and the direct kernel), the temporal shift without
// gradient (shift_copy), few-row linear layers (small_batch_linear) with the GRU built on them (gru_forward) at
// AdaFocusV2's policy size, a residual block's end relu(y + z) in one pass (add_relu_), and MobileNetV2 through
// oneDNN's fused convolutions (ConvChain), in fp32 and bf16, and ResNet-50 on weights packed once per layout against
// LibTorch's prepacked convolutions.
//
//   cmake -S . -B build -DADAFOCUS_BENCH=ON && cmake --build build --target bench_kernels
//   build/bench/bench_kernels [threads=2]
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>

#include "core/host.h"
#include "infer/precision.h"
#include "nn/backbone.h"
#include "nn/cube_crop.h"
#include "nn/fused_conv.h"
#include "nn/kernels.h"
#include "nn/temporal_shift.h"

using namespace adafocus;

template <typename F>
double median_ms(F f) {
  std::vector<double> ms;
  for (int i = 0; i < 9; ++i) {
    const auto start = std::chrono::steady_clock::now();
    f();
    if (i >= 2) ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::nth_element(ms.begin(), ms.begin() + 3, ms.end());
  return ms[3];
}

// net's feature map of x through its folded LibTorch layers (ChainOffGuard), then through its oneDNN chains; in
// fp32, and with `bf16` under bf16 autocast too -> median ms {layers, chains[, layers bf16, chains bf16]}.
std::vector<double> layers_against_chains(nn::BackboneImpl& net, const torch::Tensor& x, bool bf16) {
  std::vector<double> ms;
  for (const auto precision : {infer::Precision::Fp32, infer::Precision::Bf16}) {
    if (precision == infer::Precision::Bf16 && !bf16) break;
    infer::PrecisionGuard guard(precision);
    ms.push_back(median_ms([&] {
      nn::ChainOffGuard off;
      net.feature_map(x);
    }));
    ms.push_back(median_ms([&] { net.feature_map(x); }));
  }
  return ms;
}

int main(int argc, char** argv) {
  keep_freed_memory();  // as the adafocus binary: large buffers stay in the heap
  at::set_num_threads(argc > 1 ? std::atoi(argv[1]) : 2);
  fmt::print("BatchNorm2d forward + backward, {} threads (median of 7, ms)\n{:<20}{:>10}{:>14}{:>10}\n",
             at::get_num_threads(), "shape", "NCHW", "channels-last", "ours");
  for (const auto& shape : std::vector<std::vector<int64_t>>{
           {256, 4, 32, 32}, {256, 8, 64, 64}, {256, 8, 28, 28}, {256, 8, 20, 20}, {256, 12, 32, 32}}) {
    torch::nn::BatchNorm2d bn(shape[1]);
    bn->train();
    const auto nchw = torch::randn(shape).requires_grad_();
    const auto last = nchw.detach().contiguous(torch::MemoryFormat::ChannelsLast).requires_grad_();
    const auto g = torch::randn(shape), g_last = g.contiguous(torch::MemoryFormat::ChannelsLast);
    const double a = median_ms([&] { bn->forward(nchw).backward(g); });
    const double b = median_ms([&] { bn->forward(last).backward(g_last); });
    const double c = median_ms([&] { nn::channels_last_batch_norm(*bn, last).backward(g_last); });
    fmt::print("{:<20}{:>10.1f}{:>14.1f}{:>10.1f}\n", fmt::format("{}", fmt::join(shape, "x")), a, b, c);
  }

  // 256 patches of 56 px (40 + a cell of 16) at fractional corners in 128 px frames, one per frame.
  const auto frames = torch::randn({256, 3, 128, 128});
  const auto corners = torch::rand({256, 1, 3}) * 88 - 8;
  corners.select(2, 2).zero_();
  const auto grid2d = torch::rand({256, 56, 56, 2}) * 2 - 1;
  torch::NoGradGuard no_grad;
  namespace F = torch::nn::functional;
  const auto options = F::GridSampleFuncOptions().mode(torch::kBilinear).padding_mode(torch::kZeros).align_corners(false);
  const double three_d = median_ms([&] {
    torch::AutoGradMode with_gradient(true);  // corners with a gradient take the 3-d grid_sample
    nn::sample_cubes(frames.unsqueeze(1), corners.clone().requires_grad_(), 56, 1);
  });
  const double two_d = median_ms([&] { F::grid_sample(frames, grid2d, options); });
  const double ours = median_ms([&] { nn::sample_cubes(frames.unsqueeze(1), corners, 56, 1); });
  fmt::print("\n256 crops of 56 px from 128 px frames: grid_sample 3-d {:.1f}, 2-d {:.1f}, crop_bilinear {:.1f}\n",
             three_d, two_d, ours);
  // The glance's area resize of a demo batch: 256 frames 128 -> 32 px.
  const double adaptive = median_ms([&] { torch::adaptive_avg_pool2d(frames, {32, 32}); });
  const double pool = median_ms([&] { torch::avg_pool2d(frames, 4); });
  const double area = median_ms([&] { nn::area_downsample(frames, 4); });
  fmt::print("256 frames 128 -> 32 px: adaptive_avg_pool2d {:.1f}, avg_pool2d {:.1f}, area_downsample {:.1f}\n", adaptive,
             pool, area);

  // A residual block's end, relu(y + z), on ResNet-50's maps of 16 frames at 224 px (channels-last): at::add_ then
  // at::relu_ against add_relu_, in fp32 and bf16.
  fmt::print("\nrelu(y + z), 16 frames, channels-last (median of 7, ms)\n{:<14}{:>8}{:>18}{:>12}\n", "map", "type",
             "add_ + relu_", "add_relu_");
  for (const auto& [channels, side] :
       {std::make_pair(int64_t{256}, int64_t{56}), std::make_pair(int64_t{1024}, int64_t{14})})
    for (const auto dtype : {torch::kFloat, torch::kBFloat16}) {
      const auto z = torch::randn({16, channels, side, side}).to(dtype).contiguous(torch::MemoryFormat::ChannelsLast);
      auto y = z.clone();  // (its values drift upwards over the runs: no matter for the time)
      fmt::print("{:<14}{:>8}{:>18.2f}{:>12.2f}\n", fmt::format("{}x{}x{}", channels, side, side),
                 dtype == torch::kFloat ? "fp32" : "bf16", median_ms([&] { y.add_(z).relu_(); }),
                 median_ms([&] { nn::add_relu_(y, z); }));
    }

  // AdaFuse's gated convolutions at ResNet-50's shapes and the demo's ResNet-10 (8 to 64 channels), 64 frames (a batch
  // of 8 videos). conv2: each frame reads its own random 37% of the input channels (the demo's AdaFuse-TSM keeps 19%
  // and reuses 18%) and computes every output; conv1: each reads every channel and computes its own 23% (3x3, a basic
  // block's) or 34% (ResNet-50's 1x1 bottleneck conv1, 4C -> C). The dense convolution of every channel (oneDNN,
  // channels-last), a convolution per frame on its channels with its weights gathered (LibTorch, the way before
  // sparse_conv2d; conv2 only), and sparse_conv2d's products (sgemm) and direct kernel.
  const bool direct = nn::sparse_conv_direct_available();
  // (in channels, out channels, side, kernel)
  using Shape = std::array<int64_t, 4>;
  const std::vector<Shape> square{{64, 64, 56, 3}, {128, 128, 28, 3}, {256, 256, 14, 3}, {512, 512, 7, 3},
                                  {8, 8, 64, 3},   {16, 16, 32, 3},   {32, 32, 16, 3},   {64, 64, 8, 3}};
  const std::vector<Shape> bottleneck{{256, 64, 56, 1}, {512, 128, 28, 1}, {1024, 256, 14, 1}, {2048, 512, 7, 1}};
  const struct { const char* title; const std::vector<Shape>& shapes; bool conv1; double share; } tables[] = {
      {"conv2 (3x3), 64 frames reading 37% of the channels each", square, false, 0.37},
      {"conv1 (3x3), 64 frames computing 23% of the outputs each", square, true, 0.23},
      {"bottleneck conv1 (1x1), 64 frames computing 34% of the outputs each", bottleneck, true, 0.34}};
  for (const auto& table : tables) {
    const bool conv1 = table.conv1;
    fmt::print("\nAdaFuse {} (median of 7, ms)\n{:<18}{:>8}{:>16}{:>16}{:>10}\n", table.title, "shape", "dense",
               "per-frame conv", "products", "direct");
    for (const auto& [in, out, side, k] : table.shapes) {
      const auto x = torch::randn({64, in, side, side}).contiguous(torch::MemoryFormat::ChannelsLast);
      const auto w = torch::randn({out, in, k, k}).contiguous(torch::MemoryFormat::ChannelsLast);
      const auto bias = torch::randn({out});
      const auto arranged = nn::arrange_for_sparse_conv(w);
      std::vector<nn::SparseConvSample> samples(64);
      std::vector<torch::Tensor> chosen;
      for (auto& s : samples) {
        const auto pick = torch::nonzero(torch::rand({conv1 ? out : in}) < table.share).flatten();
        chosen.push_back(pick);
        auto& list = conv1 ? s.out : s.in_channel;
        list.assign(pick.data_ptr<int64_t>(), pick.data_ptr<int64_t>() + pick.numel());
        (conv1 ? s.all_outputs : s.all_inputs) = false;
        if (!conv1) s.in_sample.assign(s.in_channel.size(), &s - samples.data());
      }
      const int64_t pad = k / 2;
      const double dense = median_ms([&] { torch::conv2d(x, w, bias, 1, pad); });
      const double frames = conv1 ? 0.0 : median_ms([&] {
        for (int64_t f = 0; f < 64; ++f)
          torch::conv2d(x.narrow(0, f, 1).index_select(1, chosen[f]), w.index_select(1, chosen[f]), bias, 1, pad);
      });
      auto sparse = [&](nn::SparseConvPath path) {
        return median_ms([&] { nn::sparse_conv2d(x, arranged, bias, k, 1, pad, false, samples, {}, path); });
      };
      fmt::print("{:<18}{:>8.1f}{:>16}{:>16.1f}{:>10}\n", fmt::format("{}x{}x{}", in, side, side), dense,
                 conv1 ? "" : fmt::format("{:.1f}", frames), sparse(nn::SparseConvPath::Products),
                 direct ? fmt::format("{:.1f}", sparse(nn::SparseConvPath::Direct)) : "no AVX2");
    }
  }

  // The temporal shift of 8-frame clips (shift_div 8) on channels-last maps of 64 frames, without gradient: the slices
  // and cat of nn::temporal_shift's autograd path against shift_copy.
  fmt::print("\nTemporal shift, 64 frames channels-last (median of 7, ms)\n{:<18}{:>10}{:>12}\n", "shape", "cat",
             "shift_copy");
  for (const auto& [channels, side] : {std::make_pair(8, 64), std::make_pair(32, 16), std::make_pair(64, 56),
                                       std::make_pair(256, 56), std::make_pair(1024, 14)}) {
    const auto x = torch::randn({64, channels, side, side}).contiguous(torch::MemoryFormat::ChannelsLast);
    const auto with_gradient = x.clone().requires_grad_();
    const double cat = median_ms([&] {
      torch::AutoGradMode enabled(true);
      nn::temporal_shift(with_gradient, 8, 8);
    });
    const double ours = median_ms([&] { nn::shift_copy(x, 8, channels / 8); });
    fmt::print("{:<18}{:>10.2f}{:>12.2f}\n", fmt::format("{}x{}x{}", channels, side, side), cat, ours);
  }

  // AdaFocusV2's policy GRU (2048 units) over 16 frames of 1 and 8 videos, and one step's hidden product (2048 ->
  // 6144) at 1, 8, 16, 18 and 32 rows: torch::linear / the GRU's own forward against small_batch_linear / gru_forward;
  // under bf16 autocast (where the CPU has it natively) the GRU's own forward against gru_forward (one video: float).
  fmt::print("\nLinear 2048 -> 6144 (median of 7, ms)\n{:<8}{:>14}{:>20}\n", "rows", "torch::linear",
             "small_batch_linear");
  const auto w = torch::randn({6144, 2048}), b = torch::randn({6144});
  for (const int64_t rows : {1, 8, 16, 18, 32}) {
    const auto x = torch::randn({rows, 2048});
    fmt::print("{:<8}{:>14.2f}{:>20.2f}\n", rows, median_ms([&] { torch::linear(x, w, b); }),
               median_ms([&] { nn::small_batch_linear(x, w, b); }));
  }
  torch::nn::GRU gru(torch::nn::GRUOptions(2048, 2048).batch_first(true));
  const bool bf16 = infer::cpu_has_bf16();
  fmt::print("GRU 2048 units, 16 steps (median of 7, ms)\n{:<8}{:>14}{:>20}{:>20}{:>20}\n", "videos", "GRU forward",
             "gru_forward", bf16 ? "GRU forward bf16" : "", bf16 ? "gru_forward bf16" : "");
  for (const int64_t videos : {1, 8}) {
    const auto x = torch::randn({videos, 16, 2048});
    fmt::print("{:<8}{:>14.1f}{:>20.1f}", videos, median_ms([&] { gru->forward(x); }),
               median_ms([&] { nn::gru_forward(*gru, x, {}); }));
    if (bf16) {
      infer::PrecisionGuard guard(infer::Precision::Bf16);
      fmt::print("{:>20.1f}{:>20.1f}", median_ms([&] { gru->forward(x); }),
                 median_ms([&] { nn::gru_forward(*gru, x, {}); }));
    }
    fmt::print("\n");
  }

  // The glance: MobileNetV2 at 224 px, BN folded, on 1, 16 and 18 frames (one video of V2 / V3's ActivityNet
  // presets), its folded LibTorch layers (ChainOffGuard) against the oneDNN chain (nn/fused_conv.h).
  // In bf16 (autocast) too where the CPU has it natively.
  fmt::print("\nMobileNetV2 feature map at 224 px (median of 7, ms)\n{:<8}{:>16}{:>12}{:>22}{:>16}\n", "frames",
             "LibTorch layers", "ConvChain", bf16 ? "LibTorch layers bf16" : "", bf16 ? "ConvChain bf16" : "");
  auto glance = nn::make_backbone(nn::BackboneOptions("mobilenet_v2"));
  glance->eval();
  glance->fold_batchnorm();
  for (const int64_t frames : {1, 16, 18}) {
    const auto ms = layers_against_chains(*glance, torch::randn({frames, 3, 224, 224}), bf16);
    fmt::print("{:<8}{:>16.1f}{:>12.1f}", frames, ms[0], ms[1]);
    if (bf16) fmt::print("{:>22.1f}{:>16.1f}", ms[2], ms[3]);
    fmt::print("\n");
  }

  // ResNet-50, BN folded, on V2's and V3's 128 px patches and 224 px frames: LibTorch's prepacked convolutions
  // (ChainOffGuard; in bf16 autocast's) against ours, whose weights are packed once per layout oneDNN asks for
  // (nn::FoldedConv).
  fmt::print("\nResNet-50 feature map (median of 7, ms)\n{:<14}{:>18}{:>8}{:>18}{:>10}\n", "images x px",
             "LibTorch prepacked", "ours", bf16 ? "autocast bf16" : "", bf16 ? "ours bf16" : "");
  auto resnet = nn::make_backbone(nn::BackboneOptions("resnet50"));
  resnet->eval();
  resnet->fold_batchnorm();
  for (const auto& [images, side] : {std::pair<int64_t, int64_t>{1, 128}, {16, 128}, {1, 224}, {16, 224}}) {
    const auto ms = layers_against_chains(*resnet, torch::randn({images, 3, side, side}), bf16);
    fmt::print("{:<14}{:>18.1f}{:>8.1f}", fmt::format("{} x {}", images, side), ms[0], ms[1]);
    if (bf16) fmt::print("{:>18.1f}{:>10.1f}", ms[2], ms[3]);
    fmt::print("\n");
  }
}
