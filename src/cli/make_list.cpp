// adafocus make-list: list files and classInd.txt from a <class>/<video> folder tree.
#include <fmt/format.h>

#include "cli/common.h"
#include "data/class_tree.h"

namespace adafocus::cli {

void add_make_list_command(CLI::App& app, Commands& commands, const Runtime&) {
  auto args = std::make_shared<data::MakeListOptions>();
  CLI::App* sub = app.add_subcommand("make-list", "write list files and classInd.txt for a <class>/<video> tree");
  sub->add_option("--root", args->root, "folder of class folders holding videos or frame folders")->required();
  sub->add_option("--out", args->out, "folder for list.txt (or train.txt and val.txt) and classInd.txt")->required();
  sub->add_option("--val-fraction", args->val_fraction, "> 0: hold out this fraction of each class as val.txt")
      ->check(CLI::Range(0.0, 1.0));
  sub->add_option("--seed", args->seed, "fixes the train/val split");
  sub->add_option("--frame-pattern", args->frames.pattern, "frame file names in frame folders");
  sub->add_option("--frame-start", args->frames.start, "number of the first frame file");
  commands.push_back({sub, [args] {
                        const data::MakeListSummary s = data::make_list(*args);
                        fmt::print("{}: {} classes, {} {} in {}{}; paths relative to {}\n", args->out, s.classes,
                                   s.train + s.val, s.format == "video" ? "videos" : "frame folders",
                                   args->val_fraction > 0 ? "train.txt" : "list.txt",
                                   args->val_fraction > 0 ? fmt::format(" ({}) and val.txt ({})", s.train, s.val) : "",
                                   args->root);
                        return 0;
                      }});
}

}  // namespace adafocus::cli
