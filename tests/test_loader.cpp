// Datasets and the threaded loader: same batches for the same seed whatever the workers, resumable, and robust to
// videos that fail to load.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <set>

#include "core/files.h"
#include "data/loader.h"
#include "data/synthetic.h"
#include "test_util.h"

namespace adafocus {
namespace {

class LoaderTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = std::make_unique<test::TempDir>();
    data::SyntheticOptions o;
    o.out = dir_->path("d");
    o.train = 10;
    o.val = 2;
    o.size = 64;
    o.frames = 12;
    data::make_synthetic(o);
    o.out = dir_->path("f");
    o.format = "frames";
    data::make_synthetic(o);
  }
  static void TearDownTestSuite() { dir_.reset(); }

  static data::DatasetOptions options(bool train) {
    data::DatasetOptions o;
    o.root = dir_->path("d");
    o.list = dir_->path("d/train.txt");
    o.train = train;
    o.segments = 4;
    o.transform.input_size = 48;
    o.transform.test_resize = 56;
    return o;
  }
  static std::vector<data::Batch> epoch(data::Loader& loader, int64_t e, int64_t first = 0) {
    loader.start_epoch(e, first);
    std::vector<data::Batch> out;
    while (auto b = loader.next()) out.push_back(std::move(*b));
    return out;
  }
  static void expect_same(const std::vector<data::Batch>& a, const std::vector<data::Batch>& b) {
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].indices, b[i].indices) << "batch " << i;
      EXPECT_TRUE(a[i].clips.equal(b[i].clips)) << "batch " << i;
      EXPECT_TRUE(a[i].labels.equal(b[i].labels)) << "batch " << i;
    }
  }
  static std::unique_ptr<test::TempDir> dir_;
};
std::unique_ptr<test::TempDir> LoaderTest::dir_;

TEST_F(LoaderTest, SameBatchesWhateverTheNumberOfWorkers) {
  data::VideoDataset dataset(options(true));
  std::vector<std::vector<data::Batch>> runs;
  for (int workers : {0, 1, 3}) {
    data::LoaderOptions lo;
    lo.batch_size = 3;
    lo.workers = workers;
    lo.prefetch = 2;
    lo.shuffle = true;
    lo.drop_last = true;
    lo.seed = 11;
    data::Loader loader(dataset, lo);
    runs.push_back(epoch(loader, 2));
    EXPECT_EQ(runs.back().size(), 3u);  // 10 videos, batches of 3, last one dropped
  }
  expect_same(runs[0], runs[1]);
  expect_same(runs[0], runs[2]);
  ASSERT_EQ(runs[0][0].clips.sizes(), torch::IntArrayRef({3, 4, 3, 48, 48}));
  EXPECT_EQ(runs[0][0].target.sizes(), torch::IntArrayRef({3}));
}

TEST_F(LoaderTest, EpochsShuffleDifferentlyAndResumeExactly) {
  data::VideoDataset dataset(options(true));
  data::LoaderOptions lo;
  lo.batch_size = 2;
  lo.shuffle = true;
  lo.seed = 5;
  data::Loader loader(dataset, lo);
  const auto e0 = epoch(loader, 0), e1 = epoch(loader, 1);
  std::vector<size_t> order0, order1;
  for (const auto& b : e0) order0.insert(order0.end(), b.indices.begin(), b.indices.end());
  for (const auto& b : e1) order1.insert(order1.end(), b.indices.begin(), b.indices.end());
  EXPECT_NE(order0, order1);
  auto sorted = order0;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, (std::vector<size_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));  // every video once
  const auto resumed = epoch(loader, 1, 3);  // an epoch interrupted after 3 batches continues as it would have
  expect_same(resumed, std::vector<data::Batch>(e1.begin() + 3, e1.end()));
}

