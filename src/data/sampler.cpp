#include "data/sampler.h"

#include <algorithm>

#include "core/error.h"

namespace adafocus::data {

std::vector<int64_t> tsn_indices(int64_t num_frames, int64_t segments, bool train, Rng& rng) {
  if (num_frames <= 0 || segments <= 0) throw Error("cannot sample frames from an empty video");
  std::vector<int64_t> out(static_cast<size_t>(segments));
  if (num_frames < segments) {  // deliberate departure from the official all-zeros: spread what there is
    for (int64_t i = 0; i < segments; ++i) out[i] = i * num_frames / segments;
    return out;
  }
  if (train) {
    // TSN _sample_indices: offsets = range(T) * average_duration + randint(average_duration)
    const int64_t duration = num_frames / segments;
    for (int64_t i = 0; i < segments; ++i) out[i] = i * duration + rng.below(duration);
  } else {
    // TSN _get_val_indices: int(tick / 2 + tick * i), tick = num_frames / T as a float
    const double tick = static_cast<double>(num_frames) / static_cast<double>(segments);
    for (int64_t i = 0; i < segments; ++i) out[i] = static_cast<int64_t>(tick / 2.0 + tick * static_cast<double>(i));
  }
  return out;
}

std::vector<int64_t> dense_indices(int64_t num_frames, int64_t frames, int64_t stride, bool train, Rng& rng) {
  if (num_frames <= 0 || frames <= 0) throw Error("cannot sample frames from an empty video");
  if (stride <= 0) stride = std::max<int64_t>(1, 64 / frames);  // TSM: a 64-frame window
  // TSM's dense sampling: a window of frames x stride starting at a random position (training: randint(0,
  // sample_pos - 1)) or at sample_pos // 2 (testing), wrapping around videos shorter than the window.
  const int64_t sample_pos = std::max<int64_t>(1, 1 + num_frames - frames * stride);
  const int64_t start = sample_pos == 1 ? 0 : train ? rng.below(sample_pos - 1) : sample_pos / 2;
  std::vector<int64_t> out(static_cast<size_t>(frames));
  for (int64_t i = 0; i < frames; ++i) out[i] = (i * stride + start) % num_frames;
  return out;
}

std::vector<int64_t> input_order(int64_t segments) {
  if (segments < 1) throw Error("input_order needs at least one frame");
  if (segments < 3) {  // the official loop would list frame 0 twice here
    std::vector<int64_t> order(static_cast<size_t>(segments));
    for (int64_t i = 0; i < segments; ++i) order[i] = i;
    return order;
  }
  // The middle frame, the two ends, then the midpoints of ever finer intervals (floor(linspace(0, T-1, q+1)) for
  // q = 2, 4, 8, ...), each frame once; q is a power of two, so the linspace values are exact in floating point.
  std::vector<int64_t> order{(segments - 1) / 2, 0, segments - 1};
  for (int64_t q = 2; static_cast<int64_t>(order.size()) < segments; q *= 2) {
    for (int64_t i = 0; i < q; ++i) {
      const int64_t a = i * (segments - 1) / q, b = (i + 1) * (segments - 1) / q, middle = (a + b) / 2;
      if (std::find(order.begin(), order.end(), middle) == order.end()) order.push_back(middle);
    }
  }
  return order;
}

std::vector<int64_t> reorder(const std::vector<int64_t>& indices, const std::vector<int64_t>& order) {
  std::vector<int64_t> out;
  out.reserve(order.size());
  for (int64_t k : order) out.push_back(indices.at(static_cast<size_t>(k)));
  return out;
}

std::vector<int64_t> glance_positions(int64_t candidates, int64_t every, bool train, Rng& rng) {
  std::vector<int64_t> out;
  for (int64_t group = 0; group + every <= candidates; group += every)
    out.push_back(group + (train ? rng.below(every) : every / 2));
  return out;
}

}  // namespace adafocus::data
