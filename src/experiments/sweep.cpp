#include "experiments/sweep.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/text.h"
#include "experiments/demo.h"
#include "core/error.h"
#include "core/files.h"
#include "core/progress.h"

namespace adafocus::experiments {

namespace {

namespace fs = std::filesystem;

// The training log's last epoch: where the learned policy looked while it trained.
nlohmann::json last_epoch(const std::string& metrics) {
  if (!fs::exists(metrics)) return {};
  std::istringstream in(read_file(metrics));
  std::string line, last;
  while (std::getline(in, line))
    if (!line.empty()) last = line;
  return last.empty() ? nlohmann::json() : nlohmann::json::parse(last);
}

std::string cell(const nlohmann::json& row, const char* key, const char* format) {
  return row.contains(key) && row[key].is_number() ? fmt::format(fmt::runtime(format), row[key].get<double>()) : "-";
}

// The demo command line of one cell, for a child process.
std::vector<std::string> demo_command(const DemoOptions& demo, int threads, const Resources& resources) {
  // Through /proc/self/exe, the running binary itself: a rebuild that replaces the file mid-sweep does not matter.
  std::vector<std::string> argv{"/proc/self/exe", "--threads", std::to_string(threads),
                                "--device", resources.device, "demo", "--out", demo.out, "--methods", demo.methods,
                                "--train-videos", std::to_string(demo.train_videos), "--val-videos",
                                std::to_string(demo.val_videos), "--epochs", std::to_string(demo.epochs),
                                "--pretrain-images", std::to_string(demo.pretrain_images), "--calibration-videos",
                                std::to_string(demo.calibration_videos)};
  for (const auto& o : demo.overrides) argv.insert(argv.end(), {"--set", o});
  return argv;
}

// Starts `argv` with its output (stdout and stderr) in `log`; returns the child's pid.
pid_t spawn(const std::vector<std::string>& argv, const std::string& log) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = 0;
  const int error = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (error != 0) throw Error(std::string("cannot start a cell: ") + std::strerror(error), argv[0]);
  return pid;
}

// The last lines of a file, to show why a cell failed.
std::string tail(const std::string& path, size_t lines) {
  const std::string text = fs::exists(path) ? read_file(path) : "";
  size_t pos = text.size(), seen = 0;
  while (pos > 0 && seen <= lines)
    if (text[--pos] == '\n') ++seen;
  return text.substr(pos == 0 ? 0 : pos + 1);
}

}  // namespace

const std::vector<SweepSetting>& sweep_settings() {
  static const std::vector<SweepSetting> all{
      {"default", "the demo's generator", {}},
      {"small", "items 24-28 px", {"synthetic.item_size=[24, 28]"}},
      {"clutter", "14-18 fragments", {"synthetic.clutter=[14, 18]"}},
      {"brief", "visible in 20-35% of the frames", {"synthetic.visible=[0.2, 0.35]"}},
      {"hard", "items 24-32 px, 12-16 fragments, visible 25-45%",
       {"synthetic.item_size=[24, 32]", "synthetic.clutter=[12, 16]", "synthetic.visible=[0.25, 0.45]"}},
  };
  return all;
}

