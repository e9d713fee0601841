// The fuzz targets: one function per parser of input that users did not write. It takes any bytes and must return
// normally, refusing bad input only with adafocus::Error (the server: HttpError) - any other exception, a crash, a
// hang, a leak or undefined behaviour is a finding. Each target file is built two ways (fuzz/CMakeLists.txt):
//   - with clang's libFuzzer (ADAFOCUS_FUZZ=ON): one executable per target, run by `make fuzz`;
//   - in every build, into `fuzz_replay TARGET FILE|DIR...`, which runs saved inputs through the same function: the
//     seeds and every input a finding was fixed for (fuzz/corpus/TARGET/), replayed by the test suite.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

namespace adafocus::fuzz {

using Target = void (*)(const uint8_t* data, size_t size);

/// Makes `target` known to fuzz_replay under `name`.
bool register_target(const char* name, Target target);
/// The targets registered, by name.
std::map<std::string, Target>& targets();

/// The bytes written to a file of this process (rewritten for every input, removed at exit), for the parsers that
/// read paths.
std::string as_file(const uint8_t* data, size_t size, const std::string& suffix);

}  // namespace adafocus::fuzz

#ifdef ADAFOCUS_LIBFUZZER
#define ADAFOCUS_FUZZ_ENTRY(name)                                                   \
  extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {        \
    fuzz_##name(data, size);                                                        \
    return 0;                                                                       \
  }
#else
#define ADAFOCUS_FUZZ_ENTRY(name) \
  static const bool fuzz_registered_##name = adafocus::fuzz::register_target(#name, fuzz_##name);
#endif

/// FUZZ_TARGET(name) { ... uses data, size ... }
#define FUZZ_TARGET(name)                                     \
  static void fuzz_##name(const uint8_t* data, size_t size); \
  ADAFOCUS_FUZZ_ENTRY(name)                                   \
  static void fuzz_##name(const uint8_t* data, size_t size)
