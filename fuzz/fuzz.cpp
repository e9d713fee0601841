#include "fuzz.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>

namespace adafocus::fuzz {

std::map<std::string, Target>& targets() {
  static std::map<std::string, Target> all;
  return all;
}

bool register_target(const char* name, Target target) {
  targets()[name] = target;
  return true;
}

std::string as_file(const uint8_t* data, size_t size, const std::string& suffix) {
  // The files written, removed when the process ends.
  static struct Written {
    std::set<std::string> paths;
    ~Written() {
      std::error_code ec;
      for (const auto& p : paths) std::filesystem::remove(p, ec);
    }
  } written;
  static const std::string stem =
      (std::filesystem::temp_directory_path() / ("adafocus-fuzz-" + std::to_string(::getpid()))).string();
  const std::string path = stem + suffix;
  written.paths.insert(path);
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(reinterpret_cast<const char*>(data),
                                                                static_cast<std::streamsize>(size));
  return path;
}

}  // namespace adafocus::fuzz
