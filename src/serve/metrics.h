// The server's figures in the Prometheus text exposition format (version 0.0.4): counters, gauges and histograms,
// each with labels, thread-safe. Written by hand: the format is a few lines per metric.
#pragma once

#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace adafocus::serve {

using Labels = std::vector<std::pair<std::string, std::string>>;

class Metrics {
 public:
  enum class Kind { Counter, Gauge, Histogram };
  /// Declares a metric (its HELP line; `buckets`: a histogram's upper bounds, ascending).
  void declare(const std::string& name, Kind kind, const std::string& help, std::vector<double> buckets = {});
  void add(const std::string& name, const Labels& labels, double value = 1);  ///< counter
  void set(const std::string& name, const Labels& labels, double value);      ///< gauge
  void observe(const std::string& name, const Labels& labels, double value);  ///< histogram
  /// Every declared metric, in the text format.
  std::string exposition() const;

 private:
  struct Series {
    double value = 0;             // counter, gauge; a histogram's sum
    double count = 0;             // histogram
    std::vector<double> buckets;  // histogram: cumulative counts per upper bound
  };
  struct Metric {
    Kind kind;
    std::string help;
    std::vector<double> bounds;
    std::map<Labels, Series> series;
  };
  Series& series(const std::string& name, const Labels& labels);

  mutable std::mutex mutex_;
  std::map<std::string, Metric> metrics_;
  std::vector<std::string> order_;
};

}  // namespace adafocus::serve
