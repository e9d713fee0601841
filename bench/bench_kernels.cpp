// Our CPU kernels (src/nn/kernels.h) against the LibTorch operators they replace, on the demo's shapes (median of 7
// runs, ms): training-mode BatchNorm2d forward + backward on small-channel maps (ours on channels-last against
// LibTorch's on channels-last and on NCHW), the enlarged-patch cut of the demo's AdaFocusV2 (crop_bilinear against
// the 3-d grid_sample it replaces and a 2-d one) and the glance's area resize (area_downsample).
//
//   cmake -S . -B build -DADAFOCUS_BENCH=ON && cmake --build build --target bench_kernels
//   build/bench/bench_kernels [threads=2]
#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>

#include "nn/backbone.h"
#include "nn/cube_crop.h"
#include "nn/kernels.h"

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

int main(int argc, char** argv) {
  mallopt(M_MMAP_MAX, 0);  // as the adafocus binary (src/cli/main.cpp): large buffers stay in the heap
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
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
}
