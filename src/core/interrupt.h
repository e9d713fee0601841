// A way for a host process to stop long computations between units of work. The CLI installs nothing (Ctrl-C ends
// the process); the Python package installs a check that looks for Python's pending KeyboardInterrupt, so that
// Ctrl-C in a notebook stops a training or an evaluation at the next batch instead of after it.
#pragma once

#include <functional>

#include "core/error.h"

namespace adafocus {

/// Thrown by check_interrupt() when the host asked to stop.
class Interrupted : public Error {
 public:
  Interrupted() : Error("interrupted") {}
};

/// Installs `check` (empty: none); it returns true when the work should stop. Called only from the thread that
/// runs the long loop.
void set_interrupt_check(std::function<bool()> check);

/// Throws Interrupted when the installed check asks to stop. Long loops call it once per batch.
void check_interrupt();

}  // namespace adafocus
