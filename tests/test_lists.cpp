// List files of the official formats, detected automatically, and class index files.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "core/files.h"
#include "io/list_file.h"
#include "test_util.h"

namespace adafocus {
namespace {

io::ListFile parse(const std::string& text, std::vector<io::ListProblem>* problems = nullptr) {
  test::TempDir dir;
  test::write_bytes(dir.path("list.txt"), text);
  return io::read_list(dir.path("list.txt"), io::ListFormat::Auto, problems);
}

TEST(ListFile, ActivityNetCommaFormatWithMultiLabel) {
  const auto list = parse("v_abc,120,5\nv_def,300,7,12\n\n# a comment\nv_ghi,64,0,1,2\n");
  EXPECT_EQ(list.format, io::ListFormat::Comma);
  ASSERT_EQ(list.entries.size(), 3u);
  EXPECT_EQ(list.entries[0].path, "v_abc");
  EXPECT_EQ(list.entries[0].num_frames, 120);
  EXPECT_EQ(list.entries[1].labels, (std::vector<int64_t>{7, 12}));
  EXPECT_EQ(list.entries[2].labels, (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(list.entries[2].line, 5);
}

TEST(ListFile, FrameFolderFormatWithSpacesOrSemicolons) {
  auto list = parse("something/1234 47 3\nsomething/98 30 170\n");
  EXPECT_EQ(list.format, io::ListFormat::Frames);
  EXPECT_EQ(list.entries[1].path, "something/98");
  EXPECT_EQ(list.entries[1].num_frames, 30);
  EXPECT_EQ(list.entries[1].labels, (std::vector<int64_t>{170}));
  list = parse("abseiling/xyz_000;250;0\nzumba/q;90;199\n");  // AdaFuse's Mini-Kinetics lists
  EXPECT_EQ(list.format, io::ListFormat::Frames);
  EXPECT_EQ(list.entries[1].path, "zumba/q");
  EXPECT_EQ(list.entries[1].labels[0], 199);
}

TEST(ListFile, VideoFormatKeepsSpacesInPaths) {
  const auto list = parse("videos/a.mp4 3\nmy videos/holiday 2.mp4 1\n");
  EXPECT_EQ(list.format, io::ListFormat::Video);
  EXPECT_EQ(list.entries[1].path, "my videos/holiday 2.mp4");
  EXPECT_EQ(list.entries[1].num_frames, 0);
  EXPECT_EQ(list.entries[1].labels[0], 1);
}

TEST(ListFile, BadLinesNameFileLineAndExpectedFields) {
  std::string e = test::error_of([] { parse("v_a,10,1\nv_b,ten,2\n"); });
  EXPECT_NE(e.find("list.txt:2: num_frames 'ten' is not a non-negative integer"), std::string::npos) << e;
  EXPECT_NE(e.find("name,num_frames,label"), std::string::npos) << e;
  e = test::error_of([] { parse("a/b 10 1\na/c 11\n"); });  // the second reads as "path label" without frames
  EXPECT_NE(e.find("list.txt:2"), std::string::npos) << e;
  e = test::error_of([] { parse("v.mp4 x\n"); });
  EXPECT_NE(e.find("label 'x' is not an integer"), std::string::npos) << e;
  e = test::error_of([] { parse("\n# nothing\n"); });
  EXPECT_NE(e.find("no entries"), std::string::npos) << e;

  // check-data's mode: every bad line reported, the good ones kept; the first good line fixes the format.
  std::vector<io::ListProblem> problems;
  const auto list = parse("lonely\nv/a.mp4 1\nv/b.mp4\nv/c.mp4 two\nv/d.mp4 2\n", &problems);
  EXPECT_EQ(list.format, io::ListFormat::Video);
  ASSERT_EQ(list.entries.size(), 2u);
  ASSERT_EQ(problems.size(), 3u);
  EXPECT_EQ(problems[0].line, 1);
  EXPECT_EQ(problems[1].line, 3);
  EXPECT_EQ(problems[1].problem, "1 field, expected path label");
  EXPECT_EQ(problems[2].line, 4);
}

TEST(ListFile, WritesWhatItReads) {
  test::TempDir dir;
  for (const auto& text : {"v_a,12,1,2\nv_b,5,0\n", "x/y 40 2\nx/z 41 3\n", "a.mp4 0\nb c.mp4 9\n"}) {
    test::write_bytes(dir.path("in.txt"), text);
    io::write_list(dir.path("out.txt"), io::read_list(dir.path("in.txt")));
    EXPECT_EQ(read_file(dir.path("out.txt")), text);
  }
}

TEST(ClassIndex, PlainAndIndexedNames) {
  test::TempDir dir;
  test::write_bytes(dir.path("a.txt"), "Applying sunscreen\nArchery\n");
  EXPECT_EQ(io::read_class_index(dir.path("a.txt")), (std::vector<std::string>{"Applying sunscreen", "Archery"}));
  test::write_bytes(dir.path("b.txt"), "2 ApplyLipstick\n1 ApplyEyeMakeup\n");  // UCF101 style
  EXPECT_EQ(io::read_class_index(dir.path("b.txt")), (std::vector<std::string>{"ApplyEyeMakeup", "ApplyLipstick"}));
  test::write_bytes(dir.path("c.txt"), "1 A\n1 B\n");
  EXPECT_NE(test::error_of([&] { io::read_class_index(dir.path("c.txt")); }).find("appears twice"), std::string::npos);
}

TEST(Files, AFolderLockKeepsOutEveryOtherHolder) {
  test::TempDir dir;
  const std::string run = dir.path("run");
  {
    FolderLock held(run, "use another folder");
    // flock locks belong to open files: a second holder in this same process is refused as another process is.
    const std::string e = test::error_of([&] { FolderLock again(run, "use another folder"); });
    EXPECT_NE(e.find("in use by another process (pid " + std::to_string(::getpid()) + ")"), std::string::npos) << e;
    EXPECT_NE(e.find("use another folder"), std::string::npos) << e;
  }
  // Released; the folder it created held nothing else, so it is gone again.
  EXPECT_FALSE(std::filesystem::exists(run));
  {
    FolderLock held(run, "");
    write_file_atomic(run + "/kept.txt", "x");
  }
  EXPECT_TRUE(std::filesystem::exists(run + "/kept.txt"));
  FolderLock again(run, "");  // free again
}

}  // namespace
}  // namespace adafocus
