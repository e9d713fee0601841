// Reading and writing torch.save files, against files written by PyTorch and read back by PyTorch.
#include <caffe2/serialize/inline_container.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <random>

#include "core/error.h"
#include "core/files.h"
#include "io/pth.h"
#include "nn/backbone.h"
#include "test_util.h"

namespace adafocus {
namespace {

using test::reference;

using test::error_of;

TEST(Pth, ReadsTensorViewsWithStridesAndOffset) {
  // Python: torch.arange(12, dtype=float64).view(3, 4)[:, 1:3]
  torch::Tensor t = io::read_tensor(reference("tensor_view.pt"));
  EXPECT_EQ(t.scalar_type(), torch::kDouble);
  EXPECT_TRUE(t.equal(torch::tensor({{1.0, 2.0}, {5.0, 6.0}, {9.0, 10.0}}, torch::kDouble)));
}

TEST(Pth, ReadsLegacyFormat) {
  // Python: torch.save(torch.arange(6), f, _use_new_zipfile_serialization=False)
  torch::Tensor t = io::read_tensor(reference("tensor_legacy.pt"));
  EXPECT_TRUE(t.equal(torch::arange(6, torch::kLong)));
}

TEST(Pth, ReadsNestedOfficialCheckpointInBothFormats) {
  for (const char* file : {"official_mobilenet_v2.pth.tar", "official_mobilenet_v2_zip.pth.tar"}) {
    io::PyValue root = io::read_pth(reference(file));
    ASSERT_TRUE(root.is_dict()) << root.describe();
    ASSERT_TRUE(root.get("epoch"));
    EXPECT_EQ(root.get("epoch")->integer, 7);
    EXPECT_DOUBLE_EQ(root.get("best_prec1")->number, 71.5);
    EXPECT_EQ(root.get("arch")->text, "mobilenet_v2");
    io::TensorDict state = io::read_state_dict(reference(file));
    EXPECT_EQ(state.size(), 314u);  // as many tensors as torchvision's MobileNetV2 state dict
    EXPECT_TRUE(state.contains("module.features.1.conv.0.weight"));
  }
}

TEST(Pth, WritesAndReadsBackWithOrderAndValues) {
  test::TempDir dir;
  io::TensorDict state;
  state.insert("b.weight", torch::randn({3, 4}));
  state.insert("a.running_mean", torch::randn({5}, torch::kDouble));
  state.insert("a.num_batches_tracked", torch::tensor(17, torch::kLong));
  state.insert("view", torch::arange(20, torch::kFloat).view({4, 5}).slice(1, 1, 3));
  io::write_state_dict(dir.path("s.pth"), state);
  io::TensorDict back = io::read_state_dict(dir.path("s.pth"));
  ASSERT_EQ(back.size(), state.size());
  for (size_t i = 0; i < state.size(); ++i) {
    EXPECT_EQ(back[i].key(), state[i].key());
    EXPECT_TRUE(back[i].value().equal(state[i].value())) << state[i].key();
  }
  // Atomic write: no temporary file is left behind.
  for (const auto& entry : std::filesystem::directory_iterator(dir.path("")))
    EXPECT_EQ(entry.path().filename(), "s.pth");
}

TEST(Pth, PythonLoadsOurStateDictStrictly) {
  // A C++-initialised ResNet-18 with random BN statistics, written by us, loaded by torchvision with strict=True;
  // both then run the same input.
  torch::manual_seed(5);
  auto model = nn::make_backbone(nn::BackboneOptions("resnet18").num_classes(7));
  for (const auto& m : model->modules())
    if (auto* bn = m->as<torch::nn::BatchNorm2d>()) {
      bn->running_mean.uniform_(-0.1, 0.1);
      bn->running_var.uniform_(0.5, 1.5);
      bn->weight.data().uniform_(0.5, 1.5);
    }
  model->eval();
  test::TempDir dir;
  io::write_state_dict(dir.path("ours.pth"), nn::state_dict(*model));
  const auto x = torch::randn({2, 3, 64, 80});
  io::write_tensor(dir.path("x.pt"), x);
  ASSERT_EQ(test::run_reference_script("check-load " + dir.path("ours.pth") + " resnet18 " + dir.path("x.pt") + " " +
                                       dir.path("y.pt")),
            0);
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(test::AllCloseRelative(model->forward(x), io::read_tensor(dir.path("y.pt"))));
}

TEST(Pth, MissingEmptyAndForeignFilesAreClearErrors) {
  test::TempDir dir;
  std::string e = error_of([&] { io::read_pth(dir.path("absent.pth")); });
  EXPECT_NE(e.find("absent.pth: cannot open"), std::string::npos) << e;

  test::write_bytes(dir.path("empty.pth"), "");
  e = error_of([&] { io::read_pth(dir.path("empty.pth")); });
  EXPECT_NE(e.find("empty"), std::string::npos) << e;

  test::write_bytes(dir.path("text.pth"), "name,num_frames,label\nvideo,10,3\n");
  e = error_of([&] { io::read_pth(dir.path("text.pth")); });
  EXPECT_NE(e.find("not a PyTorch file"), std::string::npos) << e;
  EXPECT_NE(e.find("HINT:"), std::string::npos) << e;

  e = error_of([&] { io::read_state_dict(reference("torchscript.pt")); });
  EXPECT_NE(e.find("TorchScript"), std::string::npos) << e;

  e = error_of([&] { io::read_state_dict(reference("tensor_view.pt")); });
  EXPECT_NE(e.find("no state dict"), std::string::npos) << e;
  EXPECT_NE(e.find("tensor (3, 2)"), std::string::npos) << e;

  e = error_of([&] { io::read_tensor(reference("resnet18.pth")); });
  EXPECT_NE(e.find("expected a tensor, found dict"), std::string::npos) << e;
}

// A zip torch.save file whose data.pkl is `pickle` (LibTorch's writer, as torch.save writes them).
std::string zip_with_pickle(const test::TempDir& dir, const std::string& pickle) {
  const std::string path = dir.path("archive.pth");
  caffe2::serialize::PyTorchStreamWriter writer(path);
  writer.writeRecord("data.pkl", pickle.data(), pickle.size());
  writer.writeEndOfFile();
  return path;
}

std::string short_unicode(const std::string& s) { return "X" + std::string("\0\0\0\0", 4).replace(0, 1, 1, char(s.size())) + s; }

TEST(Pth, InputsBoundTheWorkAndMemoryTheyCause) {
  using namespace std::string_literals;  // pickles hold NUL bytes
  test::TempDir dir;
  // A pickle nesting a million tuples (a few bytes each): refused at the depth limit, not a stack overflow.
  std::string e = error_of([&] { io::read_pth(zip_with_pickle(dir, "\x80\x02)" + std::string(1000000, '\x85') + ".")); });
  EXPECT_NE(e.find("nested deeper than 1000 levels"), std::string::npos) << e;

  // A storage of 2^38 floats (1 TiB) in a file of a few hundred bytes: refused before any allocation.
  const std::string huge = std::string("\x8a\x06", 2) + std::string("\0\0\0\0\x40\0", 6);  // LONG1 2^38
  e = error_of([&] {
    io::read_pth(zip_with_pickle(dir, "\x80\x02(" + short_unicode("storage") + "ctorch\nFloatStorage\n" +
                                          short_unicode("0") + short_unicode("cpu") + huge + "tQ."));
  });
  EXPECT_NE(e.find("claims 274877906944 elements"), std::string::npos) << e;

  // A zip directory claiming a 2 GiB data.pkl: refused before LibTorch's reader allocates it.
  std::string bytes = read_file(zip_with_pickle(dir, "\x80\x02N."));
  const size_t cd = bytes.rfind(std::string("PK\x01\x02", 4));
  ASSERT_NE(cd, std::string::npos);
  bytes.replace(cd + 24, 4, std::string("\xff\xff\xff\x7f", 4));  // uncompressed size
  test::write_bytes(dir.path("claims.pth"), bytes);
  e = error_of([&] { io::read_pth(dir.path("claims.pth")); });
  EXPECT_NE(e.find("claims 2147483647 bytes"), std::string::npos) << e;

  // Cycles would never be freed: a list appended to itself, and a list changed after it went into another.
  e = error_of([&] { io::read_pth(zip_with_pickle(dir, "\x80\x02]q\x00h\x00" "a."s)); });
  EXPECT_NE(e.find("contains itself"), std::string::npos) << e;
  e = error_of([&] { io::read_pth(zip_with_pickle(dir, "\x80\x02]q\x00]q\x01h\x00" "a0h\x01" "a."s)); });
  EXPECT_NE(e.find("changed after it was put into another"), std::string::npos) << e;

  // A tensor whose size and stride overflow int64 when multiplied.
  const std::string big = std::string("\x8a\x08", 2) + std::string("\0\0\0\0\0\0\0\x40", 8);  // 2^62
  e = error_of([&] {
    io::read_pth(zip_with_pickle(dir, "\x80\x02" "ctorch._utils\n_rebuild_tensor_v2\n(" "(" + short_unicode("storage") +
                                          "ctorch\nFloatStorage\n" + short_unicode("0") + short_unicode("cpu") +
                                          "K\x04tQK\x00("s + big + "K\x02t" + "(" + big + "K\x01t" + "\x89)tR."));
  });
  EXPECT_NE(e.find("size and stride out of range"), std::string::npos) << e;
}

TEST(Pth, TruncatedFilesAreErrorsAtEveryCut) {
  test::TempDir dir;
  for (const char* file : {"official_mobilenet_v2.pth.tar", "official_mobilenet_v2_zip.pth.tar"}) {
    const std::string bytes = read_file(reference(file));
    for (int i = 1; i < 40; ++i) {
      const size_t cut = bytes.size() * i / 40 + (i % 7);  // cuts through headers, pickles and tensor data
      test::write_bytes(dir.path("cut.pth"), bytes.substr(0, cut));
      std::string e = error_of([&] { io::read_state_dict(dir.path("cut.pth")); });
      EXPECT_NE(e.find(dir.path("cut.pth")), std::string::npos) << file << " cut at " << cut << ": " << e;
    }
    // The pickle itself cut short, within the first kilobyte.
    for (size_t cut = 1; cut < 1024; cut += 37) {
      test::write_bytes(dir.path("cut.pth"), bytes.substr(0, cut));
      error_of([&] { io::read_state_dict(dir.path("cut.pth")); });
    }
  }
}

TEST(Pth, CorruptedBytesNeverCrash) {
  // Flipped bytes anywhere in a legacy file: either a clean error or (data bytes) a loadable file.
  const std::string bytes = read_file(reference("official_mobilenet_v2.pth.tar"));
  test::TempDir dir;
  std::mt19937 rng(0);
  for (int i = 0; i < 200; ++i) {
    std::string broken = bytes;
    const size_t at = i < 100 ? rng() % 4096 : rng() % broken.size();  // header and pickle, then anywhere
    broken[at] = static_cast<char>(rng());
    test::write_bytes(dir.path("broken.pth"), broken);
    try {
      io::read_state_dict(dir.path("broken.pth"));
    } catch (const Error&) {
    }
  }
}

}  // namespace
}  // namespace adafocus
