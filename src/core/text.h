// Plain-text helpers of the commands and experiments: comma lists and aligned tables.
#pragma once

#include <string>
#include <vector>

namespace adafocus {

/// "a,b,,c" -> {"a", "b", "c"}.
std::vector<std::string> split_commas(const std::string& s);

/// Prints rows under a header on stdout, columns left-aligned and padded.
void print_table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows);

}  // namespace adafocus