int run_sweep(const SweepOptions& given, const Resources& resources) {
  SweepOptions args = given;
  if (args.quick) {  // the demo's setting and the hardest, one seed
    args.settings = "default,hard";
    args.seeds = "0";
  }
  std::vector<SweepSetting> chosen;
  for (const auto& name : split_commas(args.settings)) {
    auto it = std::find_if(sweep_settings().begin(), sweep_settings().end(), [&](const SweepSetting& s) { return s.name == name; });
    if (it == sweep_settings().end()) {
      std::string names;
      for (const auto& s : sweep_settings()) names += (names.empty() ? "" : ", ") + s.name;
      throw Error("unknown setting '" + name + "'", "--settings", "one of: " + names);
    }
    chosen.push_back(*it);
  }
  std::vector<int64_t> seeds;
  for (const auto& s : split_commas(args.seeds)) {
    try {
      seeds.push_back(std::stoll(s));
    } catch (const std::exception&) {
      throw Error("not a seed: '" + s + "'", "--seeds", "e.g. --seeds 0,1");
    }
  }
  if (chosen.empty() || seeds.empty() || split_commas(args.methods).empty())
    throw Error("nothing to run", "--settings/--seeds/--methods", "name at least one of each");
  fs::create_directories(args.out);

  struct Cell {
    std::string name;
    const SweepSetting* setting;
    int64_t seed;
    DemoOptions demo;
    double seconds = 0;
    bool failed = false;
  };
  std::vector<Cell> todo;
  for (const SweepSetting& setting : chosen)
    for (int64_t seed : seeds) {
      Cell c{fmt::format("{}_seed{}", setting.name, seed), &setting, seed, {}};
      c.demo.out = args.out + "/" + c.name;
      c.demo.methods = args.methods;
      c.demo.train_videos = args.train_videos;
      c.demo.val_videos = args.val_videos;
      c.demo.epochs = args.epochs;
      c.demo.pretrain_images = args.pretrain_images;
      c.demo.calibration_videos = 0;  // accuracy at full cost; the budget curves are the demo's
      c.demo.overrides = setting.overrides;
      c.demo.overrides.push_back(fmt::format("seed={}", seed));
      c.demo.overrides.insert(c.demo.overrides.end(), args.overrides.begin(), args.overrides.end());
      todo.push_back(std::move(c));
    }

  const auto start = std::chrono::steady_clock::now();
  const int jobs = static_cast<int>(std::min<size_t>(todo.size(), args.jobs > 0 ? args.jobs : std::max(1, resources.threads)));
  if (jobs <= 1) {
    for (Cell& c : todo) {
      fmt::print(stderr, "==== {} ({}, seed {}) ====\n", c.name, c.setting->description, c.seed);
      const auto cell_start = std::chrono::steady_clock::now();
      if (const int status = run_demo(c.demo, resources); status != 0) return status;
      c.seconds = seconds_since(cell_start);
    }
  } else {
    // The small benchmark networks barely gain from a second thread (a 2-thread training step here was 1.1x as fast
    // as a 1-thread one), so cells side by side with a thread each use the cores better. Spinning OpenMP threads
    // would make processes side by side slow each other down out of proportion: they wait passively.
    setenv("OMP_WAIT_POLICY", "passive", 0);
    const int threads = std::max(1, resources.threads / jobs);
    fmt::print(stderr, "{} cells, {} at a time with {} thread{} each; each cell's output in its demo.log\n", todo.size(),
               jobs, threads, threads == 1 ? "" : "s");
    std::map<pid_t, std::pair<size_t, std::chrono::steady_clock::time_point>> running;
    size_t next = 0, finished = 0;
    while (next < todo.size() || !running.empty()) {
      while (static_cast<int>(running.size()) < jobs && next < todo.size()) {
        Cell& c = todo[next];
        try {
          fs::create_directories(c.demo.out);
          running[spawn(demo_command(c.demo, threads, resources), c.demo.out + "/demo.log")] = {next, std::chrono::steady_clock::now()};
        } catch (...) {  // no cell is left running behind the error
          for (const auto& r : running) kill(r.first, SIGTERM);
          for (const auto& r : running) waitpid(r.first, nullptr, 0);
          throw;
        }
        ++next;
        fmt::print(stderr, "started {} ({}, seed {})\n", c.name, c.setting->description, c.seed);
      }
      int status = 0;
      const pid_t pid = waitpid(-1, &status, 0);
      if (pid < 0) throw Error(std::string("waiting for the cells: ") + std::strerror(errno), args.out);
      auto it = running.find(pid);
      if (it == running.end()) continue;
      Cell& c = todo[it->second.first];
      c.seconds = seconds_since(it->second.second);
      running.erase(it);
      c.failed = !WIFEXITED(status) || WEXITSTATUS(status) != 0;
      fmt::print(stderr, "[{}/{}] {} {} after {:.0f} s\n", ++finished, todo.size(), c.name,
                 c.failed ? "FAILED" : "done", c.seconds);
      if (c.failed) fmt::print(stderr, "{}", tail(c.demo.out + "/demo.log", 5));
    }
    std::vector<std::string> failed;
    for (const Cell& c : todo)
      if (c.failed) failed.push_back(c.name);
    if (!failed.empty())
      throw Error(fmt::format("{} of {} cells failed: {}", failed.size(), todo.size(), fmt::join(failed, ", ")),
                  args.out, "see each failed cell's demo.log; finished steps are kept, so the same command continues");
  }

  nlohmann::json rows = nlohmann::json::array(), cells = nlohmann::json::array();
  for (const Cell& c : todo) {
    for (nlohmann::json row : read_json(c.demo.out + "/results.json")) {
      row["setting"] = c.setting->name;
      row["seed"] = c.seed;
      const nlohmann::json log = last_epoch(c.demo.out + "/runs/" + row["method"].get<std::string>() + "/metrics.jsonl");
      for (const char* key : {"train_top1", "train_iou", "train_hits", "policy_spread", "policy_grad"})
        if (log.contains(key)) row[key] = log[key];
      rows.push_back(row);
    }
    cells.push_back({{"name", c.name}, {"setting", c.setting->name}, {"description", c.setting->description},
                     {"overrides", c.setting->overrides}, {"seed", c.seed}, {"seconds", c.seconds}});
  }

  // One table; "on item" is the share of the frames looked at that show the item (V3 chooses them), "items" the
  // pretrained patch (or full-frame) network on the setting's single items, "glance items" the pretrained glance on
  // items at its scale, "glance" the trained glance's own head on the val videos.
  std::vector<std::vector<std::string>> table;
  for (const auto& r : rows)
    table.push_back({r["setting"].get<std::string>(), std::to_string(r["seed"].get<int64_t>()), r["method"].get<std::string>(),
                     cell(r, "gflops", "{:.4f}"), cell(r, "top1", "{:.1f}"), cell(r, "iou", "{:.3f}"), cell(r, "on_item", "{:.2f}"),
                     cell(r, "glance_top1", "{:.1f}"), cell(r, "train_iou", "{:.3f}"), cell(r, "train_hits", "{:.2f}"),
                     cell(r, "policy_grad", "{:.2g}"),
                     cell(r, r.contains("items_top1_local") ? "items_top1_local" : "items_top1_backbone", "{:.1f}"),
                     cell(r, "items_top1_glance", "{:.1f}")});
  fmt::print("\n");
  print_table({"setting", "seed", "method", "GFLOPs", "top-1", "IoU", "on item", "glance", "train IoU", "train hits", "policy grad",
               "items", "glance items"},
              table);

  // The robustness claims per cell: AdaFocusV2 and AdaFocusV3 each >= 5 points over random_patch with IoU >= 2x
  // random's; the better of the two at or above the same-cost low-resolution frame; V3's deep-feature gradient at or
  // above its pixel gradient (mean top-1 over exits 1-4). A claim whose rows did not run is not counted.
  auto find = [&](const nlohmann::json& c, const std::string& method) -> const nlohmann::json* {
    for (const auto& r : rows)
      if (r["setting"] == c["setting"] && r["seed"] == c["seed"] && r["method"] == method) return &r;
    return nullptr;
  };
  auto early_exits = [](const nlohmann::json& r) -> double {  // mean top-1 over exits 1-4 (index 0: the glance)
    if (!r.contains("top1_per_exit") || r["top1_per_exit"].size() < 5) return NAN;
    double sum = 0;
    for (size_t k = 1; k <= 4; ++k) sum += r["top1_per_exit"][k].is_number() ? r["top1_per_exit"][k].get<double>() : NAN;
    return sum / 4;
  };
  std::map<std::string, std::pair<int, int>> held;  // claim -> (held, checked)
  auto judge = [&](nlohmann::json& claims, const std::string& claim, bool ok) {
    claims[claim] = ok;
    held[claim].first += ok;
    held[claim].second += 1;
    return fmt::format("[{}] ", ok ? "yes" : "NO ");
  };
  fmt::print("\nClaims per cell: V2 / V3 >= 5 points over random_patch and IoU >= 2x; the better of them >= "
             "full_frame_low_res; V3's feature gradient >= its pixel gradient (exits 1-4):\n");
  for (auto& c : cells) {
    const nlohmann::json* random = find(c, "random_patch");
    const nlohmann::json* low = find(c, "full_frame_low_res");
    nlohmann::json claims = nlohmann::json::object();
    std::string line;
    double best = NAN;
    for (const auto& [method, label] : {std::pair<std::string, std::string>{"adafocus_v2", "V2"}, {"adafocus_v3", "V3"}}) {
      const nlohmann::json* m = find(c, method);
      if (!m) continue;
      best = std::isnan(best) ? (*m)["top1"].get<double>() : std::max(best, (*m)["top1"].get<double>());
      if (!random) continue;
      const double margin = (*m)["top1"].get<double>() - (*random)["top1"].get<double>();
      const double iou = m->value("iou", 0.0), random_iou = random->value("iou", 0.0);
      line += judge(claims, method, margin >= 5 && iou >= 2 * random_iou) +
              fmt::format("{} {:+.1f}, IoU {:.3f} vs {:.3f}; ", label, margin, iou, random_iou);
    }
    if (low && !std::isnan(best))
      line += judge(claims, "above_low_res", best >= (*low)["top1"].get<double>()) +
              fmt::format("best {:+.1f} vs low-res; ", best - (*low)["top1"].get<double>());
    const nlohmann::json *v3 = find(c, "adafocus_v3"), *pixel = find(c, "v3_pixel_gradient");
    if (v3 && pixel && !std::isnan(early_exits(*v3)) && !std::isnan(early_exits(*pixel)))
      line += judge(claims, "feature_gradient", early_exits(*v3) >= early_exits(*pixel)) +
              fmt::format("feature {:.1f} vs pixel {:.1f}", early_exits(*v3), early_exits(*pixel));
    c["claims"] = claims;
    fmt::print("  {:<16} {}\n", c["name"].get<std::string>(), line);
  }
  for (const auto& [claim, count] : held) fmt::print("  {}: held in {} of {} cells\n", claim, count.first, count.second);
  const double seconds = seconds_since(start);
  write_file_atomic(args.out + "/sweep.json",
                    nlohmann::json{{"cells", cells}, {"rows", rows}, {"seconds", seconds}, {"jobs", jobs}}.dump(2) + "\n");
  fmt::print("\n{}: sweep.json and a folder per cell ({:.0f} s)\n", args.out, seconds);
  return 0;
}

}  // namespace adafocus::experiments
