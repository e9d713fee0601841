#include "methods/checkpoint.h"

#include <sstream>

#include "core/error.h"
#include "io/pth.h"

namespace adafocus::methods {

namespace {

constexpr const char* kFormat = "adafocus-checkpoint-1";

c10::Dict<std::string, torch::Tensor> tensor_dict(const nn::StateDict& state) {
  c10::Dict<std::string, torch::Tensor> out;
  for (const auto& item : state) out.insert(item.key(), item.value().detach().cpu());
  return out;
}

nn::StateDict read_tensors(const io::PyValue* value, const std::string& path, const char* what) {
  nn::StateDict out;
  if (!value) return out;
  if (!value->is_dict()) throw Error(std::string("'") + what + "' is not a dict", path);
  for (const auto& [k, v] : *value->entries)
    if (k.kind == io::PyValue::Kind::String && v.is_tensor()) out.insert(k.text, v.tensor);
  return out;
}

}  // namespace

void save_checkpoint(const std::string& path, const Checkpoint& c) {
  c10::impl::GenericDict dict(c10::StringType::get(), c10::AnyType::get());
  dict.insert("format", std::string(kFormat));
  dict.insert("state_dict", tensor_dict(c.model));
  dict.insert("optimizer", tensor_dict(c.optimizer));
  dict.insert("epoch", c.epoch);
  dict.insert("batch", c.batch);
  dict.insert("best_metric", c.best_metric);
  dict.insert("best_epoch", c.best_epoch);
  dict.insert("epoch_sums", torch::tensor(c.epoch_sums.empty() ? std::vector<double>{0, 0, 0} : c.epoch_sums,
                                          torch::kDouble));
  dict.insert("config", c.config_yaml);
  std::string classes;
  for (const auto& name : c.classes) classes += name + "\n";
  dict.insert("classes", classes);
  if (!c.exits_json.empty()) dict.insert("exits", c.exits_json);
  io::write_pth(path, dict);
}

Checkpoint load_checkpoint(const std::string& path) {
  const io::PyValue root = io::read_pth(path);
  Checkpoint c;
  const io::PyValue* format = root.get("format");
  if (!format) {  // an official checkpoint, or a bare state dict
    c.model = io::read_state_dict(path);
    if (root.is_dict())
      for (const auto& [key, value] : *root.entries)
        if (key.kind == io::PyValue::Kind::String && value.is_dict()) {
          nn::StateDict entry = read_tensors(&value, path, key.text.c_str());
          if (!entry.is_empty()) c.official_entries.emplace_back(key.text, std::move(entry));
        }
    return c;
  }
  if (format->text != kFormat)
    throw Error("checkpoint format '" + format->text + "' is not " + kFormat, path, "written by another version?");
  auto integer = [&](const char* key) {
    const io::PyValue* v = root.get(key);
    if (!v || v->kind != io::PyValue::Kind::Int) throw Error(std::string("checkpoint without '") + key + "'", path);
    return v->integer;
  };
  auto text = [&](const char* key) {
    const io::PyValue* v = root.get(key);
    if (!v || v->kind != io::PyValue::Kind::String) throw Error(std::string("checkpoint without '") + key + "'", path);
    return v->text;
  };
  c.model = read_tensors(root.get("state_dict"), path, "state_dict");
  c.optimizer = read_tensors(root.get("optimizer"), path, "optimizer");
  c.epoch = integer("epoch");
  c.batch = integer("batch");
  c.best_epoch = integer("best_epoch");
  const io::PyValue* best = root.get("best_metric");
  c.best_metric = best && best->kind == io::PyValue::Kind::Float ? best->number : -1;
  if (const io::PyValue* sums = root.get("epoch_sums"); sums && sums->is_tensor()) {
    const auto t = sums->tensor.to(torch::kDouble).contiguous();
    c.epoch_sums.assign(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
  }
  c.config_yaml = text("config");
  if (const io::PyValue* exits = root.get("exits"); exits && exits->kind == io::PyValue::Kind::String)
    c.exits_json = exits->text;
  std::istringstream names(text("classes"));
  for (std::string line; std::getline(names, line);) c.classes.push_back(line);
  return c;
}

nn::StateDict model_state(const MethodImpl& method, const Checkpoint& c) {
  return method.import_checkpoint(nn::strip_module_prefix(c.model), c.official_entries);
}

LoadedModel load_model(const std::string& path, const std::string& preset, const std::vector<std::string>& overrides,
                       torch::Device device) {
  Checkpoint c = load_checkpoint(path);
  LoadedModel m{Config::defaults(), c.classes, nullptr, c.exits_json};
  if (!c.config_yaml.empty()) m.config.merge_yaml(c.config_yaml, path + " (its configuration)");
  if (!preset.empty()) m.config.merge_file(preset);
  if (c.config_yaml.empty() && preset.empty())
    throw Error("this checkpoint has no configuration (an official or bare state dict)", path,
                "give the preset it was trained with, e.g. -c activitynet_v2");
  for (const auto& o : overrides) m.config.set(o);
  const int64_t num_classes = m.classes.empty() ? m.config.get_int("model.num_classes")
                                                : static_cast<int64_t>(m.classes.size());
  for (int64_t i = static_cast<int64_t>(m.classes.size()); i < num_classes; ++i)
    m.classes.push_back("class " + std::to_string(i));
  m.method = make_method(m.config, num_classes);
  nn::load_state_dict(*m.method, model_state(*m.method, c), path);
  m.method->to(device);
  m.method->eval();
  m.method->optimize_for_inference();
  return m;
}

std::vector<std::pair<std::string, size_t>> save_official_checkpoint(const MethodImpl& method, const std::string& path) {
  const OfficialCheckpoint official = method.export_official_checkpoint(nn::state_dict(method));
  c10::impl::GenericDict root(c10::StringType::get(), c10::AnyType::get());
  std::vector<std::pair<std::string, size_t>> entries;
  for (const auto& [name, entry] : official.state_dicts) {
    c10::Dict<std::string, torch::Tensor> tensors;
    for (const auto& item : entry) tensors.insert(item.key(), item.value().detach().cpu().contiguous());
    root.insert(name, tensors);
    entries.emplace_back(name, tensors.size());
  }
  for (const auto& [name, value] : official.values) root.insert(name, value);
  io::write_pth(path, root);
  return entries;
}

}  // namespace adafocus::methods
