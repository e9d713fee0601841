// What the process hosting the library (the CLI, the Python module) sets up for it: how freed memory is kept, and a
// way to stop long computations between units of work. The CLI installs no interrupt check (Ctrl-C ends the
// process); the Python module installs one that looks for Python's pending KeyboardInterrupt, so that Ctrl-C in a
// notebook stops a training or an evaluation at its next batch.
#pragma once

#include <functional>

#include "core/error.h"

namespace adafocus {

/// Keeps freed large blocks in the heap instead of returning them to the system (glibc's mallopt). Training and
/// prediction allocate and free the same large buffers every step; served by mmap, each step pays page faults and
/// zeroing for them again: keeping them made a small-network training step 2.2x faster here (sys time 6 s -> 0.8 s
/// per 10 steps) and a benchmark prediction ~8% faster; the heap is never trimmed either. The price: memory freed
/// stays with the process (its peak).
void keep_freed_memory();

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
