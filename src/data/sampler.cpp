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
  if (segments == 16) return {7, 0, 15, 3, 11, 1, 5, 9, 13, 2, 4, 6, 8, 10, 12, 14};
  if (segments == 8) return {3, 0, 7, 1, 5, 2, 4, 6};
  throw Error("input_order is defined for 8 or 16 frames, not " + std::to_string(segments), "",
              "set data.segments to 8 or 16, or data.input_order=false");
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
