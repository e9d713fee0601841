#include "infer/precision.h"

#include <ATen/autocast_mode.h>

#include <fstream>

#include "core/error.h"

namespace adafocus::infer {

Precision resolve_precision(const std::string& name, bool native_bf16, std::string& note) {
  note.clear();
  if (name == "fp32") return Precision::Fp32;
  if (name != "bf16" && name != "bf16-emulated")
    throw Error("unknown precision '" + name + "'", "", "use fp32, bf16 or bf16-emulated");
  if (native_bf16) return Precision::Bf16;
  if (name == "bf16") {
    note = "this CPU has no native bf16 (avx512_bf16 / amx_bf16), where emulated bf16 is slower than fp32: running in "
           "fp32 (--precision bf16-emulated runs bf16 anyway)";
    return Precision::Fp32;
  }
  note = "this CPU has no native bf16 (avx512_bf16 / amx_bf16): bf16 is emulated, expect it to be slower than fp32";
  return Precision::Bf16;
}

bool cpu_has_bf16() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line))
    if (line.rfind("flags", 0) == 0)
      return line.find(" avx512_bf16") != std::string::npos || line.find(" amx_bf16") != std::string::npos;
  return false;
}

PrecisionGuard::PrecisionGuard(Precision precision)
    : enabled_(at::autocast::is_cpu_enabled()), dtype_(static_cast<int>(at::autocast::get_autocast_cpu_dtype())) {
  at::autocast::set_cpu_enabled(precision == Precision::Bf16);
  at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
}

PrecisionGuard::~PrecisionGuard() {
  at::autocast::set_cpu_enabled(enabled_);
  at::autocast::set_autocast_cpu_dtype(static_cast<at::ScalarType>(dtype_));
  if (!enabled_) at::autocast::clear_cache();
}

}  // namespace adafocus::infer
