// Backbone forward time: batch 8 at 224 px in eval mode, for each architecture, at 1 and 2 threads (median of 5
// runs after 2 warm-ups). The foundation issue expects ResNet-50 ~360 ms and MobileNetV2 ~95 ms at 2 threads on the
// reference machine; far slower at 2 than at 1 thread, or both far slower, means threads or BLAS are wrong.
//
//   build/bench/bench_backbones [batch=8] [size=224]
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>

#include "nn/backbone.h"

using namespace adafocus;

int main(int argc, char** argv) {
  const int64_t batch = argc > 1 ? std::atoll(argv[1]) : 8, size = argc > 2 ? std::atoll(argv[2]) : 224;
  torch::NoGradGuard no_grad;
  fmt::print("forward, batch {} at {}x{}, eval mode (median of 5, ms)\n{:<14}{:>10}{:>10}\n", batch, size, size, "arch",
             "1 thread", "2 threads");
  for (const char* arch : {"mobilenet_v2", "resnet18", "resnet50"}) {
    nn::BackboneOptions o(arch);
    nn::Backbone net = nn::make_backbone(o);
    net->eval();
    const auto x = torch::randn({batch, 3, size, size});
    fmt::print("{:<14}", arch);
    for (int threads : {1, 2}) {
      at::set_num_threads(threads);
      std::vector<double> ms;
      for (int i = 0; i < 7; ++i) {
        const auto start = std::chrono::steady_clock::now();
        net->forward(x);
        if (i >= 2) ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
      }
      std::nth_element(ms.begin(), ms.begin() + 2, ms.end());
      fmt::print("{:>10.0f}", ms[2]);
    }
    fmt::print("\n");
  }
  return 0;
}
