#include "io/frame_cache.h"

#include <algorithm>
#include <cstring>

namespace adafocus::io {

bool FrameCache::get(const std::string& key, Image& out) const {
  Slot slot{};
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = slots_.find(key);
    if (it == slots_.end()) return false;
    slot = it->second;
  }
  // Stored bytes never move or change once their slot exists: copy outside the lock.
  out = Image(slot.width, slot.height);
  std::memcpy(out.rgb.data(), slot.rgb, out.rgb.size());
  return true;
}

void FrameCache::put(const std::string& key, const Image& image) {
  const size_t bytes = image.rgb.size();
  std::lock_guard<std::mutex> lock(mutex_);
  if (slots_.count(key)) return;
  if (bytes > chunk_free_) {
    const size_t chunk = std::max(std::min(kChunk, budget_), bytes);
    if (allocated_ + chunk > budget_) return;
    // new[] of a large block is an mmap of its own: untouched pages cost no resident memory, and nothing fragments.
    chunks_.emplace_back(new uint8_t[chunk]);
    allocated_ += chunk;
    chunk_next_ = chunks_.back().get();
    chunk_free_ = chunk;
  }
  std::memcpy(chunk_next_, image.rgb.data(), bytes);
  slots_.emplace(key, Slot{chunk_next_, image.width, image.height});
  chunk_next_ += bytes;
  chunk_free_ -= bytes;
}

size_t FrameCache::allocated() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return allocated_;
}

size_t FrameCache::frames() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return slots_.size();
}

}  // namespace adafocus::io
