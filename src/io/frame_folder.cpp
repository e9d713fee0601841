#include "io/frame_folder.h"

#include <turbojpeg.h>

#include <cctype>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "core/error.h"
#include "core/files.h"
#include "io/video_reader.h"

namespace adafocus::io {

namespace {

std::string format_index(const std::string& pattern, int64_t number) {
  char name[512];
  std::snprintf(name, sizeof(name), pattern.c_str(), static_cast<long long>(number));  // NOLINT: pattern checked
  return name;
}

// A pattern must hold exactly one integer conversion (%d, %05d, ...), or snprintf reads garbage.
bool valid_pattern(const std::string& pattern) {
  int conversions = 0;
  for (size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] != '%') continue;
    if (i + 1 < pattern.size() && pattern[i + 1] == '%') {
      ++i;
      continue;
    }
    size_t j = i + 1;
    while (j < pattern.size() && (std::isdigit(static_cast<unsigned char>(pattern[j])))) ++j;
    if (j >= pattern.size() || pattern[j] != 'd') return false;
    ++conversions;
  }
  return conversions == 1;
}

struct TjHandle {
  explicit TjHandle(tjhandle h) : handle(h) {}
  ~TjHandle() {
    if (handle) tjDestroy(handle);
  }
  tjhandle handle;
};

}  // namespace

const std::vector<std::string>& frame_patterns() {
  static const std::vector<std::string> patterns{"image_%05d.jpg", "img_%05d.jpg", "%05d.jpg", "%06d.jpg"};
  return patterns;
}

FrameFolder::FrameFolder(const std::string& dir, const FrameFolderOptions& options)
    : dir_(dir), pattern_(options.pattern), start_(options.start) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw Error("frame folder not found", dir, "check the list's path and --root");
  if (pattern_ == "auto") {
    pattern_.clear();
    for (const auto& p : frame_patterns())
      if (fs::exists(fs::path(dir) / format_index(p, start_), ec)) {
        pattern_ = p;
        break;
      }
    if (pattern_.empty())
      throw Error("no frame files: none of image_%05d.jpg, img_%05d.jpg, %05d.jpg, %06d.jpg starting at " +
                      std::to_string(start_),
                  dir, "set data.frame_pattern and data.frame_start to your naming");
  } else if (!valid_pattern(pattern_)) {
    throw Error("frame pattern '" + pattern_ + "' must contain one integer field such as %05d", dir);
  }
  num_frames_ = options.num_frames;
  if (num_frames_ <= 0)
    while (fs::exists(frame_path(num_frames_), ec)) ++num_frames_;
  if (num_frames_ == 0) throw Error("no frame file " + frame_path(0), dir, "check data.frame_pattern/frame_start");
}

std::string FrameFolder::frame_path(int64_t index) const {
  return (std::filesystem::path(dir_) / format_index(pattern_, start_ + index)).string();
}

std::vector<Image> FrameFolder::read(const std::vector<int64_t>& indices, int short_side) {
  std::vector<Image> out;
  out.reserve(indices.size());
  for (int64_t i : indices) {
    if (i < 0 || i >= num_frames_)
      throw Error("frame " + std::to_string(i) + " out of range: the folder has " + std::to_string(num_frames_) +
                      " frames",
                  dir_);
    Image image = read_jpeg(frame_path(i));
    if (short_side > 0) {
      auto [w, h] = short_side_size(image.width, image.height, short_side);
      image = resize(image, w, h);
    }
    out.push_back(std::move(image));
  }
  return out;
}

int64_t FrameFolder::decode_all() {
  for (int64_t i = 0; i < num_frames_; ++i) read_jpeg(frame_path(i));
  return num_frames_;
}

Image read_jpeg(const std::string& path) {
  const std::string bytes = read_file(path);
  TjHandle tj(tjInitDecompress());
  int width = 0, height = 0, subsampling = 0, colorspace = 0;
  auto* data = reinterpret_cast<const unsigned char*>(bytes.data());
  if (bytes.empty() ||
      tjDecompressHeader3(tj.handle, data, bytes.size(), &width, &height, &subsampling, &colorspace) != 0 ||
      width <= 0 || height <= 0)
    throw Error(std::string("not a readable JPEG: ") + tjGetErrorStr2(tj.handle), path);
  Image image(width, height);
  // Warnings count too: a truncated JPEG decodes "successfully" with a grey bottom and a warning.
  if (tjDecompress2(tj.handle, data, bytes.size(), image.rgb.data(), width, 0, height, TJPF_RGB, TJFLAG_ACCURATEDCT) != 0)
    throw Error(std::string("corrupt JPEG: ") + tjGetErrorStr2(tj.handle), path);
  return image;
}

void write_jpeg(const std::string& path, const Image& image, int quality) {
  TjHandle tj(tjInitCompress());
  unsigned char* jpeg = nullptr;
  unsigned long size = 0;
  if (tjCompress2(tj.handle, image.rgb.data(), image.width, 0, image.height, TJPF_RGB, &jpeg, &size, TJSAMP_420,
                  quality, TJFLAG_ACCURATEDCT) != 0)
    throw Error(std::string("JPEG encoding failed: ") + tjGetErrorStr2(tj.handle), path);
  std::unique_ptr<unsigned char, void (*)(void*)> owned(jpeg, [](void* p) { tjFree(static_cast<unsigned char*>(p)); });
  write_file_atomic(path, std::string(reinterpret_cast<const char*>(jpeg), size), /*durable=*/false);
}

std::vector<Image> FrameList::read(const std::vector<int64_t>& indices, int short_side) {
  std::vector<Image> out;
  out.reserve(indices.size());
  for (int64_t i : indices) {
    const Image& f = frames_.at(static_cast<size_t>(i));
    if (short_side <= 0 || std::min(f.width, f.height) == short_side) {
      out.push_back(f);
    } else {
      const auto [w, h] = short_side_size(f.width, f.height, short_side);
      out.push_back(resize(f, w, h));
    }
  }
  return out;
}

std::unique_ptr<FrameSource> open_frames(const std::string& path, const FrameFolderOptions& folder) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return std::make_unique<FrameFolder>(path, folder);
  return std::make_unique<VideoReader>(path);
}

}  // namespace adafocus::io
