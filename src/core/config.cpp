#include "core/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <limits>

#include "core/error.h"
#include "core/files.h"

namespace adafocus {

namespace {

std::string where(const std::string& source, const YAML::Node& node) {
  // yaml-cpp marks are 0-based; a node built in memory has line -1.
  if (node.Mark().line < 0) return source;
  return source + ":" + std::to_string(node.Mark().line + 1);
}

bool parse_int(const std::string& s, int64_t& out) {
  if (s.empty()) return false;
  size_t i = (s[0] == '-' || s[0] == '+') ? 1 : 0;
  if (i == s.size() || !std::all_of(s.begin() + static_cast<long>(i), s.end(), ::isdigit)) return false;
  errno = 0;
  out = std::strtoll(s.c_str(), nullptr, 10);
  return errno == 0;
}

bool parse_float(const std::string& s, double& out) {
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  out = std::strtod(s.c_str(), &end);
  return errno == 0 && end == s.c_str() + s.size();
}

bool parse_bool(std::string s, bool& out) {
  std::transform(s.begin(), s.end(), s.begin(), ::tolower);
  if (s == "true" || s == "yes" || s == "on") return out = true, true;
  if (s == "false" || s == "no" || s == "off") return out = false, true;
  return false;
}

bool is_quoted(const YAML::Node& node) { return node.Tag() == "!"; }

// The type a schema default declares: 1 int, 1.0 float, true bool, [..] list, anything else text.
Config::Type infer_type(const YAML::Node& node) {
  if (node.IsSequence()) {
    bool all_int = node.size() > 0, all_number = node.size() > 0;
    for (const auto& item : node) {
      int64_t i;
      double f;
      if (!item.IsScalar() || is_quoted(item)) return Config::Type::StringList;
      all_int = all_int && parse_int(item.Scalar(), i);
      all_number = all_number && parse_float(item.Scalar(), f);
    }
    return all_int ? Config::Type::IntList : all_number ? Config::Type::FloatList : Config::Type::StringList;
  }
  if (node.IsNull() || is_quoted(node)) return Config::Type::String;
  int64_t i;
  double f;
  bool b;
  if (parse_bool(node.Scalar(), b)) return Config::Type::Bool;
  if (parse_int(node.Scalar(), i)) return Config::Type::Int;
  if (parse_float(node.Scalar(), f)) return Config::Type::Float;
  return Config::Type::String;
}

const char* example(Config::Type type) {
  switch (type) {
    case Config::Type::Bool: return "true or false";
    case Config::Type::Int: return "an integer such as 16";
    case Config::Type::Float: return "a number such as 0.5";
    case Config::Type::String: return "text";
    case Config::Type::IntList: return "a list of integers such as [1, 2]";
    case Config::Type::FloatList: return "a list of numbers such as [1, 0.875]";
    case Config::Type::StringList: return "a list such as [a, b]";
  }
  return "";
}

std::string scalar_text(const YAML::Node& node) {
  if (node.IsScalar()) return node.Scalar();
  if (node.IsNull()) return "(empty)";
  YAML::Emitter out;
  out << YAML::Flow << node;
  return out.c_str();
}

// Converts `node` to a value of `type`; throws naming the key and where the value was written.
Config::Value convert(const YAML::Node& node, Config::Type type, const std::string& key, const std::string& at) {
  auto fail = [&]() -> Error {
    return Error(fmt::format("'{}' must be {}, got '{}'", key, type_name(type), scalar_text(node)), at,
                 fmt::format("write {}", example(type)));
  };
  auto scalar = [&](const YAML::Node& n, Config::Type t, Config::Value& out) {
    if (!n.IsScalar()) return false;
    const std::string& s = n.Scalar();
    int64_t i;
    double f;
    bool b;
    switch (t) {
      case Config::Type::Bool: return parse_bool(s, b) ? (out = b, true) : false;
      case Config::Type::Int: return parse_int(s, i) ? (out = i, true) : false;
      case Config::Type::Float: return parse_float(s, f) ? (out = f, true) : false;
      default: return out = s, true;
    }
  };
  Config::Value out;
  switch (type) {
    case Config::Type::String:
      if (node.IsNull()) return std::string();
      [[fallthrough]];
    case Config::Type::Bool:
    case Config::Type::Int:
    case Config::Type::Float:
      if (!scalar(node, type, out)) throw fail();
      return out;
    default: break;
  }
  if (!node.IsSequence()) throw fail();
  const Config::Type element = type == Config::Type::IntList     ? Config::Type::Int
                               : type == Config::Type::FloatList ? Config::Type::Float
                                                                 : Config::Type::String;
  std::vector<int64_t> ints;
  std::vector<double> floats;
  std::vector<std::string> strings;
  for (const auto& item : node) {
    if (!scalar(item, element, out)) throw fail();
    if (element == Config::Type::Int) ints.push_back(std::get<int64_t>(out));
    if (element == Config::Type::Float) floats.push_back(std::get<double>(out));
    if (element == Config::Type::String) strings.push_back(std::get<std::string>(out));
  }
  if (element == Config::Type::Int) return ints;
  if (element == Config::Type::Float) return floats;
  return strings;
}

std::string float_text(double v) {
  std::string s = fmt::format("{}", v);
  if (std::isfinite(v) && s.find_first_of(".e") == std::string::npos) s += ".0";
  return s;
}

YAML::Node to_node(const Config::Value& value) {
  YAML::Node node;
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, double>) {
          node = float_text(v);
        } else if constexpr (std::is_same_v<T, std::vector<double>>) {
          for (double x : v) node.push_back(float_text(x));
          node.SetStyle(YAML::EmitterStyle::Flow);
        } else if constexpr (std::is_same_v<T, std::vector<int64_t>> ||
                             std::is_same_v<T, std::vector<std::string>>) {
          node = YAML::Node(YAML::NodeType::Sequence);
          for (const auto& x : v) node.push_back(x);
          node.SetStyle(YAML::EmitterStyle::Flow);
        } else {
          node = v;
        }
      },
      value);
  return node;
}

