// Decoded frames kept in memory across epochs, up to a byte budget, so that a small dataset is decoded once rather
// than every epoch (JPEG decoding was ~half of the loader's time on the benchmark). Frames are copied into large
// chunks allocated up front rather than held as one allocation each: an earlier per-frame cache held 2-3x its
// budget in resident memory (allocator fragmentation across loader threads). Thread-safe; entries are never evicted:
// once the budget is full, further frames are simply decoded each time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "io/image.h"

namespace adafocus::io {

class FrameCache {
 public:
  explicit FrameCache(size_t budget_bytes) : budget_(budget_bytes) {}

  /// Copies the frame stored under `key` into `out`; false when it is not stored.
  bool get(const std::string& key, Image& out) const;
  /// Stores a copy of `image` under `key`, unless the key is taken or the budget is spent.
  void put(const std::string& key, const Image& image);
  /// Bytes of the chunks allocated so far (never above the budget).
  size_t allocated() const;
  size_t frames() const;

 private:
  struct Slot {
    const uint8_t* rgb;
    int width, height;
  };
  static constexpr size_t kChunk = size_t{64} << 20;

  size_t budget_, allocated_ = 0, chunk_free_ = 0;
  uint8_t* chunk_next_ = nullptr;
  std::vector<std::unique_ptr<uint8_t[]>> chunks_;
  std::unordered_map<std::string, Slot> slots_;
  mutable std::mutex mutex_;
};

}  // namespace adafocus::io
