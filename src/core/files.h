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

}  // namespace adafocus
