// adafocus check-data: every line of a list, checked as training would use it.
#include <fmt/format.h>

#include <filesystem>
#include <set>

#include "cli/common.h"
#include "core/error.h"
#include "data/check.h"
#include "io/list_file.h"

namespace adafocus::cli {

namespace {

struct CheckArgs {
  std::string list, root, classes, format = "auto", frame_pattern = "auto";
  int64_t num_classes = 0, min_frames = 1, frame_start = 1;
  bool full = false;
};

int run(const CheckArgs& args, const Runtime& runtime) {
  data::CheckOptions o;
  o.list = args.list;
  o.root = args.root;
  o.format = io::parse_list_format(args.format);
  o.frames.pattern = args.frame_pattern;
  o.frames.start = args.frame_start;
  o.min_frames = args.min_frames;
  o.full = args.full;
  o.threads = runtime.threads;
  o.num_classes = args.num_classes;
  // The class count: --num-classes, else --classes, else a classInd.txt beside the list.
  std::string classes = args.classes;
  const std::string beside = (std::filesystem::path(args.list).parent_path() / "classInd.txt").string();
  if (classes.empty() && std::filesystem::exists(beside)) classes = beside;
  if (o.num_classes == 0 && !classes.empty()) o.num_classes = static_cast<int64_t>(io::read_class_index(classes).size());

  const data::CheckReport report = data::check_data(o);
  std::set<int> bad;
  for (const auto& p : report.problems) {
    fmt::print("line {}: {}: {}\n", p.line, p.path, p.problem);
    bad.insert(p.line);
  }
  const size_t bad_lines = bad.size();
  fmt::print("{}: {} lines checked, {} ok, {} with problems{}\n", args.list, report.lines, report.lines - bad_lines,
             bad_lines,
             o.num_classes > 0 ? fmt::format(" (labels checked against {} classes)", o.num_classes)
                               : " (no classInd.txt: labels checked for >= 0 only)");
  return report.problems.empty() ? 0 : 2;
}

}  // namespace

void add_check_data_command(CLI::App& app, Commands& commands, const Runtime& runtime) {
  auto args = std::make_shared<CheckArgs>();
  CLI::App* sub = app.add_subcommand(
      "check-data", "check every line of a list: format, file exists, decodes, enough frames, label in range");
  sub->add_option("--list", args->list, "list file")->required();
  sub->add_option("--root", args->root, "folder the list's paths are relative to");
  sub->add_option("--classes", args->classes, "classInd.txt (default: the one beside the list, if any)");
  sub->add_option("--num-classes", args->num_classes, "labels must be below this (overrides --classes)");
  sub->add_option("--min-frames", args->min_frames, "videos with fewer frames are reported");
  sub->add_flag("--full", args->full, "decode every frame (default: first, middle and last)");
  sub->add_option("--format", args->format, "list format")->check(CLI::IsMember({"auto", "comma", "frames", "video"}));
  sub->add_option("--frame-pattern", args->frame_pattern, "frame file names in frame folders");
  sub->add_option("--frame-start", args->frame_start, "number of the first frame file");
  commands.push_back({sub, [args, &runtime] { return run(*args, runtime); }});
}

}  // namespace adafocus::cli