YAML::Node parse_yaml(const std::string& text, const std::string& source) {
  try {
    return YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw Error("invalid YAML: " + e.msg, source + ":" + std::to_string(e.mark.line + 1),
                "check indentation and that every key is followed by ': '");
  }
}

}  // namespace

const char* type_name(Config::Type type) {
  switch (type) {
    case Config::Type::Bool: return "a bool";
    case Config::Type::Int: return "an integer";
    case Config::Type::Float: return "a number";
    case Config::Type::String: return "text";
    case Config::Type::IntList: return "a list of integers";
    case Config::Type::FloatList: return "a list of numbers";
    case Config::Type::StringList: return "a list of text";
  }
  return "?";
}

Config Config::defaults() { return from_yaml(default_config_yaml(), "configs/defaults.yaml"); }

Config Config::from_yaml(const std::string& text, const std::string& source) {
  Config config;
  std::function<void(const YAML::Node&, const std::string&)> walk = [&](const YAML::Node& map,
                                                                        const std::string& prefix) {
    for (const auto& kv : map) {
      const std::string key = prefix + kv.first.as<std::string>();
      const YAML::Node& node = kv.second;
      if (node.IsMap()) {
        walk(node, key + ".");
        continue;
      }
      const Type type = infer_type(node);
      config.entries_[key] = Entry{type, convert(node, type, key, where(source, node)), "default"};
      config.order_.push_back(key);
    }
  };
  YAML::Node root = parse_yaml(text, source);
  if (!root.IsMap()) throw Error("a config schema must be a map of keys", source);
  walk(root, "");
  return config;
}

void Config::merge_file(const std::string& path) {
  std::vector<std::string> chain;
  merge_file_impl(path, chain);
}

