// Whole-file reads and crash-safe writes.
#pragma once

#include <string>

namespace adafocus {

/// Reads a whole file; throws adafocus::Error naming the file if it cannot be read.
std::string read_file(const std::string& path);

/// Writes `bytes` to `path.tmp.<pid>` and renames it over `path`, so a crash never leaves a half-written file and
/// an existing file is replaced only by a complete one. Creates missing parent directories. `durable` also syncs the
/// data to disk before the rename (checkpoints); bulk outputs that can be regenerated skip it.
void write_file_atomic(const std::string& path, const std::string& bytes, bool durable = true);

/// `dir` (created if missing) held by this process alone while the object lives: an advisory lock (flock) on
/// `dir/.lock`, which holds the holder's pid. The kernel releases it when the process ends, however it ends, so a
/// crash leaves no stale lock. Throws adafocus::Error naming the holder's pid when another process holds it. A folder
/// it created and that holds nothing but the lock when it is released is removed again.
class FolderLock {
 public:
  FolderLock(const std::string& dir, const std::string& hint);
  ~FolderLock();
  FolderLock(const FolderLock&) = delete;
  FolderLock& operator=(const FolderLock&) = delete;

 private:
  std::string dir_;
  int fd_ = -1;
  bool created_ = false;
};

}  // namespace adafocus
