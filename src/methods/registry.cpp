#include "methods/registry.h"

#include <fmt/format.h>

#include <deque>

#include "core/error.h"
#include "methods/adafocus_v1.h"
#include "methods/adafocus_v1_tsm.h"
#include "methods/adafocus_v2.h"
#include "methods/adafocus_v2_tsm.h"
#include "methods/adafocus_v3.h"
#include "methods/adafuse.h"
#include "methods/baselines.h"

namespace adafocus::methods {

namespace {

// The registry, with the library's own methods in it from its first use (no static-initialisation order to rely on,
// and no method file the linker could drop). A deque: references to its entries stay valid as methods are added.
std::deque<MethodInfo>& registry() {
  static std::deque<MethodInfo> methods{adafocus_v1_method(), adafocus_v1_tsm_method(), adafocus_v2_method(),
                                        adafocus_v2_tsm_method(), adafocus_v3_method(),  adafuse_method(),
                                        full_frame_method()};
  return methods;
}

}  // namespace

void register_method(MethodInfo info) {
  if (info.name.empty() || !info.make) throw Error("a method needs a name and a factory to be registered");
  for (const MethodInfo& m : registry())
    if (m.name == info.name) throw Error("a method named '" + info.name + "' is already registered");
  registry().push_back(std::move(info));
}

const MethodInfo& method_info(const std::string& name, const std::string& where) {
  for (const MethodInfo& m : registry())
    if (m.name == name) return m;
  throw Error("unknown method '" + name + "'", where, fmt::format("use {}", fmt::join(method_names(), ", ")));
}

Method make_method(const Config& config, int64_t num_classes) {
  return method_info(config.get_string("model.method"), config.origin("model.method")).make(config, num_classes);
}

std::vector<std::string> method_names() {
  std::vector<std::string> names;
  for (const MethodInfo& m : registry()) names.push_back(m.name);
  return names;
}

}  // namespace adafocus::methods
