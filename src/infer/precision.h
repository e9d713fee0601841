// Inference precision: fp32 (exact, the default) or bf16 through LibTorch's CPU autocast - convolutions, linear layers
// and matrix products in bfloat16, the operators PyTorch lists as precision-sensitive (grid_sample, losses, ...) in
// fp32. Fast only on CPUs that compute bf16 natively (AVX512-BF16 or AMX); elsewhere oneDNN emulates it, slower than
// fp32. Predictions come out of a bf16 model partly in bf16: consumers read them through .to(torch::kFloat).
#pragma once

#include <string>

namespace adafocus::infer {

enum class Precision { Fp32, Bf16 };

/// The precision `name` runs at on a CPU with or without native bf16; `note` gets what to tell the user (empty:
/// nothing). "fp32"; "bf16": bf16 where the CPU computes it natively, otherwise fp32 with a note - oneDNN would
/// emulate bf16 there, 2-4x slower than fp32, and bf16 is asked for its speed; "bf16-emulated": bf16 on any CPU (to
/// see its accuracy before deploying where it is native). Throws adafocus::Error for any other name.
Precision resolve_precision(const std::string& name, bool native_bf16, std::string& note);

/// Whether this CPU has native bf16 arithmetic (the avx512_bf16 or amx_bf16 flag of /proc/cpuinfo).
bool cpu_has_bf16();

/// While alive, the calling thread computes at `precision` (autocast is per thread); restores the previous state.
class PrecisionGuard {
 public:
  explicit PrecisionGuard(Precision precision);
  ~PrecisionGuard();
  PrecisionGuard(const PrecisionGuard&) = delete;
  PrecisionGuard& operator=(const PrecisionGuard&) = delete;

 private:
  bool enabled_;
  int dtype_;  // the previous at::ScalarType
};

}  // namespace adafocus::infer
