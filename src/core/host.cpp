#include "core/host.h"

#include <malloc.h>

namespace adafocus {

namespace {
std::function<bool()>& installed() {
  static std::function<bool()> check;
  return check;
}
}  // namespace

void keep_freed_memory() {
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

void set_interrupt_check(std::function<bool()> check) { installed() = std::move(check); }

void check_interrupt() {
  if (installed() && installed()()) throw Interrupted();
}

}  // namespace adafocus
