// The server's parts that decide without a network: the load-adaptive budget controller (cost fit, lowering,
// hysteresis, shedding) worked by hand, and the Prometheus exposition. The server itself is driven over HTTP in
// tests/python/test_serve.py.
#include <gtest/gtest.h>

#include <thread>

#include "serve/controller.h"
#include "serve/http.h"
#include "serve/metrics.h"

namespace adafocus::serve {
namespace {

// Three levels costing 1, 2 and 4 GFLOPs per video; a video takes 10 ms plus 5 ms per GFLOP, so 15, 20 and 30 ms.
std::vector<Level> three_levels() { return {{1, 50}, {2, 60}, {4, 70}}; }

void observe_both(BudgetController& c) {
  c.observe_batch(4, 4, 4 * 0.010 + 0.005 * 4);    // 4 videos at 1 GFLOP: 60 ms
  c.observe_batch(4, 16, 4 * 0.010 + 0.005 * 16);  // 4 videos at 4 GFLOPs: 120 ms
}

TEST(BudgetController, FitsTheTimePerVideoAndPerGflop) {
  BudgetController c(three_levels(), {});
  observe_both(c);
  EXPECT_NEAR(c.video_seconds(0), 0.015, 1e-9);
  EXPECT_NEAR(c.video_seconds(1), 0.020, 1e-9);
  EXPECT_NEAR(c.video_seconds(2), 0.030, 1e-9);
  // Batches all alike cannot tell the two apart: time in proportion to the videos.
  BudgetController alike(three_levels(), {});
  alike.observe_batch(2, 8, 0.1);
  alike.observe_batch(2, 8, 0.1);
  EXPECT_NEAR(alike.video_seconds(0), 0.05, 1e-9);
  EXPECT_NEAR(alike.video_seconds(2), 0.05, 1e-9);
}

TEST(BudgetController, LowersAtOnceAndShedsBelowTheCheapestLevel) {
  ControllerOptions o;
  o.slo_seconds = 0.1;
  BudgetController c(three_levels(), o);
  observe_both(c);
  Admission a = c.admit(2, true, 0.0);  // 30 ms: the full budget
  EXPECT_TRUE(a.accepted);
  EXPECT_EQ(a.level, 2u);
  EXPECT_FALSE(a.degraded);
  a = c.admit(2, true, 0.08);  // 80 ms ahead: 110 ms at level 2, 100 at level 1 (just meets it)
  EXPECT_TRUE(a.accepted);
  EXPECT_EQ(a.level, 1u);
  EXPECT_TRUE(a.degraded);
  EXPECT_NEAR(a.predicted, 0.1, 1e-9);
  EXPECT_EQ(c.level_in_force(), 1u);
  // Asked for less than the level in force: served at what it asked.
  a = c.admit(0, true, 0.0);
  EXPECT_EQ(a.level, 0u);
  EXPECT_FALSE(a.degraded);
  // degrade=false: its own level or nothing.
  a = c.admit(2, false, 0.08);
  EXPECT_FALSE(a.accepted);
  EXPECT_EQ(a.level, 2u);
  EXPECT_GE(a.retry_after, 1.0);
  // 200 ms ahead: even level 0 (215 ms) misses; refused.
  a = c.admit(2, true, 0.2);
  EXPECT_FALSE(a.accepted);
  EXPECT_EQ(a.level, 0u);
  EXPECT_EQ(c.level_in_force(), 0u);
}

TEST(BudgetController, RaisesOneLevelAtATimeWithRoomToSpareAfterTheHold) {
  ControllerOptions o;
  o.slo_seconds = 0.1;
  o.hold = std::chrono::milliseconds(0);
  BudgetController c(three_levels(), o);
  observe_both(c);
  c.admit(2, true, 0.2);  // down to level 0
  ASSERT_EQ(c.level_in_force(), 0u);
  // Level 1 would answer in 75 ms: meets the SLO but not with the margin (70 ms = 0.7 x 100): stays.
  EXPECT_EQ(c.admit(2, true, 0.055).level, 0u);
  // With nothing ahead: up one level per request, not straight to the top.
  EXPECT_EQ(c.admit(2, true, 0.0).level, 1u);
  EXPECT_EQ(c.admit(2, true, 0.0).level, 2u);
  // A hold: no raise within it after a change.
  ControllerOptions held = o;
  held.hold = std::chrono::milliseconds(60000);
  BudgetController slow(three_levels(), held);
  observe_both(slow);
  slow.admit(2, true, 0.2);
  EXPECT_EQ(slow.admit(2, true, 0.0).level, 0u);
}

TEST(BudgetController, NeverBelowTheMinimumLevelAndNoObjectiveNoShedding) {
  ControllerOptions o;
  o.slo_seconds = 0.1;
  o.min_level = 1;
  BudgetController c(three_levels(), o);
  observe_both(c);
  // 82 ms ahead: only level 0 meets it (97 ms), but level 1 is the floor (102 ms): refused.
  const Admission a = c.admit(2, true, 0.082);
  EXPECT_EQ(a.level, 1u);
  EXPECT_FALSE(a.accepted);
  o.min_level = 0;
  BudgetController floorless(three_levels(), o);
  observe_both(floorless);
  EXPECT_EQ(floorless.admit(2, true, 0.082).level, 0u);
  EXPECT_TRUE(floorless.admit(2, true, 0.082).accepted);
  BudgetController free(three_levels(), {});
  observe_both(free);
  const Admission b = free.admit(2, true, 10.0);
  EXPECT_TRUE(b.accepted);
  EXPECT_EQ(b.level, 2u);
}

TEST(BudgetController, CountsTheDecodingAheadAtEveryLevel) {
  ControllerOptions o;
  o.slo_seconds = 0.1;
  o.decoders = 2;
  BudgetController c(three_levels(), o);
  observe_both(c);
  c.observe_decode(0.025);
  c.observe_decode(0.025);  // 25 ms per upload
  // Its own decode (25 ms) and 4 ahead on 2 threads (50 ms): 75 ms before the network; level 1 (20 ms) fits.
  Admission a = c.admit(2, true, 0.0, 4, true);
  EXPECT_EQ(a.level, 1u);
  EXPECT_NEAR(a.predicted, 0.095, 1e-9);
  // A window already decoded waits for none of that.
  EXPECT_NEAR(c.admit(0, true, 0.0, 0, false).predicted, 0.015, 1e-9);
  // Decoding alone over the objective: no level helps; refused.
  EXPECT_FALSE(c.admit(2, true, 0.0, 10, true).accepted);
}

TEST(Metrics, PrometheusTextWithCumulativeBucketsAndEscapedLabels) {
  Metrics m;
  m.declare("x_total", Metrics::Kind::Counter, "Things.");
  m.declare("t_seconds", Metrics::Kind::Histogram, "Times.", {0.1, 1});
  m.declare("g", Metrics::Kind::Gauge, "A level.");
  m.add("x_total", {{"path", "a\"b\\c\nd"}}, 2);
  m.observe("t_seconds", {}, 0.05);
  m.observe("t_seconds", {}, 0.5);
  m.observe("t_seconds", {}, 5);
  m.set("g", {}, 3);
  m.set("g", {}, 4);
  EXPECT_EQ(m.exposition(),
            "# HELP x_total Things.\n# TYPE x_total counter\n"
            "x_total{path=\"a\\\"b\\\\c\\nd\"} 2\n"
            "# HELP t_seconds Times.\n# TYPE t_seconds histogram\n"
            "t_seconds_bucket{le=\"0.1\"} 1\nt_seconds_bucket{le=\"1\"} 2\nt_seconds_bucket{le=\"+Inf\"} 3\n"
            "t_seconds_sum 5.55\nt_seconds_count 3\n"
            "# HELP g A level.\n# TYPE g gauge\ng 4\n");
  EXPECT_ANY_THROW(m.add("undeclared", {}));
}

TEST(Http, UrlDecoding) {
  EXPECT_EQ(url_decode("a%20b+c%2Fd"), "a b c/d");
  EXPECT_EQ(url_decode("100%"), "100%");
  EXPECT_EQ(url_decode("%zz"), "%zz");
}

}  // namespace
}  // namespace adafocus::serve
