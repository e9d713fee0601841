// A YAML preset merged over the schema, and each line as a command-line `key=value` override. What is accepted must
// come back the same through to_yaml (what a run folder's config.yaml relies on).
#include <cstdlib>
#include <sstream>

#include "core/config.h"
#include "core/error.h"
#include "fuzz.h"

namespace {

void check_round_trip(const adafocus::Config& c) {
  static const adafocus::Config defaults = adafocus::Config::defaults();
  adafocus::Config back = defaults;
  back.merge_yaml(c.to_yaml(), "round trip");  // must not throw
  if (back.to_yaml() != c.to_yaml()) std::abort();
}

}  // namespace

FUZZ_TARGET(config) {
  using namespace adafocus;
  static const Config defaults = Config::defaults();
  const std::string text(reinterpret_cast<const char*>(data), size);
  Config preset = defaults;
  try {
    preset.merge_yaml(text, "fuzz.yaml");
    check_round_trip(preset);
  } catch (const Error&) {
  }
  Config overridden = defaults;
  bool changed = false;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    try {
      overridden.set(line);
      changed = true;
    } catch (const Error&) {
    }
  }
  if (changed) check_round_trip(overridden);
}
