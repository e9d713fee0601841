// Configuration: a schema of dotted keys with typed defaults (configs/defaults.yaml, compiled in), YAML presets that
// override some keys, and Hydra-style `key=value` overrides from the command line. Every key, value and error says
// where it came from (file:line or "command line").
//
//   Config c = Config::defaults();
//   c.merge_file("configs/actnet.yaml");          // may start with `base: other.yaml`
//   c.set("model.arch=resnet18");                 // value parsed as YAML: 3, 0.5, true, [1, 2], text
//   int64_t n = c.get_int("model.num_classes");
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

namespace adafocus {

/// The built-in schema as YAML text (configs/defaults.yaml).
const char* default_config_yaml();
/// The presets of configs/ compiled in, by path relative to configs/ ("activitynet_v2.yaml", "benchmark/...").
const std::map<std::string, std::string>& builtin_presets();

class Config {
 public:
  enum class Type { Bool, Int, Float, String, IntList, FloatList, StringList };
  using Value = std::variant<bool, int64_t, double, std::string, std::vector<int64_t>, std::vector<double>,
                             std::vector<std::string>>;

  /// The built-in schema with its defaults.
  static Config defaults();
  /// A schema from YAML text: every leaf is a key, its value the default and its type (1 int, 1.0 float,
  /// true bool, text string, [..] list). `source` names the text in errors.
  static Config from_yaml(const std::string& text, const std::string& source);

  /// Merges a YAML preset over the current values: a file, or else a built-in preset by name ("activitynet_v2",
  /// "configs/benchmark/random_patch.yaml"). A top-level `base: other.yaml` (relative to the preset) is merged first.
  /// Unknown keys and wrong types throw adafocus::Error naming file:line, key and closest valid key.
  void merge_file(const std::string& path);
  /// Merges YAML text; `source` names it in errors.
  void merge_yaml(const std::string& text, const std::string& source);
  /// Applies one `dotted.key=value` assignment.
  void set(const std::string& assignment, const std::string& source = "command line");
  /// Sets one key from YAML value text.
  void set(const std::string& key, const std::string& value, const std::string& source);
  /// Sets `key` to the value of another key of the same type (e.g. one backbone section's key to another's).
  void copy(const std::string& from, const std::string& key, const std::string& source);

  bool has(const std::string& key) const { return entries_.count(key) > 0; }
  Type type(const std::string& key) const;
  /// Where the current value of `key` came from: "default", "file.yaml:12" or "command line".
  const std::string& origin(const std::string& key) const;

  bool get_bool(const std::string& key) const;
  int64_t get_int(const std::string& key) const;
  double get_float(const std::string& key) const;
  std::string get_string(const std::string& key) const;
  std::vector<int64_t> get_ints(const std::string& key) const;
  std::vector<double> get_floats(const std::string& key) const;
  std::vector<std::string> get_strings(const std::string& key) const;

  /// All keys, in schema order.
  const std::vector<std::string>& keys() const { return order_; }
  /// The resolved configuration as YAML; reading it back with merge_file gives the same values.
  std::string to_yaml() const;
  /// Writes to_yaml() atomically.
  void save(const std::string& path) const;

 private:
  struct Entry {
    Type type;
    Value value;
    std::string origin;
  };
  const Entry& entry(const std::string& key, Type expected) const;
  void merge_file_impl(const std::string& path, std::vector<std::string>& chain);
  std::string closest_key(const std::string& key) const;

  std::map<std::string, Entry> entries_;
  std::vector<std::string> order_;
};

const char* type_name(Config::Type type);

}  // namespace adafocus
