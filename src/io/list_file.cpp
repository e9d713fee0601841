#include "io/list_file.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <map>
#include <sstream>

#include "core/error.h"
#include "core/files.h"

namespace adafocus::io {

namespace {

// Every kind of white space that `in >> field` skips (a form feed too): a line trimmed empty has no fields.
constexpr const char* kSpace = " \t\r\n\f\v";

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(kSpace);
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(kSpace) - a + 1);
}

bool parse_int(const std::string& s, int64_t& out) {
  if (s.empty() || s.find_first_not_of("+-0123456789") != std::string::npos) return false;
  char* end = nullptr;
  errno = 0;
  out = std::strtoll(s.c_str(), &end, 10);
  return errno == 0 && end == s.c_str() + s.size();
}

std::vector<std::string> split(const std::string& line, char separator) {
  std::vector<std::string> fields;
  std::string field;
  std::istringstream in(line);
  while (std::getline(in, field, separator)) fields.push_back(trim(field));
  return fields;
}

// Whitespace-separated fields, or ';'-separated when the line has a ';' (AdaFuse's Mini-Kinetics lists).
std::vector<std::string> split_fields(const std::string& line) {
  if (line.find(';') != std::string::npos) return split(line, ';');
  std::vector<std::string> fields;
  std::istringstream in(line);
  for (std::string f; in >> f;) fields.push_back(f);
  return fields;
}

// "a path with spaces 120 3" without its last `count` whitespace-separated fields.
std::string path_before(const std::string& line, size_t count) {
  std::string rest = trim(line);
  for (size_t i = 0; i < count; ++i) {
    const size_t space = rest.find_last_of(kSpace);
    if (space == std::string::npos) return "";
    rest = trim(rest.substr(0, space));
  }
  return rest;
}

ListFormat detect(const std::string& line) {
  if (line.find(',') != std::string::npos) return ListFormat::Comma;
  const auto fields = split_fields(line);
  int64_t v;
  if (fields.size() >= 3 && parse_int(fields[fields.size() - 2], v) && parse_int(fields.back(), v))
    return ListFormat::Frames;
  return ListFormat::Video;
}

const char* expected_fields(ListFormat format) {
  switch (format) {
    case ListFormat::Comma: return "name,num_frames,label[,label...]";
    case ListFormat::Frames: return "path num_frames label";
    case ListFormat::Video: return "path label";
    case ListFormat::Auto: break;
  }
  return "";
}

// Parses one line; returns "" or what is wrong with it.
std::string parse_line(const std::string& line, ListFormat format, ListEntry& entry) {
  std::vector<std::string> fields = format == ListFormat::Comma ? split(line, ',') : split_fields(line);
  const size_t minimum = format == ListFormat::Video ? 2 : 3;
  if (fields.size() < minimum)
    return fmt::format("{} field{}, expected {}", fields.size(), fields.size() == 1 ? "" : "s",
                       expected_fields(format));
  size_t first_label = 2;  // comma: name, num_frames, labels...
  if (format == ListFormat::Comma) {
    entry.path = fields[0];
  } else {
    // The numbers are the last fields; the path is everything before them, spaces included.
    const size_t numbers = format == ListFormat::Frames ? 2 : 1;
    first_label = fields.size() - 1;
    if (line.find(';') != std::string::npos) {
      if (fields.size() != numbers + 1) return fmt::format("{} fields, expected {}", fields.size(), expected_fields(format));
      entry.path = fields[0];
    } else {
      entry.path = path_before(line, numbers);
    }
  }
  if (entry.path.empty()) return "empty path";
  if (format != ListFormat::Video) {
    const std::string& n = format == ListFormat::Comma ? fields[1] : fields[fields.size() - 2];
    if (!parse_int(n, entry.num_frames) || entry.num_frames < 0)
      return "num_frames '" + n + "' is not a non-negative integer";
  }
  for (size_t i = first_label; i < fields.size(); ++i) {
    int64_t label;
    if (!parse_int(fields[i], label)) return "label '" + fields[i] + "' is not an integer";
    entry.labels.push_back(label);
  }
  return "";
}

}  // namespace

