// Video list files in the formats of the official repos, detected automatically:
//   comma   name,num_frames,label[,label...]   ActivityNet / FCVID (multi-label)
//   frames  path num_frames label              Mini-Kinetics, Something-Something, Jester (spaces or ';')
//   video   path label                         video files
// and class index files (classInd.txt: one class name per line, or "index name").
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace adafocus::io {

enum class ListFormat { Auto, Comma, Frames, Video };

struct ListEntry {
  std::string path;
  int64_t num_frames = 0;  // 0: not given (video lists)
  std::vector<int64_t> labels;
  int line = 0;  // 1-based line in the list file
};

struct ListFile {
  ListFormat format = ListFormat::Auto;
  std::vector<ListEntry> entries;
};

/// A line that could not be parsed (check-data reports these).
struct ListProblem {
  int line = 0;
  std::string path;  // as far as it could be read
  std::string problem;
};

/// Reads a list. Without `problems`, the first bad line throws adafocus::Error naming file:line and the field; with
/// it, bad lines are appended there and skipped. Empty lines and lines starting with '#' are ignored.
ListFile read_list(const std::string& path, ListFormat format = ListFormat::Auto,
                   std::vector<ListProblem>* problems = nullptr);
void write_list(const std::string& path, const ListFile& list);

ListFormat parse_list_format(const std::string& name);  // auto | comma | frames | video
const char* list_format_name(ListFormat format);

/// Class names in label order.
std::vector<std::string> read_class_index(const std::string& path);
void write_class_index(const std::string& path, const std::vector<std::string>& names);

}  // namespace adafocus::io
