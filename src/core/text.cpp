#include "core/text.h"

#include <fmt/format.h>

#include <algorithm>
#include <sstream>

namespace adafocus {

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string item; std::getline(in, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

void print_table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width(header.size());
  for (size_t c = 0; c < header.size(); ++c) {
    width[c] = header[c].size();
    for (const auto& row : rows) width[c] = std::max(width[c], c < row.size() ? row[c].size() : 0);
  }
  auto line = [&](const std::vector<std::string>& cells) {
    std::string s;
    for (size_t c = 0; c < header.size(); ++c)
      s += fmt::format("{:<{}}", c < cells.size() ? cells[c] : "", width[c] + (c + 1 < header.size() ? 2 : 0));
    fmt::print("{}\n", s.erase(s.find_last_not_of(' ') + 1));
  };
  line(header);
  for (const auto& row : rows) line(row);
}

}  // namespace adafocus
