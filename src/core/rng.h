// A small, fully specified random generator (SplitMix64). Every random choice of the data pipeline and the benchmark
// generator draws from one, derived from (seed, keys...), so results depend only on the seed and on what is being
// drawn - never on thread count, timing or the standard library's distribution implementations.
#pragma once

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <utility>
#include <vector>

namespace adafocus {

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}

  /// An independent stream for (seed, keys...), e.g. derive(seed, {epoch, sample}).
  static Rng derive(uint64_t seed, std::initializer_list<uint64_t> keys) {
    Rng r(seed ^ 0x6a09e667f3bcc909ULL);
    for (uint64_t k : keys) r.state_ = r.next() ^ (k * 0x9e3779b97f4a7c15ULL + 0x632be59bd9b4e019ULL);
    return r;
  }

  uint64_t next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  /// Uniform in [0, 1), 53 bits.
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  /// Uniform in [lo, hi).
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  /// Uniform integer in [0, n); n > 0.
  int64_t below(int64_t n) { return static_cast<int64_t>(uniform() * static_cast<double>(n)); }
  /// Uniform integer in [lo, hi] (inclusive).
  int64_t between(int64_t lo, int64_t hi) { return lo + below(hi - lo + 1); }
  /// Standard normal (Box-Muller).
  double normal() {
    const double u1 = 1.0 - uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
  bool coin() { return (next() >> 63) != 0; }
  /// Fisher-Yates.
  template <typename T>
  void shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[static_cast<size_t>(below(static_cast<int64_t>(i)))]);
  }

 private:
  uint64_t state_;
};

}  // namespace adafocus
