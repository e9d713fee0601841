#include "cli/common.h"

#include <fmt/format.h>

#include "core/error.h"
#include "methods/method.h"

namespace adafocus::cli {

void ConfigArgs::add_to(CLI::App& app) {
  app.add_option("-c,--config", file, "YAML preset over the built-in defaults (configs/*.yaml)");
  app.add_option("overrides", overrides, "dotted key=value overrides, e.g. model.backbone.width_mult=0.5");
  app.add_flag("--print-config", print, "print the resolved configuration as YAML and exit");
}

Config ConfigArgs::load(const std::vector<std::pair<std::string, std::string>>& flags) const {
  Config config = Config::defaults();
  if (!file.empty()) config.merge_file(file);
  for (const auto& [key, value] : flags) config.set(key, value, "command-line flag");
  for (const auto& assignment : overrides) config.set(assignment);
  return config;
}

bool ConfigArgs::print_if_asked(const Config& config) const {
  if (print) fmt::print("{}", config.to_yaml());
  return print;
}

nn::BackboneOptions single_backbone_options(const Config& config) {
  return methods::backbone_options(config, "model.backbone", config.get_int("model.num_classes"),
                                   config.get_int("data.segments"));
}

}  // namespace adafocus::cli
