#include "cli/common.h"

#include <fmt/format.h>

#include "core/error.h"
#include "core/files.h"
#include "io/list_file.h"
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

infer::ExitTable exit_table(const methods::LoadedModel& model, const std::string& file, const std::string& checkpoint) {
  if (!file.empty()) return infer::ExitTable::from_json(read_file(file), file);
  if (!model.exits_json.empty()) return infer::ExitTable::from_json(model.exits_json, checkpoint + " (its thresholds)");
  throw Error("no early-exit thresholds: the checkpoint carries none and no --thresholds file was given", checkpoint,
              "run adafocus calibrate --checkpoint " + checkpoint + " --embed (or --out F.json, then --thresholds F.json)");
}

void set_class_names(methods::LoadedModel& model, const std::string& class_index) {
  std::vector<std::string> names = io::read_class_index(class_index);
  if (names.size() != model.classes.size())
    throw Error(fmt::format("{} class names for a model of {} classes", names.size(), model.classes.size()),
                class_index, "the classInd.txt of the data the model was trained on");
  model.classes = std::move(names);
}

}  // namespace adafocus::cli
