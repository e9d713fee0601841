#include "core/progress.h"

#include <unistd.h>

#include <cstdio>
#include <fmt/format.h>

namespace adafocus {

Progress::Progress(std::string label, int64_t total, std::string unit)
    : label_(std::move(label)),
      unit_(std::move(unit)),
      total_(total),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_),
      interactive_(::isatty(STDERR_FILENO) != 0) {}

void Progress::update(int64_t done, const std::string& note) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto now = std::chrono::steady_clock::now();
  // In a log file (not a terminal) a line every 10 s is plenty.
  const auto every = interactive_ ? std::chrono::milliseconds(200) : std::chrono::milliseconds(10000);
  if (now - last_draw_ < every) return;
  last_draw_ = now;
  draw(done, note, false);
}

void Progress::finish(const std::string& note) {
  std::lock_guard<std::mutex> lock(mutex_);
  draw(total_, note, true);
}

void Progress::draw(int64_t done, const std::string& note, bool final) {
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = seconds > 0 ? static_cast<double>(done) / seconds : 0.0;
  constexpr int kWidth = 24;
  const double fraction = total_ > 0 ? static_cast<double>(done) / static_cast<double>(total_) : 1.0;
  const int filled = static_cast<int>(fraction * kWidth);
  std::string bar = std::string(static_cast<size_t>(filled), '#') + std::string(static_cast<size_t>(kWidth - filled), '.');
  std::string timing = final ? fmt::format("{:.1f}s", seconds)
                             : fmt::format("ETA {:.0f}s", rate > 0 ? static_cast<double>(total_ - done) / rate : 0.0);
  std::string line = fmt::format("{} [{}] {}/{} {} {:.1f}/s {}{}", label_, bar, done, total_, unit_, rate, timing,
                                 note.empty() ? "" : "  " + note);
  if (interactive_)
    fmt::print(stderr, "\r{}\033[K{}", line, final ? "\n" : "");
  else
    fmt::print(stderr, "{}\n", line);
  std::fflush(stderr);
}

}  // namespace adafocus
