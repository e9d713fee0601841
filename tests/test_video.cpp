// Video files through FFmpeg: frame counts, random access and pixels against the ffmpeg tools; our writer; errors.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <memory>

#include "core/files.h"
#include "io/frame_folder.h"
#include "io/video_reader.h"
#include "io/video_writer.h"
#include "test_util.h"

namespace adafocus {
namespace {

constexpr int kFrames = 50, kWidth = 320, kHeight = 240;

// Test videos made by the ffmpeg tool in four codecs, keyframes every 10 frames (H.264 with B-frames), and each
// decoded by ffmpeg to raw RGB as the reference.
class Videos : public ::testing::TestWithParam<std::string> {
 protected:
  static void SetUpTestSuite() {
    dir_ = std::make_unique<test::TempDir>();
    const std::string source = "-f lavfi -i testsrc=size=320x240:rate=25:duration=2 ";
    const std::pair<const char*, const char*> videos[] = {
        {"h264.mp4", "-c:v libx264 -g 10 -bf 2 -pix_fmt yuv420p"},
        {"mpeg4.avi", "-c:v mpeg4 -g 10 -q:v 3"},
        {"vp9.webm", "-c:v libvpx-vp9 -g 10 -b:v 300k -deadline realtime -cpu-used 8"},
        {"mjpeg.avi", "-c:v mjpeg -q:v 3"}};
    for (const auto& [name, codec] : videos) {
      const std::string path = dir_->path(name);
      ASSERT_EQ(std::system(("ffmpeg -v error -y " + source + codec + " " + path).c_str()), 0) << name;
      ASSERT_EQ(std::system(("ffmpeg -v error -y -i " + path + " -f rawvideo -pix_fmt rgb24 " + path + ".rgb").c_str()), 0);
    }
  }
  static void TearDownTestSuite() { dir_.reset(); }
  static std::string path(const std::string& name) { return dir_->path(name); }
  static std::unique_ptr<test::TempDir> dir_;
};
std::unique_ptr<test::TempDir> Videos::dir_;

double mean_abs_difference(const io::Image& a, const uint8_t* b) {
  double sum = 0;
  for (size_t i = 0; i < a.rgb.size(); ++i) sum += std::abs(int(a.rgb[i]) - int(b[i]));
  return sum / static_cast<double>(a.rgb.size());
}

TEST_P(Videos, ExactFrameCountAndPixelsOfTheFfmpegTool) {
  io::VideoReader video(path(GetParam()));
  EXPECT_EQ(video.num_frames(), kFrames);
  EXPECT_EQ(video.width(), kWidth);
  EXPECT_EQ(video.height(), kHeight);
  const std::string raw = read_file(path(GetParam()) + ".rgb");
  ASSERT_EQ(raw.size(), size_t(kFrames) * kWidth * kHeight * 3);
  const std::vector<int64_t> indices{0, 7, 13, 29, 49};
  const auto frames = video.read(indices);
  for (size_t i = 0; i < indices.size(); ++i) {
    ASSERT_EQ(frames[i].width, kWidth);
    // Both convert YUV to RGB with swscale; they may differ by rounding only (mean < 1 grey level of 255).
    EXPECT_LT(mean_abs_difference(frames[i], reinterpret_cast<const uint8_t*>(raw.data()) +
                                                 size_t(indices[i]) * kWidth * kHeight * 3),
              1.0)
        << GetParam() << " frame " << indices[i];
  }
}

TEST_P(Videos, RandomAccessEqualsSequentialDecoding) {
  io::VideoReader video(path(GetParam()));
  std::vector<int64_t> all(kFrames);
  for (int i = 0; i < kFrames; ++i) all[i] = i;
  const auto sequential = video.read(all);
  // Backwards, repeated, across keyframes, and forward within a GOP: every pattern the samplers produce (the B-frames
  // between wanted frames skipped, those between sequential ones not).
  const std::vector<int64_t> scattered{49, 0, 25, 25, 10, 11, 12, 48, 3, 30, 9};
  const auto frames = video.read(scattered);
  ASSERT_EQ(frames.size(), scattered.size());
  for (size_t i = 0; i < scattered.size(); ++i)
    EXPECT_EQ(frames[i].rgb, sequential[static_cast<size_t>(scattered[i])].rgb) << "frame " << scattered[i];
  EXPECT_EQ(video.decode_all(), kFrames);
}

TEST_P(Videos, ScalesToAShortSide) {
  io::VideoReader video(path(GetParam()));
  const auto frames = video.read({5}, 60);
  EXPECT_EQ(frames[0].width, 80);
  EXPECT_EQ(frames[0].height, 60);
}

INSTANTIATE_TEST_SUITE_P(Codecs, Videos, ::testing::Values("h264.mp4", "mpeg4.avi", "vp9.webm", "mjpeg.avi"),
                         [](const auto& info) { return info.param.substr(0, info.param.find('.')); });

TEST(VideoReader, BadFilesAreClearErrors) {
  test::TempDir dir;
  std::string e = test::error_of([&] { io::VideoReader(dir.path("absent.mp4")); });
  EXPECT_NE(e.find("absent.mp4: file not found"), std::string::npos) << e;
  test::write_bytes(dir.path("empty.mp4"), "");
  e = test::error_of([&] { io::VideoReader(dir.path("empty.mp4")); });
  EXPECT_NE(e.find("empty"), std::string::npos) << e;
  test::write_bytes(dir.path("notes.mp4"), "these are my notes, not a video\n");
  e = test::error_of([&] { io::VideoReader(dir.path("notes.mp4")); });
  EXPECT_NE(e.find("notes.mp4: not a readable video"), std::string::npos) << e;
  EXPECT_NE(e.find("HINT:"), std::string::npos) << e;
}

TEST(VideoReader, TruncatedFilesFailCleanly) {
  // An mp4 cut anywhere loses its index (moov at the end); a webm cut short loses its last frames.
  test::TempDir dir;
  ASSERT_EQ(std::system(("ffmpeg -v error -y -f lavfi -i testsrc=size=160x120:rate=25:duration=2 -c:v libx264 " +
                         dir.path("v.mp4") + " -c:v libvpx-vp9 -deadline realtime -cpu-used 8 " + dir.path("v.webm"))
                            .c_str()),
            0);
  const std::string mp4 = read_file(dir.path("v.mp4"));
  test::write_bytes(dir.path("cut.mp4"), mp4.substr(0, mp4.size() / 2));
  std::string e = test::error_of([&] { io::VideoReader(dir.path("cut.mp4")); });
  EXPECT_NE(e.find("cut.mp4: not a readable video"), std::string::npos) << e;

  const std::string webm = read_file(dir.path("v.webm"));
  test::write_bytes(dir.path("cut.webm"), webm.substr(0, webm.size() * 6 / 10));
  io::VideoReader cut(dir.path("cut.webm"));
  EXPECT_LT(cut.num_frames(), kFrames);  // only what is there is counted
  EXPECT_GT(cut.decode_all(), 0);
  e = test::error_of([&] { cut.read({kFrames - 1}); });
  EXPECT_NE(e.find("out of range"), std::string::npos) << e;
}

TEST(VideoWriter, WritesWhatItIsGivenBitExactly) {
  test::TempDir dir;
  auto write = [&](const std::string& name) {
    io::VideoWriter writer(dir.path(name), 64, 48, 8.0);
    for (int t = 0; t < 12; ++t) {
      io::Image frame(64, 48);
      for (int y = 0; y < 48; ++y)
        for (int x = 0; x < 64; ++x)
          for (int c = 0; c < 3; ++c) frame.row(y)[x * 3 + c] = static_cast<uint8_t>((x * 4 + t * 10 + c * 40) % 256);
      writer.write(frame);
    }
    writer.close();
  };
  write("a.mp4");
  write("b.mp4");
  EXPECT_EQ(read_file(dir.path("a.mp4")), read_file(dir.path("b.mp4")));
  io::VideoReader video(dir.path("a.mp4"));
  EXPECT_EQ(video.num_frames(), 12);  // every frame, also the last (edit list)
  EXPECT_DOUBLE_EQ(video.fps(), 8.0);
  // ffprobe agrees on the count.
  ASSERT_EQ(std::system(("test \"$(ffprobe -v error -count_frames -select_streams v:0 -show_entries "
                         "stream=nb_read_frames -of csv=p=0 " +
                         dir.path("a.mp4") + ")\" = 12")
                            .c_str()),
            0);
  // No temporary file remains; an unclosed writer leaves nothing.
  { io::VideoWriter abandoned(dir.path("c.mp4"), 64, 48, 8.0); }
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path(""))) files += entry.is_regular_file();
  EXPECT_EQ(files, 2);
}

