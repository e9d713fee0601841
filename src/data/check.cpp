#include "data/check.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <mutex>
#include <thread>

#include "core/error.h"
#include "data/dataset.h"

namespace adafocus::data {

namespace {

// What is wrong with one entry, or "".
std::string check_entry(const io::ListEntry& e, const std::string& path, const CheckOptions& o) {
  for (int64_t label : e.labels)
    if (label < 0 || (o.num_classes > 0 && label >= o.num_classes))
      return fmt::format("label {} out of range [0, {})", label, o.num_classes > 0 ? o.num_classes : 0);
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return "not found";
  try {
    std::unique_ptr<io::FrameSource> source = io::open_frames(path, o.frames);  // counts frame files or packets
    const int64_t available = source->num_frames();
    const int64_t listed = e.num_frames > 0 ? e.num_frames : available;
    if (e.num_frames > available)
      return fmt::format("the list says {} frames but only {} exist", e.num_frames, available);
    if (listed < o.min_frames) return fmt::format("{} frames, fewer than the {} needed", listed, o.min_frames);
    if (o.full) {
      const int64_t decoded = source->decode_all();
      if (decoded < listed) return fmt::format("only {} of {} frames decode (truncated or corrupt)", decoded, listed);
    } else {
      source->read({0, listed / 2, listed - 1});
    }
  } catch (const Error& error) {
    return error.message();
  } catch (const std::exception& error) {
    return error.what();
  }
  return "";
}

}  // namespace

CheckReport check_data(const CheckOptions& o) {
  CheckReport report;
  const io::ListFile list = io::read_list(o.list, o.format, &report.problems);
  report.lines = list.entries.size() + report.problems.size();

  std::mutex mutex;
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i; (i = next++) < list.entries.size();) {
      const io::ListEntry& e = list.entries[i];
      const std::string path = resolve_path(o.root, e, list.format);
      const std::string problem = check_entry(e, path, o);
      if (problem.empty()) continue;
      std::lock_guard<std::mutex> lock(mutex);
      report.problems.push_back({e.line, path, problem});
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < std::max(1, o.threads); ++t) threads.emplace_back(worker);
  for (auto& t : threads) t.join();
  std::sort(report.problems.begin(), report.problems.end(),
            [](const io::ListProblem& a, const io::ListProblem& b) { return a.line < b.line; });
  return report;
}

}  // namespace adafocus::data
