#include "core/files.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
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

FolderLock::FolderLock(const std::string& dir, const std::string& hint) : dir_(dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  created_ = fs::create_directories(dir, ec);
  if (ec) throw Error("cannot create the folder: " + ec.message(), dir);
  const std::string path = dir + "/.lock";
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw Error(std::string("cannot open the lock file: ") + std::strerror(errno), path);
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    char pid[32] = {};
    const ssize_t n = ::pread(fd_, pid, sizeof(pid) - 1, 0);
    ::close(fd_);
    if (error != EWOULDBLOCK) throw Error(std::string("cannot lock the folder: ") + std::strerror(error), path);
    const std::string holder = n > 0 ? std::string(pid, static_cast<size_t>(n)) : "?";
    throw Error("the folder is in use by another process (pid " + holder + ")", dir, hint);
  }
  // The pid serves only the message of a process that finds the folder locked: the lock holds without it.
  const std::string pid = std::to_string(::getpid());
  [[maybe_unused]] const bool written =
      ::ftruncate(fd_, 0) == 0 && ::pwrite(fd_, pid.data(), pid.size(), 0) == static_cast<ssize_t>(pid.size());
}

FolderLock::~FolderLock() {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (created_ && fs::exists(dir_ + "/.lock", ec) && std::distance(fs::directory_iterator(dir_, ec), {}) == 1) {
    fs::remove(dir_ + "/.lock", ec);
    fs::remove(dir_, ec);
  }
  ::close(fd_);  // releases the lock
}

}  // namespace adafocus
