// torch.save files (zip and legacy containers, the pickle inside), read as a state dict and as a run's checkpoint
// (what --init, --resume and every weight file go through).
#include "core/error.h"
#include "fuzz.h"
#include "io/pth.h"
#include "methods/checkpoint.h"

FUZZ_TARGET(pth) {
  using namespace adafocus;
  const std::string path = fuzz::as_file(data, size, ".pth");
  try {
    io::read_pth(path).describe();
  } catch (const Error&) {
    return;  // the others read the same file first
  }
  try {
    io::read_state_dict(path);
  } catch (const Error&) {
  }
  try {
    methods::load_checkpoint(path);
  } catch (const Error&) {
  }
}
