// List files (every format, strict and check-data's lenient way) and class index files.
#include <vector>

#include "core/error.h"
#include "fuzz.h"
#include "io/list_file.h"

FUZZ_TARGET(list) {
  using namespace adafocus;
  const std::string path = fuzz::as_file(data, size, ".txt");
  for (io::ListFormat format : {io::ListFormat::Auto, io::ListFormat::Comma, io::ListFormat::Frames,
                                io::ListFormat::Video}) {
    try {
      io::read_list(path, format);
    } catch (const Error&) {
    }
    std::vector<io::ListProblem> problems;
    try {
      io::read_list(path, format, &problems);
    } catch (const Error&) {
    }
  }
  try {
    io::read_class_index(path);
  } catch (const Error&) {
  }
}
