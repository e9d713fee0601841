#include "data/class_tree.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>

#include "core/error.h"
#include "core/rng.h"
#include "io/frame_folder.h"
#include "io/list_file.h"

namespace adafocus::data {

namespace {
bool is_video_file(const std::filesystem::path& p) {
  static const std::set<std::string> extensions{".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v",
                                                ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ogv"};
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
  return extensions.count(ext) > 0;
}
}  // namespace

MakeListSummary make_list(const MakeListOptions& o) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(o.root, ec)) throw Error("not a folder", o.root, "give the folder holding <class>/<video>");
  std::vector<std::string> classes;
  for (const auto& d : fs::directory_iterator(o.root))
    if (d.is_directory()) classes.push_back(d.path().filename().string());
  std::sort(classes.begin(), classes.end());
  if (classes.empty()) throw Error("no class folders", o.root, "expected <root>/<class>/<video>");

  io::ListFile train, val;
  bool videos = false, folders = false;
  for (size_t label = 0; label < classes.size(); ++label) {
    std::vector<io::ListEntry> entries;
    std::vector<fs::path> items;
    for (const auto& item : fs::directory_iterator(fs::path(o.root) / classes[label])) items.push_back(item.path());
    std::sort(items.begin(), items.end());
    for (const auto& item : items) {
      io::ListEntry e;
      e.path = classes[label] + "/" + item.filename().string();
      e.labels = {static_cast<int64_t>(label)};
      if (fs::is_directory(item, ec)) {
        e.num_frames = io::FrameFolder(item.string(), o.frames).num_frames();
        folders = true;
      } else if (is_video_file(item)) {
        videos = true;
      } else {
        continue;  // not a video: notes, thumbnails...
      }
      entries.push_back(e);
    }
    // A seeded shuffle per class, then the first val_fraction of each class go to validation.
    Rng rng = Rng::derive(o.seed, {label});
    rng.shuffle(entries);
    const size_t n_val = static_cast<size_t>(std::lround(o.val_fraction * static_cast<double>(entries.size())));
    for (size_t i = 0; i < entries.size(); ++i) (i < n_val ? val : train).entries.push_back(entries[i]);
  }
  if (videos && folders)
    throw Error("the tree mixes video files and frame folders", o.root, "make one list per kind");
  if (train.entries.empty() && val.entries.empty())
    throw Error("no videos or frame folders under the class folders", o.root);
  train.format = val.format = folders ? io::ListFormat::Frames : io::ListFormat::Video;
  auto by_line = [](const io::ListEntry& a, const io::ListEntry& b) { return a.path < b.path; };
  std::sort(train.entries.begin(), train.entries.end(), by_line);
  std::sort(val.entries.begin(), val.entries.end(), by_line);

  fs::create_directories(o.out, ec);
  if (o.val_fraction > 0) {
    io::write_list(o.out + "/train.txt", train);
    io::write_list(o.out + "/val.txt", val);
  } else {
    io::write_list(o.out + "/list.txt", train);
  }
  io::write_class_index(o.out + "/classInd.txt", classes);
  return {static_cast<int64_t>(classes.size()), static_cast<int64_t>(train.entries.size()),
          static_cast<int64_t>(val.entries.size()), folders ? "frames" : "video"};
}

}  // namespace adafocus::data