namespace {
// The built-in preset a name refers to ("activitynet_v2", "benchmark/v2.yaml", "configs/x.yaml"), or nullptr.
const std::string* builtin(std::string name) {
  if (name.rfind("configs/", 0) == 0) name = name.substr(8);
  if (name.size() < 5 || name.compare(name.size() - 5, 5, ".yaml") != 0) name += ".yaml";
  auto it = builtin_presets().find(std::filesystem::path(name).lexically_normal().string());
  return it == builtin_presets().end() ? nullptr : &it->second;
}
}  // namespace

void Config::merge_file_impl(const std::string& path, std::vector<std::string>& chain) {
  namespace fs = std::filesystem;
  const bool on_disk = fs::exists(path);
  const std::string* preset = on_disk ? nullptr : builtin(path);
  if (!on_disk && !preset) {
    std::string names;
    for (const auto& [name, text] : builtin_presets())
      if (name != "defaults.yaml") names += (names.empty() ? "" : ", ") + name.substr(0, name.size() - 5);
    throw Error("config file not found", path, "give a YAML file, or a built-in preset: " + names);
  }
  const std::string id = on_disk ? fs::weakly_canonical(path).string() : "builtin:" + path;
  if (std::find(chain.begin(), chain.end(), id) != chain.end())
    throw Error("presets include each other in a cycle through 'base:'", path, "remove one of the 'base:' lines");
  chain.push_back(id);
  const std::string text = on_disk ? read_file(path) : *preset;
  YAML::Node root = parse_yaml(text, path);
  if (root.IsMap() && root["base"]) {
    const YAML::Node base = root["base"];
    if (!base.IsScalar()) throw Error("'base' must be a file name", where(path, base));
    merge_file_impl((fs::path(path).parent_path() / base.Scalar()).string(), chain);
  }
  merge_yaml(text, path);
  chain.pop_back();
}

void Config::merge_yaml(const std::string& text, const std::string& source) {
  YAML::Node root = parse_yaml(text, source);
  if (root.IsNull()) return;  // an empty preset changes nothing
  if (!root.IsMap()) throw Error("a config file must be a map of keys", source, "e.g. 'model:\\n  arch: resnet50'");
  std::function<void(const YAML::Node&, const std::string&)> walk = [&](const YAML::Node& map,
                                                                        const std::string& prefix) {
    for (const auto& kv : map) {
      const std::string key = prefix + kv.first.as<std::string>();
      if (key == "base") continue;  // handled by merge_file
      const std::string at = where(source, kv.first);
      auto it = entries_.find(key);
      if (it != entries_.end()) {
        it->second.value = convert(kv.second, it->second.type, key, at);
        it->second.origin = at;
        continue;
      }
      const bool section = std::any_of(order_.begin(), order_.end(),
                                       [&](const std::string& k) { return k.rfind(key + ".", 0) == 0; });
      if (!section) throw Error("unknown key '" + key + "'", at, "did you mean '" + closest_key(key) + "'?");
      if (!kv.second.IsMap())
        throw Error("'" + key + "' is a section, not a value", at,
                    "set one of its keys, e.g. '" + closest_key(key + ".") + "'");
      walk(kv.second, key + ".");
    }
  };
  walk(root, "");
}

void Config::set(const std::string& assignment, const std::string& source) {
  const size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw Error("expected key=value, got '" + assignment + "'", source, "e.g. model.arch=resnet18");
  set(assignment.substr(0, eq), assignment.substr(eq + 1), source);
}

void Config::set(const std::string& key, const std::string& value, const std::string& source) {
  auto it = entries_.find(key);
  if (it == entries_.end()) {
    const bool section = std::any_of(order_.begin(), order_.end(),
                                     [&](const std::string& k) { return k.rfind(key + ".", 0) == 0; });
    if (section)
      throw Error("'" + key + "' is a section, not a value", source,
                  "set one of its keys, e.g. '" + closest_key(key + ".") + "'");
    throw Error("unknown key '" + key + "'", source, "did you mean '" + closest_key(key) + "'?");
  }
  YAML::Node node;
  try {
    node = YAML::Load(value);
  } catch (const YAML::Exception&) {
    node = YAML::Node(value);  // unparsable as YAML: take it as text and let the type check decide
  }
  it->second.value = convert(node, it->second.type, key, source);
  it->second.origin = source;
}