TEST(VideoWriter, GifKeepsEveryGreyAndARed) {
  // Every grey level, black and white included (a white caption once vanished from the demo's GIF), and a red of
  // the palette like the boxes'; GIF has 256 colours, so greys may move by half a step of the palette's grey ramp.
  test::TempDir dir;
  io::Image frame(256, 8);
  for (int y = 0; y < 8; ++y)
    for (int x = 0; x < 256; ++x)
      for (int c = 0; c < 3; ++c) frame.row(y)[x * 3 + c] = y < 4 ? static_cast<uint8_t>(x) : (c == 0 ? 255 : 51);
  {
    io::VideoWriter writer(dir.path("a.gif"), 256, 8, 2.0);
    writer.write(frame);
    writer.write(frame);
    writer.close();
  }
  io::VideoReader video(dir.path("a.gif"));
  ASSERT_EQ(video.num_frames(), 2);
  for (const io::Image& decoded : video.read({0, 1}))
    for (int y = 0; y < 8; ++y)
      for (int x = 0; x < 256 * 3; ++x)
        ASSERT_NEAR(decoded.row(y)[x], frame.row(y)[x], 4) << "row " << y << " byte " << x;
}

TEST(FrameFolder, DetectsTheNamingInUse) {
  test::TempDir dir;
  io::Image image(40, 30);
  for (size_t i = 0; i < image.rgb.size(); ++i) image.rgb[i] = static_cast<uint8_t>(i % 251);
  for (const std::string pattern : {"image_%05d.jpg", "img_%05d.jpg", "%05d.jpg", "%06d.jpg"}) {
    const std::string folder = dir.path(pattern.substr(0, 3));
    char name[64];
    for (int i = 1; i <= 7; ++i) {
      std::snprintf(name, sizeof(name), pattern.c_str(), i);
      io::write_jpeg(folder + "/" + name, image);
    }
    io::FrameFolder frames(folder);
    EXPECT_EQ(frames.pattern(), pattern);
    EXPECT_EQ(frames.num_frames(), 7);
    const auto read = frames.read({6, 0}, 15);
    EXPECT_EQ(read[0].width, 20);
    EXPECT_EQ(read[0].height, 15);
  }
  // A folder named in a way of its own, given explicitly, and a start at 0.
  io::write_jpeg(dir.path("own/frame-0.jpg"), image);
  io::write_jpeg(dir.path("own/frame-1.jpg"), image);
  io::FrameFolderOptions own;
  own.pattern = "frame-%d.jpg";
  own.start = 0;
  EXPECT_EQ(io::FrameFolder(dir.path("own"), own).num_frames(), 2);
  std::string e = test::error_of([&] { io::FrameFolder(dir.path("own")); });
  EXPECT_NE(e.find("no frame files"), std::string::npos) << e;
  own.pattern = "frame-%s.jpg";
  e = test::error_of([&] { io::FrameFolder(dir.path("own"), own); });
  EXPECT_NE(e.find("one integer field"), std::string::npos) << e;
}

TEST(FrameFolder, CorruptAndTruncatedJpegsAreErrors) {
  test::TempDir dir;
  io::Image image(128, 128);  // detailed enough that half the file cuts into the image data
  for (size_t i = 0; i < image.rgb.size(); ++i) image.rgb[i] = static_cast<uint8_t>((i * 7919) % 256);
  io::write_jpeg(dir.path("f/image_00001.jpg"), image);
  const std::string jpeg = read_file(dir.path("f/image_00001.jpg"));
  test::write_bytes(dir.path("f/image_00002.jpg"), jpeg.substr(0, jpeg.size() / 2));
  test::write_bytes(dir.path("f/image_00003.jpg"), "not a jpeg");
  io::FrameFolder frames(dir.path("f"));
  EXPECT_EQ(frames.num_frames(), 3);
  EXPECT_NO_THROW(frames.read({0}));
  std::string e = test::error_of([&] { frames.read({1}); });
  EXPECT_NE(e.find("image_00002.jpg: corrupt JPEG"), std::string::npos) << e;
  e = test::error_of([&] { frames.read({2}); });
  EXPECT_NE(e.find("image_00003.jpg: not a readable JPEG"), std::string::npos) << e;
}

}  // namespace
}  // namespace adafocus