TEST_F(LoaderTest, ProcessesLoadDisjointShardsThatMakeUpTheOneProcessBatches) {
  // 10 videos over 3 processes, batches of 2 each: as PyTorch's DistributedSampler, the epoch's order is padded with
  // its start to 12 and process r takes positions r, r + 3, ...: 4 each, 2 full batches, nothing dropped.
  data::VideoDataset dataset(options(true));
  data::LoaderOptions lo;
  lo.batch_size = 6;
  lo.shuffle = true;
  lo.drop_last = true;
  lo.seed = 9;
  data::Loader one(dataset, lo);
  const auto whole = epoch(one, 1);  // 1 batch of 6 (4 dropped)
  std::vector<std::vector<data::Batch>> shards;
  std::vector<size_t> all;
  for (int rank = 0; rank < 3; ++rank) {
    data::LoaderOptions shard = lo;
    shard.batch_size = 2;
    shard.rank = rank;
    shard.world = 3;
    data::Loader loader(dataset, shard);
    EXPECT_EQ(loader.samples_per_epoch(), 4);
    shards.push_back(epoch(loader, 1));
    ASSERT_EQ(shards.back().size(), 2u);
    for (const auto& b : shards.back()) all.insert(all.end(), b.indices.begin(), b.indices.end());
  }
  // Every video, the first two of the order twice (the padding), and nothing else.
  std::map<size_t, int> count;
  for (size_t i : all) ++count[i];
  EXPECT_EQ(count.size(), 10u);
  int twice = 0;
  for (const auto& [item, n] : count) twice += n == 2;
  EXPECT_EQ(twice, 2);
  // The first step of the three processes holds the one-process first batch's videos, each with the same clip (its
  // random crop and frames derive from its position in the epoch, not from who loads it).
  std::map<size_t, torch::Tensor> clips;
  for (const auto& s : shards)
    for (size_t i = 0; i < s[0].indices.size(); ++i) clips[s[0].indices[i]] = s[0].clips[static_cast<int64_t>(i)];
  ASSERT_EQ(clips.size(), 6u);
  for (size_t i = 0; i < whole[0].indices.size(); ++i) {
    ASSERT_TRUE(clips.count(whole[0].indices[i]));
    EXPECT_TRUE(clips[whole[0].indices[i]].equal(whole[0].clips[static_cast<int64_t>(i)]));
  }
  // Evaluation (no drop_last) shards without padding: every video exactly once.
  std::vector<size_t> evaluated;
  for (int rank = 0; rank < 3; ++rank) {
    data::LoaderOptions shard;
    shard.batch_size = 3;
    shard.rank = rank;
    shard.world = 3;
    data::Loader loader(dataset, shard);
    for (const auto& b : epoch(loader, 0)) evaluated.insert(evaluated.end(), b.indices.begin(), b.indices.end());
  }
  std::sort(evaluated.begin(), evaluated.end());
  EXPECT_EQ(evaluated, (std::vector<size_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
}

TEST_F(LoaderTest, FrameCacheGivesTheSameBatchesWithinItsBudget) {
  // Video files and frame folders alike; 3 workers filling the cache at once.
  for (const char* layout : {"d", "f"}) {
    data::DatasetOptions plain = options(true);
    plain.root = dir_->path(layout);
    plain.list = dir_->path(std::string(layout) + "/train.txt");
    data::DatasetOptions cached = plain;
    // 10 videos x 12 frames of 64 x 64 x 3 bytes = 1.47 MB: a 1 MB budget holds part of them, then stops.
    cached.cache = std::make_shared<io::FrameCache>(size_t{1} << 20);
    data::VideoDataset a(plain), b(cached);
    data::LoaderOptions lo;
    lo.batch_size = 3;
    lo.workers = 3;
    lo.shuffle = true;
    lo.seed = 7;
    data::Loader la(a, lo), lb(b, lo);
    for (int64_t e = 0; e < 3; ++e) expect_same(epoch(la, e), epoch(lb, e));  // the first fills, the others read
    EXPECT_LE(cached.cache->allocated(), size_t{1} << 20) << layout;
    EXPECT_GT(cached.cache->frames(), 0u) << layout;
    EXPECT_LE(cached.cache->frames(), (size_t{1} << 20) / (64 * 64 * 3)) << layout;  // full at 85 frames
  }
  io::FrameCache tiny(100);  // a frame larger than the whole budget is not stored
  tiny.put("x", io::Image(8, 8));
  io::Image out;
  EXPECT_FALSE(tiny.get("x", out));
  EXPECT_EQ(tiny.allocated(), 0u);
}

TEST_F(LoaderTest, TestViewIsDeterministicAndTrainViewVaries) {
  data::VideoDataset test(options(false)), train(options(true));
  Rng a(1), b(2);
  EXPECT_TRUE(test.get(3, a).clip.equal(test.get(3, b).clip));
  EXPECT_EQ(test.get(3, a).crop.x, 4);  // 56 -> centre 48
  bool differs = false;
  for (int i = 0; i < 5 && !differs; ++i) differs = !train.get(3, a).clip.equal(train.get(3, b).clip);
  EXPECT_TRUE(differs);
}

TEST_F(LoaderTest, FocusClipAndOfficialInputOrder) {
  auto o = options(false);
  o.segments = 8;
  o.input_order = true;
  o.focus_segments = 3;
  data::VideoDataset dataset(o);
  Rng rng(0);
  const data::Sample s = dataset.get(0, rng);
  // TSN test centres of 12 frames in 8 segments, fed in the order 3,0,7,1,5,2,4,6.
  EXPECT_EQ(s.frames, (std::vector<int64_t>{5, 0, 11, 2, 8, 3, 6, 9}));
  EXPECT_EQ(s.focus_frames, (std::vector<int64_t>{2, 6, 10}));
  EXPECT_EQ(s.focus.sizes(), torch::IntArrayRef({3, 3, 48, 48}));
}

TEST_F(LoaderTest, ActivityNetListOverOfficialFrameFoldersWithMultiLabels) {
  // name,num_frames,label[,label...] with frames at root/frames/<name>/image_%05d.jpg.
  test::write_bytes(dir_->path("f/actnet.txt"), "train_00000,12,3\ntrain_00001,12,1,4\ntrain_00002,10,0\n");
  auto o = options(false);
  o.root = dir_->path("f");
  o.list = dir_->path("f/actnet.txt");
  data::VideoDataset dataset(o);
  data::LoaderOptions lo;
  lo.batch_size = 3;
  data::Loader loader(dataset, lo);
  const auto batches = epoch(loader, 0);
  ASSERT_EQ(batches.size(), 1u);
  EXPECT_TRUE(batches[0].labels.equal(torch::tensor({{3, -1}, {1, 4}, {0, -1}}, torch::kLong)));
  EXPECT_TRUE(batches[0].target.equal(torch::tensor({3, 1, 0}, torch::kLong)));
  EXPECT_LE(batches[0].samples[2].frames.back(), 9);  // the list's 10 frames, not the 12 on disk
}

TEST_F(LoaderTest, TrainingDrawsOneOfTheDistinctLabelsPerFetch) {
  // Labels 4, 1, 4: the target is 1 or 4 with equal odds (the repeated 4 is not counted twice), evaluation keeps all.
  test::write_bytes(dir_->path("f/multi.txt"), "train_00001,12,4,1,4\n");
  auto o = options(true);
  o.root = dir_->path("f");
  o.list = dir_->path("f/multi.txt");
  o.transform.scales = {1.0};
  data::VideoDataset dataset(o);
  std::map<int64_t, int> drawn;
  for (uint64_t seed = 0; seed < 200; ++seed) {
    Rng rng(seed);
    const auto labels = dataset.get(0, rng).labels;
    ASSERT_EQ(labels.size(), 2u);
    ++drawn[labels[0]];
    EXPECT_EQ(std::set<int64_t>(labels.begin(), labels.end()), (std::set<int64_t>{1, 4}));
  }
  ASSERT_EQ(drawn.size(), 2u);
  EXPECT_NEAR(drawn[1], 100, 30);  // binomial(200, 1/2): sd 7
  Rng rng(3), again(3);
  EXPECT_EQ(dataset.get(0, rng).labels, dataset.get(0, again).labels);  // seeded: reproducible
  o.train = false;
  Rng unused(0);
  EXPECT_EQ(data::VideoDataset(o).get(0, unused).labels, (std::vector<int64_t>{4, 1, 4}));
}

TEST_F(LoaderTest, BrokenVideosAreReplacedAndReportedOrStopTheRun) {
  const std::string d = dir_->path("d");
  std::filesystem::copy_file(d + "/videos/train_00001.mp4", d + "/broken_cut.mp4",
                             std::filesystem::copy_options::overwrite_existing);
  const std::string bytes = read_file(d + "/broken_cut.mp4");
  test::write_bytes(d + "/broken_cut.mp4", bytes.substr(0, bytes.size() / 3));
  test::write_bytes(d + "/broken.txt",
                    "videos/train_00000.mp4 1\nbroken_cut.mp4 2\nmissing.mp4 3\nvideos/train_00002.mp4 4\n");
  auto o = options(true);
  o.list = d + "/broken.txt";
  data::VideoDataset dataset(o);
  data::LoaderOptions lo;
  lo.batch_size = 4;
  lo.workers = 2;
  {
    data::Loader loader(dataset, lo);
    const auto batches = epoch(loader, 0);
    ASSERT_EQ(batches.size(), 1u);
    EXPECT_EQ(batches[0].clips.size(0), 4);  // full batch: the two broken ones were replaced
    for (size_t i : batches[0].indices) EXPECT_TRUE(i == 0 || i == 3) << i;
    const auto failures = loader.failures();
    ASSERT_GE(failures.size(), 2u);
    std::set<std::string> files;
    for (const auto& f : failures) files.insert(std::filesystem::path(f.path).filename());
    EXPECT_TRUE(files.count("broken_cut.mp4") && files.count("missing.mp4"));
  }
  lo.strict = true;
  data::Loader strict(dataset, lo);
  strict.start_epoch(0);
  const std::string e = test::error_of([&] { strict.next(); });
  EXPECT_TRUE(e.find("broken_cut.mp4") != std::string::npos || e.find("missing.mp4") != std::string::npos) << e;
}

}  // namespace
}  // namespace adafocus
