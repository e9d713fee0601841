#include "core/files.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace adafocus {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(std::string("cannot open file: ") + std::strerror(errno), path);
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) throw Error("read error", path);
  return buffer.str();
}

void write_file_atomic(const std::string& path, const std::string& bytes, bool durable) {
  namespace fs = std::filesystem;
  fs::path target(path);
  std::error_code ec;
  if (target.has_parent_path()) fs::create_directories(target.parent_path(), ec);
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(std::string("cannot write file: ") + std::strerror(errno), tmp);
  const char* p = bytes.data();
  size_t left = bytes.size();
  bool ok = true;
  while (ok && left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    ok = n > 0;
    if (ok) p += n, left -= static_cast<size_t>(n);
  }
  // fsync before the rename: after a power loss the new name must not point at unwritten blocks.
  ok = ok && (!durable || ::fsync(fd) == 0);
  const std::string reason = ok ? "" : std::strerror(errno);
  ::close(fd);
  if (!ok) {
    fs::remove(tmp, ec);
    throw Error("write failed: " + reason, tmp, "check free disk space and permissions");
  }
  fs::rename(tmp, target, ec);
  if (ec) {
    fs::remove(tmp, ec);
    throw Error("cannot rename " + tmp + " over it: " + ec.message(), path);
  }
}

}  // namespace adafocus
