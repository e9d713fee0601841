// Videos from memory (an upload's way: FFmpeg's I/O context over the bytes): opened, indexed, and frames read as a
// clip samples them. Frames are bounded as the server bounds them (--max-pixels) before anything is decoded.
#include <algorithm>
#include <memory>

#include "core/error.h"
#include "fuzz.h"
#include "io/video_reader.h"

FUZZ_TARGET(video) {
  using namespace adafocus;
  auto bytes = std::make_shared<const std::string>(reinterpret_cast<const char*>(data), size);
  try {
    io::VideoReader reader(bytes, "fuzz.mp4");
    if (int64_t(reader.width()) * reader.height() > 1920 * 1080) return;
    const int64_t n = reader.num_frames();
    if (n <= 0) std::abort();  // opening promises at least one frame
    reader.read({0, n / 2, n - 1}, 32);
    reader.read({std::min<int64_t>(1, n - 1)});
  } catch (const Error&) {
  }
}
