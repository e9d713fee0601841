#include "serve/metrics.h"

#include <fmt/format.h>

#include <cmath>

#include "core/error.h"

namespace adafocus::serve {

namespace {

std::string label_text(const Labels& labels, const std::string& extra = "") {
  std::string out;
  for (const auto& [name, value] : labels) {
    std::string escaped;
    for (char c : value) escaped += c == '\\' ? "\\\\" : c == '"' ? "\\\"" : c == '\n' ? "\\n" : std::string(1, c);
    out += fmt::format("{}{}=\"{}\"", out.empty() ? "" : ",", name, escaped);
  }
  if (!extra.empty()) out += (out.empty() ? "" : ",") + extra;
  return out.empty() ? "" : "{" + out + "}";
}

std::string number(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  return fmt::format("{}", v);
}

}  // namespace

void Metrics::declare(const std::string& name, Kind kind, const std::string& help, std::vector<double> buckets) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (metrics_.count(name)) return;
  metrics_[name] = {kind, help, std::move(buckets), {}};
  order_.push_back(name);
}

Metrics::Series& Metrics::series(const std::string& name, const Labels& labels) {
  auto it = metrics_.find(name);
  if (it == metrics_.end()) throw Error("metric '" + name + "' is not declared");
  Series& s = it->second.series[labels];
  if (it->second.kind == Kind::Histogram && s.buckets.empty()) s.buckets.assign(it->second.bounds.size(), 0);
  return s;
}

void Metrics::add(const std::string& name, const Labels& labels, double value) {
  std::lock_guard<std::mutex> lock(mutex_);
  series(name, labels).value += value;
}

void Metrics::set(const std::string& name, const Labels& labels, double value) {
  std::lock_guard<std::mutex> lock(mutex_);
  series(name, labels).value = value;
}

void Metrics::observe(const std::string& name, const Labels& labels, double value) {
  std::lock_guard<std::mutex> lock(mutex_);
  Series& s = series(name, labels);
  const auto& bounds = metrics_.at(name).bounds;
  for (size_t i = 0; i < bounds.size(); ++i)
    if (value <= bounds[i]) s.buckets[i] += 1;
  s.value += value;
  s.count += 1;
}

std::string Metrics::exposition() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::string out;
  for (const std::string& name : order_) {
    const Metric& m = metrics_.at(name);
    const char* type = m.kind == Kind::Counter ? "counter" : m.kind == Kind::Gauge ? "gauge" : "histogram";
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, m.help, name, type);
    for (const auto& [labels, s] : m.series) {
      if (m.kind != Kind::Histogram) {
        out += fmt::format("{}{} {}\n", name, label_text(labels), number(s.value));
        continue;
      }
      for (size_t i = 0; i < m.bounds.size(); ++i)
        out += fmt::format("{}_bucket{} {}\n", name, label_text(labels, "le=\"" + number(m.bounds[i]) + "\""),
                           number(s.buckets[i]));
      out += fmt::format("{}_bucket{} {}\n", name, label_text(labels, "le=\"+Inf\""), number(s.count));
      out += fmt::format("{}_sum{} {}\n{}_count{} {}\n", name, label_text(labels), number(s.value), name,
                         label_text(labels), number(s.count));
    }
  }
  return out;
}

}  // namespace adafocus::serve
