// Exit threshold tables (calibrate's JSON, also carried inside checkpoints), and the settings a budget picks from them.
#include <cstdlib>

#include "core/error.h"
#include "fuzz.h"
#include "infer/early_exit.h"

FUZZ_TARGET(thresholds) {
  using namespace adafocus;
  infer::ExitTable table;
  try {
    table = infer::ExitTable::from_json(std::string(reinterpret_cast<const char*>(data), size), "fuzz.json");
  } catch (const Error&) {
    return;
  }
  for (double budget : {-1.0, 0.0, 1e-3, 1.0, 1e9}) {
    const infer::ExitSetting s = table.for_budget_or_all(budget);
    if (s.thresholds.size() != table.exit_gflops.size()) std::abort();
  }
  infer::ExitTable::from_json(table.to_json(), "round trip");  // what was accepted writes back readable
}
