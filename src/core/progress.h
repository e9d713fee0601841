// A one-line progress display on stderr: done/total, rate, ETA and a caller's note (e.g. the loss).
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>

namespace adafocus {

/// Wall time since `start`, in seconds.
inline double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

class Progress {
 public:
  /// `unit` names what is counted ("videos", "steps").
  Progress(std::string label, int64_t total, std::string unit);
  /// Sets the count; redraws at most ~5 times a second (and always at the end). Thread-safe.
  void update(int64_t done, const std::string& note = "");
  /// Ends the line with the total time.
  void finish(const std::string& note = "");

 private:
  void draw(int64_t done, const std::string& note, bool final);

  std::string label_, unit_;
  int64_t total_;
  std::chrono::steady_clock::time_point start_, last_draw_;
  bool interactive_;
  std::mutex mutex_;
};

}  // namespace adafocus
