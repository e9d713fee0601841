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
  // Choice: never trimmed. At a 1 GiB threshold a batch of 8 ResNet-50 clips (several GiB of maps) went back to the
  // system after each call and was page-faulted in again on the next: twice the time of the same videos at batch 1,
  // with a third of the run's CPU time in the kernel (docs/performance.md, fourth session).
  mallopt(M_TRIM_THRESHOLD, -1);
}

void set_interrupt_check(std::function<bool()> check) { installed() = std::move(check); }

void check_interrupt() {
  if (installed() && installed()()) throw Interrupted();
}

}  // namespace adafocus