void Config::copy(const std::string& from, const std::string& key, const std::string& source) {
  const Value value = entry(from, type(key)).value;  // unknown keys and different types are errors
  Entry& to = entries_.at(key);
  to.value = value;
  to.origin = source;
}

std::string Config::closest_key(const std::string& key) const {
  std::string best;
  size_t best_distance = std::numeric_limits<size_t>::max();
  for (const auto& candidate : order_) {
    // Compare with the full key and, for keys written without their section, with the last component.
    const std::string leaf = candidate.substr(candidate.rfind('.') + 1);
    size_t d = std::min(edit_distance(key, candidate), edit_distance(key, leaf) + 1);
    if (d < best_distance) best_distance = d, best = candidate;
  }
  return best;
}

const Config::Entry& Config::entry(const std::string& key, Type expected) const {
  auto it = entries_.find(key);
  if (it == entries_.end()) throw Error("unknown key '" + key + "'", "", "did you mean '" + closest_key(key) + "'?");
  if (it->second.type != expected)
    throw Error(fmt::format("'{}' is {}, not {}", key, type_name(it->second.type), type_name(expected)));
  return it->second;
}

Config::Type Config::type(const std::string& key) const {
  auto it = entries_.find(key);
  if (it == entries_.end()) throw Error("unknown key '" + key + "'", "", "did you mean '" + closest_key(key) + "'?");
  return it->second.type;
}

const std::string& Config::origin(const std::string& key) const {
  auto it = entries_.find(key);
  if (it == entries_.end()) throw Error("unknown key '" + key + "'");
  return it->second.origin;
}

bool Config::get_bool(const std::string& key) const { return std::get<bool>(entry(key, Type::Bool).value); }
int64_t Config::get_int(const std::string& key) const { return std::get<int64_t>(entry(key, Type::Int).value); }
double Config::get_float(const std::string& key) const { return std::get<double>(entry(key, Type::Float).value); }
std::string Config::get_string(const std::string& key) const {
  return std::get<std::string>(entry(key, Type::String).value);
}
std::vector<int64_t> Config::get_ints(const std::string& key) const {
  return std::get<std::vector<int64_t>>(entry(key, Type::IntList).value);
}
std::vector<double> Config::get_floats(const std::string& key) const {
  return std::get<std::vector<double>>(entry(key, Type::FloatList).value);
}
std::vector<std::string> Config::get_strings(const std::string& key) const {
  return std::get<std::vector<std::string>>(entry(key, Type::StringList).value);
}

std::string Config::to_yaml() const {
  // Schema keys of one section are contiguous in order_, so sections open and close as the key prefix changes.
  YAML::Emitter out;
  out << YAML::BeginMap;
  std::vector<std::string> open;
  for (const auto& key : order_) {
    std::vector<std::string> parts;
    for (size_t start = 0, dot;; start = dot + 1) {
      dot = key.find('.', start);
      parts.push_back(key.substr(start, dot - start));
      if (dot == std::string::npos) break;
    }
    size_t common = 0;
    while (common < open.size() && common + 1 < parts.size() && open[common] == parts[common]) ++common;
    for (; open.size() > common; open.pop_back()) out << YAML::EndMap;
    for (; open.size() + 1 < parts.size(); open.push_back(parts[open.size()]))
      out << YAML::Key << parts[open.size()] << YAML::Value << YAML::BeginMap;
    out << YAML::Key << parts.back() << YAML::Value << to_node(entries_.at(key).value);
  }
  for (; !open.empty(); open.pop_back()) out << YAML::EndMap;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

void Config::save(const std::string& path) const { write_file_atomic(path, to_yaml()); }

}  // namespace adafocus