ListFormat parse_list_format(const std::string& name) {
  if (name == "auto") return ListFormat::Auto;
  if (name == "comma") return ListFormat::Comma;
  if (name == "frames") return ListFormat::Frames;
  if (name == "video") return ListFormat::Video;
  throw Error("unknown list format '" + name + "'", "", "use auto, comma, frames or video");
}

const char* list_format_name(ListFormat format) {
  switch (format) {
    case ListFormat::Auto: return "auto";
    case ListFormat::Comma: return "comma";
    case ListFormat::Frames: return "frames";
    case ListFormat::Video: return "video";
  }
  return "";
}

ListFile read_list(const std::string& path, ListFormat format, std::vector<ListProblem>* problems) {
  const std::string text = read_file(path);
  ListFile list;
  list.format = format;
  std::istringstream in(text);
  int line_number = 0;
  for (std::string raw; std::getline(in, raw);) {
    ++line_number;
    const std::string line = trim(raw);
    if (line.empty() || line[0] == '#') continue;
    // Until a line parses, each line is read in the format it looks like; the first good line fixes the format.
    const ListFormat line_format = list.format == ListFormat::Auto ? detect(line) : list.format;
    ListEntry entry;
    entry.line = line_number;
    const std::string problem = parse_line(line, line_format, entry);
    if (problem.empty()) {
      list.format = line_format;
      list.entries.push_back(std::move(entry));
    } else if (problems) {
      problems->push_back({line_number, entry.path.empty() ? split_fields(line)[0] : entry.path, problem});
    } else {
      throw Error(problem, path + ":" + std::to_string(line_number),
                  fmt::format("this list is in the {} format: {}", list_format_name(line_format),
                              expected_fields(line_format)));
    }
  }
  if (list.entries.empty() && (!problems || problems->empty())) throw Error("the list has no entries", path);
  return list;
}

void write_list(const std::string& path, const ListFile& list) {
  std::string text;
  for (const auto& e : list.entries) {
    std::string labels;
    const char sep = list.format == ListFormat::Comma ? ',' : ' ';
    for (size_t i = 0; i < e.labels.size(); ++i) labels += (i ? std::string(1, sep) : "") + std::to_string(e.labels[i]);
    switch (list.format) {
      case ListFormat::Comma: text += fmt::format("{},{},{}\n", e.path, e.num_frames, labels); break;
      case ListFormat::Frames: text += fmt::format("{} {} {}\n", e.path, e.num_frames, labels); break;
      default: text += fmt::format("{} {}\n", e.path, labels); break;
    }
  }
  write_file_atomic(path, text);
}

std::vector<std::string> read_class_index(const std::string& path) {
  std::istringstream in(read_file(path));
  std::map<int64_t, std::string> indexed;
  std::vector<std::string> plain;
  int line_number = 0;
  for (std::string raw; std::getline(in, raw);) {
    ++line_number;
    const std::string line = trim(raw);
    if (line.empty()) continue;
    const size_t space = line.find_first_of(kSpace);
    int64_t index;
    if (space != std::string::npos && parse_int(line.substr(0, space), index)) {
      if (!indexed.emplace(index, trim(line.substr(space))).second)
        throw Error("class index " + std::to_string(index) + " appears twice", path + ":" + std::to_string(line_number));
    } else {
      plain.push_back(line);
    }
  }
  if (!indexed.empty() && !plain.empty())
    throw Error("mixes 'index name' lines and plain names", path, "use one class name per line, in label order");
  std::vector<std::string> names = plain;
  for (const auto& [index, name] : indexed) names.push_back(name);
  if (names.empty()) throw Error("no classes", path);
  return names;
}

void write_class_index(const std::string& path, const std::vector<std::string>& names) {
  std::string text;
  for (const auto& n : names) text += n + "\n";
  write_file_atomic(path, text);
}

}  // namespace adafocus::io
