#include "core/interrupt.h"

namespace adafocus {

namespace {
std::function<bool()>& installed() {
  static std::function<bool()> check;
  return check;
}
}  // namespace

void set_interrupt_check(std::function<bool()> check) { installed() = std::move(check); }

void check_interrupt() {
  if (installed() && installed()()) throw Interrupted();
}

}  // namespace adafocus
