// Errors at the boundaries (files, lists, configs, checkpoints, command line): one exception type that carries
// where the problem is and a hint on how to fix it. The CLI prints it as one block and exits non-zero.
#pragma once

#include <stdexcept>
#include <string>

namespace adafocus {

class Error : public std::runtime_error {
 public:
  /// `where`: file, file:line or key the problem is in ("" if none); `hint`: what the user can do ("" if none).
  Error(std::string what, std::string where = "", std::string hint = "");

  const std::string& message() const { return message_; }
  const std::string& where() const { return where_; }
  const std::string& hint() const { return hint_; }

 private:
  std::string message_, where_, hint_;
};

/// Levenshtein distance, for "did you mean" hints.
size_t edit_distance(const std::string& a, const std::string& b);

}  // namespace adafocus
