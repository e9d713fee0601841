// Data pipeline throughput: decode + sample + transform, in clips per second, against what a training step consumes.
//
//   build/bench/bench_data [videos=16] [seconds_per_video=8]
//
// Makes 256p H.264 test videos (456x256, 25 fps, keyframe every 32 frames) with the ffmpeg tool, then loads T=16
// clips in batches of 8 at 128 and 224 px with 1 and 2 workers, in training (multi-scale crop + flip) and test views.
// For scale, it times a forward + backward of MobileNetV2 on the same clips at 128 px: the cheapest network of the
// methods, so a loader faster than it is faster than any training step.
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>

#include "core/files.h"
#include "data/loader.h"
#include "nn/backbone.h"

using namespace adafocus;

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

double clips_per_second(const data::VideoDataset& dataset, int workers, int64_t epochs) {
  data::LoaderOptions lo;
  lo.batch_size = 8;
  lo.workers = workers;
  lo.shuffle = true;
  data::Loader loader(dataset, lo);
  int64_t clips = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t e = 0; e < epochs; ++e) {
    loader.start_epoch(e);
    while (auto batch = loader.next()) clips += batch->clips.size(0);
  }
  return static_cast<double>(clips) / seconds_since(start);
}

}  // namespace

int main(int argc, char** argv) {
  const int videos = argc > 1 ? std::atoi(argv[1]) : 16;
  const int duration = argc > 2 ? std::atoi(argv[2]) : 8;
  at::set_num_threads(2);
  const auto dir = std::filesystem::temp_directory_path() / "adafocus_bench_data";
  std::filesystem::create_directories(dir);
  std::string list;
  for (int i = 0; i < videos; ++i) {
    const std::string name = fmt::format("v{:02d}.mp4", i);
    if (!std::filesystem::exists(dir / name)) {
      const std::string cmd = fmt::format(
          "ffmpeg -v error -y -f lavfi -i testsrc2=size=456x256:rate=25:duration={} -vf hue=h={} -c:v libx264 "
          "-g 32 -pix_fmt yuv420p {}",
          duration, i * 20, (dir / name).string());
      if (std::system(cmd.c_str()) != 0) return 1;
    }
    list += name + " " + std::to_string(i % 4) + "\n";
  }
  write_file_atomic((dir / "list.txt").string(), list);
  fmt::print("{} videos, 456x256 H.264, {} frames each; clips of T=16, batches of 8\n\n", videos, duration * 25);
  fmt::print("{:<8} {:<6} {:>9} {:>9}\n", "size", "view", "1 worker", "2 workers");
  for (int size : {128, 224}) {
    for (bool train : {true, false}) {
      data::DatasetOptions o;
      o.root = dir.string();
      o.list = (dir / "list.txt").string();
      o.train = train;
      o.segments = 16;
      o.transform.input_size = size;
      o.transform.test_resize = size * 256 / 224;
      data::VideoDataset dataset(o);
      const double one = clips_per_second(dataset, 1, 2), two = clips_per_second(dataset, 2, 2);
      fmt::print("{:<8} {:<6} {:>9.1f} {:>9.1f}  clips/s\n", size, train ? "train" : "test", one, two);
    }
  }

  // What the cheapest network of a method consumes: MobileNetV2 forward + backward on 8 clips x 16 frames, 128 px.
  auto model = nn::make_backbone(nn::BackboneOptions("mobilenet_v2"));
  model->train();
  const auto x = torch::randn({8 * 16, 3, 128, 128});
  model->forward(x).sum().backward();  // warm-up
  const auto start = std::chrono::steady_clock::now();
  constexpr int kSteps = 2;
  for (int i = 0; i < kSteps; ++i) model->forward(x).sum().backward();
  fmt::print("\nMobileNetV2 forward+backward, 128 px, 2 threads: {:.1f} clips/s (16 frames each)\n",
             8.0 * kSteps / seconds_since(start));
  return 0;
}
