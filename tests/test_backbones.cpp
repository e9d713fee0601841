// Parity of our backbones with torchvision (random weights and random BN statistics, eval mode), and with the
// official TSM and AdaFocus MobileNetV2 layouts. Tolerance: max abs error <= 1e-4 x max |reference|.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include "core/error.h"
#include "nn/flop_counter.h"
#include "nn/fused_conv.h"
#include "infer/precision.h"
#include "io/pth.h"
#include "nn/backbone.h"
#include "nn/kernels.h"
#include "nn/state_dict.h"
#include "test_util.h"

namespace adafocus {
namespace {

using test::AllCloseRelative;
using test::reference;

nn::Backbone load(const std::string& file, nn::BackboneOptions options) {
  nn::Backbone model = nn::load_backbone(options, io::read_state_dict(reference(file)), file);
  model->eval();
  return model;
}

// Compares the feature map, pooled vector and logits of `model` on `input` with Python's `prefix`_*.pt.
void expect_parity(nn::BackboneImpl& model, const std::string& input, const std::string& prefix) {
  torch::NoGradGuard no_grad;
  const torch::Tensor x = io::read_tensor(reference(input));
  const torch::Tensor map = model.feature_map(x);
  const torch::Tensor pooled = model.pool(map);
  EXPECT_TRUE(AllCloseRelative(map, io::read_tensor(reference(prefix + "_map.pt")))) << prefix << " map";
  EXPECT_TRUE(AllCloseRelative(pooled, io::read_tensor(reference(prefix + "_pool.pt")))) << prefix << " pool";
  EXPECT_TRUE(AllCloseRelative(model.classify(pooled), io::read_tensor(reference(prefix + "_logits.pt"))))
      << prefix << " logits";
}

class TorchvisionParity : public ::testing::TestWithParam<std::string> {};

TEST_P(TorchvisionParity, MapPoolAndLogitsAtThreeSizes) {
  const std::string arch = GetParam();
  nn::Backbone model = load(arch + ".pth", nn::BackboneOptions(arch));
  for (const char* size : {"224", "128", "160x112"})
    expect_parity(*model, std::string("input_") + size + ".pt", arch + "_" + size);
}

INSTANTIATE_TEST_SUITE_P(Backbones, TorchvisionParity,
                         ::testing::Values("mobilenet_v2", "resnet18", "resnet34", "resnet50"));

TEST(Backbones, MobileNetV2WidthMultiplierMatchesTorchvision) {
  nn::Backbone model = load("mobilenet_v2_w0.5.pth", nn::BackboneOptions("mobilenet_v2").width_mult(0.5));
  expect_parity(*model, "input_128.pt", "mobilenet_v2_w0.5_128");
}

TEST(Backbones, TsmMatchesOfficialShiftPlacement) {
  for (const std::string arch : {"mobilenet_v2", "resnet50"}) {
    // Official TSM checkpoints wrap shifted convs as ".net."; we load them into the torchvision layout.
    nn::Backbone model = load("tsm_" + arch + ".pth", nn::BackboneOptions(arch).tsm_segments(4));
    expect_parity(*model, "input_tsm.pt", "tsm_" + arch);
  }
}

TEST(Backbones, MobileNetV2InChunksWithoutGradientIsOnePass) {
  // Inference runs 16 frames at a time (TSM: whole videos); with gradient the same network runs all at once.
  for (const int64_t segments : {0, 12}) {  // 12: chunks of 24 frames, two videos, never a video cut in two
    torch::manual_seed(0);
    auto model = nn::make_backbone(nn::BackboneOptions("mobilenet_v2").width_mult(0.5).tsm_segments(segments));
    model->eval();
    const auto x = torch::randn({36, 3, 32, 32});
    const auto whole = model->feature_map(x).detach();  // grad mode on: one pass
    torch::NoGradGuard no_grad;
    EXPECT_TRUE(AllCloseRelative(model->feature_map(x), whole, 1e-5)) << "segments " << segments;
  }
}

TEST(Backbones, TsmChangesTheOutput) {
  // Guards the test above: without the shift the same weights give another result.
  nn::Backbone model = load("tsm_resnet50.pth", nn::BackboneOptions("resnet50"));
  torch::NoGradGuard no_grad;
  EXPECT_FALSE(AllCloseRelative(model->forward(io::read_tensor(reference("input_tsm.pt"))),
                                io::read_tensor(reference("tsm_resnet50_logits.pt")), 1e-2));
}

TEST(Backbones, OfficialAdaFocusMobileNetV2LayoutLoads) {
  // {'state_dict': {'module.features.1.conv.0.weight': ...}} in the legacy and the zip format.
  for (const char* file : {"official_mobilenet_v2.pth.tar", "official_mobilenet_v2_zip.pth.tar"}) {
    nn::Backbone model = load(file, nn::BackboneOptions("mobilenet_v2"));
    expect_parity(*model, "input_224.pt", "official_mobilenet_v2_224");
  }
}

TEST(Backbones, NumClassesComesFromTheWeights) {
  nn::Backbone model = load("resnet18.pth", nn::BackboneOptions("resnet18").num_classes(1000));
  torch::NoGradGuard no_grad;
  EXPECT_EQ(model->forward(torch::zeros({1, 3, 64, 64})).size(1), 10);
}

std::string load_error(const std::string& arch, const io::TensorDict& state) {
  return test::error_of([&] { nn::load_backbone(nn::BackboneOptions(arch), state, "weights.pth"); });
}

TEST(Backbones, MismatchedWeightsNameEveryKeyAndShape) {
  io::TensorDict r18 = io::read_state_dict(reference("resnet18.pth"));
  std::string e = load_error("resnet34", r18);
  EXPECT_NE(e.find("weights.pth: weights do not fit the model"), std::string::npos) << e;
  EXPECT_NE(e.find("missing key 'layer1.2.conv1.weight' (64, 64, 3, 3)"), std::string::npos) << e;

  io::TensorDict bad = r18;
  bad["layer1.0.conv1.weight"] = torch::zeros({64, 64, 1, 1});
  bad.insert("extra.weight", torch::zeros({2}));
  e = load_error("resnet18", bad);
  EXPECT_NE(e.find("'layer1.0.conv1.weight' has shape (64, 64, 1, 1) in the file but (64, 64, 3, 3) in the model"),
            std::string::npos)
      << e;
  EXPECT_NE(e.find("unexpected key 'extra.weight' (2)"), std::string::npos) << e;
  EXPECT_NE(e.find("HINT:"), std::string::npos) << e;

  e = load_error("mobilenet_v2", r18);
  EXPECT_NE(e.find("problems"), std::string::npos) << e;
}

TEST(Backbones, UnknownArchIsAnError) {
  const std::string e = test::error_of([] { nn::make_backbone(nn::BackboneOptions("resnet51")); });
  EXPECT_NE(e.find("unknown backbone arch 'resnet51'"), std::string::npos) << e;
  EXPECT_NE(e.find("resnet50"), std::string::npos) << e;
}


// Random BN statistics and affine parameters, so that folding has something to fold.
void randomize_batchnorm(torch::nn::Module& model) {
  torch::NoGradGuard no_grad;
  for (auto& m : model.modules())
    if (auto* bn = m->as<torch::nn::BatchNorm2d>()) {
      bn->weight.uniform_(0.5, 1.5);
      bn->bias.normal_(0.0, 0.1);
      bn->running_mean.normal_(0.0, 0.1);
      bn->running_var.uniform_(0.5, 1.5);
    }
}

TEST(Backbones, FoldedBatchNormKeepsOutputsAndFlops) {
  torch::manual_seed(3);
  for (const auto& [arch, tsm] : {std::make_pair("mobilenet_v2", 0), std::make_pair("resnet18", 2),
                                  std::make_pair("resnet50", 0), std::make_pair("mobilenet_v2", 2)}) {
    SCOPED_TRACE(arch);
    auto model = nn::make_backbone(nn::BackboneOptions(arch).tsm_segments(tsm));
    randomize_batchnorm(*model);
    model->eval();
    const auto x = torch::randn({4, 3, 64, 64});
    torch::NoGradGuard no_grad;
    const auto plain = model->feature_map(x);
    const double flops = nn::backbone_flops(*model, 64, 64, std::max(tsm, 1)).gflops();
    model->fold_batchnorm();
    const auto folded = model->feature_map(x);
    EXPECT_TRUE(folded.is_contiguous(torch::MemoryFormat::ChannelsLast));
    EXPECT_TRUE(AllCloseRelative(folded, plain, 1e-4));
    // The FLOPs counter still sees conv + BN (the papers' convention), and training mode the unfolded network.
    EXPECT_DOUBLE_EQ(nn::backbone_flops(*model, 64, 64, std::max(tsm, 1)).gflops(), flops);
    model->train();
    {  // batch statistics (the running ones move), not the folded copy
      torch::NoGradGuard again;
      const auto running_mean = model->buffers().front();  // the first BatchNorm's
      const auto before = running_mean.clone();
      model->feature_map(x);
      EXPECT_FALSE(torch::equal(running_mean, before));
    }
  }
}

TEST(Backbones, ConvChainIsItsConvolutionsReLU6DepthwiseAndResidual) {
  // Against torch::conv2d and hardtanh: a stem's 3x3 stride 2, a depthwise 3x3 alone, a 1x1 expansion with its
  // depthwise 3x3 fused (stride 1, then 2), a 1x1 projection adding the expansion's input, two 1x1 layers of one
  // shape (each with its own weights); large maps (where oneDNN fuses in one JIT kernel) and
  // small ones (two kernels), batch 1 and 3; in fp32 and in bf16. On this CPU oneDNN has a JIT implementation of each
  // layer: an undefined result (the fall-back to LibTorch) fails the test.
  torch::manual_seed(8);
  torch::NoGradGuard no_grad;
  const auto relu6 = [](const torch::Tensor& t) { return torch::hardtanh(t, 0.0, 6.0); };
  const nn::FoldedConv stem{torch::randn({16, 3, 3, 3}), torch::randn({16})};
  const nn::FoldedConv lone{torch::randn({16, 1, 3, 3}) * 0.3, torch::randn({16})};
  const nn::FoldedConv expand{torch::randn({48, 16, 1, 1}) * 0.3, torch::randn({48})};
  const nn::FoldedConv depthwise{torch::randn({48, 1, 3, 3}) * 0.3, torch::randn({48})};
  const nn::FoldedConv project{torch::randn({16, 48, 1, 1}) * 0.3, torch::randn({16})};
  const nn::FoldedConv mix1{torch::randn({16, 16, 1, 1}) * 0.3, torch::randn({16})};  // two layers of one shape
  const nn::FoldedConv mix2{torch::randn({16, 16, 1, 1}) * 0.3, torch::randn({16})};
  for (const int64_t stride : {1, 2})
    for (const auto& [n, h, w] : {std::make_tuple(1, 225, 223), std::make_tuple(3, 33, 31)}) {
      SCOPED_TRACE(fmt::format("depthwise stride {}, {}x{}x{}", stride, n, h, w));
      nn::ChainLayer first{stem, 2, 1, true}, alone{lone, 1, 16, true}, second{expand, 1, 1, true, depthwise, stride},
          third{project};
      if (stride == 1) third.residual = 2;  // the input of layer 2 (the lone depthwise layer's output)
      const nn::ConvChain chain({first, alone, second, third, {mix1, 1, 1, true}, {mix2}});
      const auto image = torch::randn({n, 3, h, w}) * 3;
      const auto y = chain(image);
      ASSERT_TRUE(y.defined());
      EXPECT_TRUE(y.is_contiguous(torch::MemoryFormat::ChannelsLast));
      const auto a = relu6(torch::conv2d(relu6(torch::conv2d(image, stem.weight, stem.bias, 2, 1)), lone.weight,
                                         lone.bias, 1, 1, 1, 16));
      const auto b = relu6(torch::conv2d(relu6(torch::conv2d(a, expand.weight, expand.bias)), depthwise.weight,
                                         depthwise.bias, stride, 1, 1, 48));
      const auto c = torch::conv2d(b, project.weight, project.bias) + (stride == 1 ? a : torch::zeros({}));
      const auto reference = torch::conv2d(relu6(torch::conv2d(c, mix1.weight, mix1.bias)), mix2.weight, mix2.bias);
      EXPECT_TRUE(AllCloseRelative(y, reference, 1e-5));
      // Under bf16 autocast: bf16 maps and weights (8 bits of mantissa, rounded at every layer as autocast's layers
      // round them: LibTorch's own layers under autocast are 1.2-1.5% of the largest value off the fp32 reference
      // here), returned in bf16. With AVX512-BF16 oneDNN has JIT kernels for every layer; without AVX-512 only
      // reference ones, where the chain declines.
      infer::PrecisionGuard bf16(infer::Precision::Bf16);
      const auto z = chain(image);
      if (infer::cpu_has_bf16()) {
        ASSERT_TRUE(z.defined());
      }
      if (z.defined()) {
        EXPECT_EQ(z.scalar_type(), torch::kBFloat16);
        EXPECT_TRUE(AllCloseRelative(z, reference, 4e-2));
      }
    }
  // Not while a gradient is recorded, nor while the FLOPs counter unfolds the network.
  EXPECT_TRUE(nn::ConvChain::runs(torch::zeros({1, 3, 8, 8})));
  {
    torch::AutoGradMode recording(true);
    EXPECT_FALSE(nn::ConvChain::runs(torch::zeros({1, 3, 8, 8})));
  }
  {
    nn::UnfoldedGuard unfolded;
    EXPECT_FALSE(nn::ConvChain::runs(torch::zeros({1, 3, 8, 8})));
  }
}

TEST(Backbones, FoldedBackbonesMatchTorchvision) {
  // The inference path (BN folded; MobileNetV2 as one oneDNN chain, ResNet-50 on weights packed for oneDNN) against
  // torchvision's eval-mode networks.
  for (const std::string arch : {"mobilenet_v2", "resnet50"}) {
    nn::Backbone model = load(arch + ".pth", nn::BackboneOptions(arch));
    model->fold_batchnorm();
    for (const char* size : {"224", "128", "160x112"})
      expect_parity(*model, std::string("input_") + size + ".pt", arch + "_" + size);
  }
}

TEST(Backbones, FoldedConvolutionRunsOnPackedWeights) {
  // On CPU, conv_bn on a folded convolution (oneDNN's, its weights packed once per layout asked for) is the
  // convolution and the BatchNorm: ResNet's 3x3 (stride 1 and 2), 1x1 and strided 1x1 shortcut, and a grouped 3x3, at
  // two input sizes each (oneDNN's kernels ask for other weight layouts at other sizes), alternating between them.
  torch::manual_seed(9);
  struct Shape { int64_t k, stride, groups; };
  for (const Shape& shape : {Shape{3, 1, 1}, Shape{3, 2, 1}, Shape{1, 1, 1}, Shape{1, 2, 1}, Shape{3, 1, 8}}) {
    SCOPED_TRACE(fmt::format("k {} stride {} groups {}", shape.k, shape.stride, shape.groups));
    torch::nn::Conv2d conv(torch::nn::Conv2dOptions(8, 16, shape.k)
                               .stride(shape.stride)
                               .padding((shape.k - 1) / 2)
                               .groups(shape.groups)
                               .bias(false));
    torch::nn::BatchNorm2d bn(16);
    randomize_batchnorm(*bn);
    bn->eval();
    const nn::FoldedConv folded = nn::fold(*conv, *bn);
    const nn::FoldedConv with_relu = nn::fold(*conv, *bn, /*relu=*/true);
    EXPECT_TRUE(folded.packed);
    torch::NoGradGuard no_grad;
    for (int round = 0; round < 2; ++round)
      for (const auto& x : {torch::randn({2, 8, 15, 13}), torch::randn({1, 8, 4, 4})}) {
        const auto y = nn::conv_bn(*conv, *bn, folded, x);
        EXPECT_TRUE(y.is_contiguous(torch::MemoryFormat::ChannelsLast));
        const auto reference = bn->forward(conv->forward(x));
        EXPECT_TRUE(AllCloseRelative(y, reference, 1e-5));
        // Folded with its ReLU (oneDNN's post-op), which only a conv_bn asked for the ReLU may run.
        EXPECT_TRUE(AllCloseRelative(nn::conv_bn(*conv, *bn, with_relu, x, true), torch::relu(reference), 1e-5));
        EXPECT_TRUE(AllCloseRelative(nn::conv_bn(*conv, *bn, folded, x, true), torch::relu(reference), 1e-5));
        EXPECT_THROW(nn::conv_bn(*conv, *bn, with_relu, x), c10::Error);
        {  // What the chains are timed against: LibTorch's prepacked convolution.
          nn::ChainOffGuard off;
          EXPECT_TRUE(AllCloseRelative(nn::conv_bn(*conv, *bn, with_relu, x, true), torch::relu(reference), 1e-5));
        }
        // Under bf16 autocast: bf16 weights reordered once, on first use; float or bf16 input (a ResNet's later
        // layers read bf16). The result is autocast's own convolution of the folded weights (bf16 products, float
        // sums: within a few bf16 roundings) and the fp32 one to bf16's precision.
        infer::PrecisionGuard bf16(infer::Precision::Bf16);
        for (const bool relu : {false, true}) {
          const nn::FoldedConv& f = relu ? with_relu : folded;
          const auto ours = nn::conv_bn(*conv, *bn, f, x, relu);
          EXPECT_EQ(ours.scalar_type(), torch::kBFloat16);
          EXPECT_TRUE(torch::equal(ours, nn::conv_bn(*conv, *bn, f, x.to(torch::kBFloat16), relu)));
          auto autocast = torch::conv2d(x.contiguous(torch::MemoryFormat::ChannelsLast), f.weight, f.bias,
                                        shape.stride, (shape.k - 1) / 2, 1, shape.groups);
          if (relu) autocast = torch::relu(autocast);
          EXPECT_EQ(autocast.scalar_type(), torch::kBFloat16);
          EXPECT_TRUE(AllCloseRelative(ours.to(torch::kFloat), autocast.to(torch::kFloat), 2e-2)) << relu;
          EXPECT_TRUE(AllCloseRelative(ours.to(torch::kFloat), relu ? torch::relu(reference) : reference, 3e-2))
              << relu;
        }
      }
  }
}

TEST(Backbones, ChannelsLastTrainingOfANarrowResNetMatchesAndSurvives) {
  // ResNets train in channels-last, through our batch norm where the channels are few (nn/kernels.h), and around
  // oneDNN 2.6's strided 1x1 weight gradient on channels-last input of < 16 channels, which corrupts the heap (this
  // shape crashed a process within three steps). Reference: the same network in double precision, which none of
  // that touches (LibTorch's own batch norm and convolutions), over three steps (running statistics included).
  torch::manual_seed(5);
  auto ours = nn::make_backbone(nn::BackboneOptions("resnet10").base_width(8).stem("small_s2"));
  auto reference = nn::make_backbone(nn::BackboneOptions("resnet10").base_width(8).stem("small_s2"));
  nn::load_state_dict(*reference, nn::state_dict(*ours), "ours");
  reference->to(torch::kDouble);
  const auto x = torch::randn({4, 3, 128, 128});
  for (int step = 0; step < 3; ++step) {
    ours->zero_grad();
    reference->zero_grad();
    const auto map = ours->feature_map(x);
    EXPECT_TRUE(map.is_contiguous(torch::MemoryFormat::ChannelsLast));
    map.square().mean().backward();
    reference->feature_map(x.to(torch::kDouble)).square().mean().backward();
  }
  const auto a = reference->named_parameters(), b = ours->named_parameters();
  for (const auto& p : a) {
    if (p.key().rfind("fc.", 0) == 0) continue;  // the classifier is not in feature_map
    SCOPED_TRACE(p.key());
    EXPECT_TRUE(AllCloseRelative(b[p.key()].grad(), p.value().grad().to(torch::kFloat), 1e-3));
  }
  const auto a_buffers = reference->named_buffers(), b_buffers = ours->named_buffers();
  for (const auto& p : a_buffers) {
    SCOPED_TRACE(p.key());
    EXPECT_TRUE(AllCloseRelative(b_buffers[p.key()].to(torch::kDouble), p.value().to(torch::kDouble), 1e-5));
  }
}

TEST(Backbones, ChannelsLastBatchNormIsLibTorchs) {
  // Ours on channels-last input against LibTorch's batch norm on the same values in NCHW: output, every gradient and
  // the running statistics, over two steps (num_batches_tracked and the momentum's update). Shapes: the benchmark's
  // channel counts, counts that are not a divisor of the 16-float lane, and row counts that leave a partial chunk
  // (2,048 rows) and a partial lane block.
  for (const auto& shape : std::vector<std::vector<int64_t>>{{64, 8, 28, 28}, {7, 3, 33, 17}, {5, 12, 9, 13}, {2, 4, 1, 3}}) {
    SCOPED_TRACE(::testing::PrintToString(shape));
    torch::manual_seed(11);
    torch::nn::BatchNorm2d ours(shape[1]), theirs(shape[1]);
    for (auto* bn : {ours.get(), theirs.get()}) {
      torch::NoGradGuard no_grad;
      torch::manual_seed(12);
      bn->weight.uniform_(0.5, 1.5);
      bn->bias.uniform_(-0.5, 0.5);
    }
    ours->train();
    theirs->train();
    for (int step = 0; step < 2; ++step) {
      const auto x = (torch::randn(shape) * 3 + 1).contiguous(torch::MemoryFormat::ChannelsLast).requires_grad_();
      const auto x2 = x.detach().contiguous().requires_grad_();
      const auto g = torch::randn(shape);
      ASSERT_TRUE(nn::use_channels_last_batch_norm(*ours, x));
      ASSERT_FALSE(nn::use_channels_last_batch_norm(*theirs, x2));
      const auto y = nn::channels_last_batch_norm(*ours, x);
      const auto y2 = theirs->forward(x2);
      EXPECT_TRUE(y.is_contiguous(torch::MemoryFormat::ChannelsLast));
      EXPECT_TRUE(AllCloseRelative(y, y2, 1e-5));
      ours->zero_grad();
      theirs->zero_grad();
      y.backward(g);
      y2.backward(g);
      EXPECT_TRUE(x.grad().is_contiguous(torch::MemoryFormat::ChannelsLast));
      EXPECT_TRUE(AllCloseRelative(x.grad(), x2.grad(), 1e-5));
      EXPECT_TRUE(AllCloseRelative(ours->weight.grad(), theirs->weight.grad(), 1e-5));
      EXPECT_TRUE(AllCloseRelative(ours->bias.grad(), theirs->bias.grad(), 1e-5));
      EXPECT_TRUE(AllCloseRelative(ours->running_mean, theirs->running_mean, 1e-6));
      EXPECT_TRUE(AllCloseRelative(ours->running_var, theirs->running_var, 1e-6));
      EXPECT_EQ(ours->num_batches_tracked.item<int64_t>(), theirs->num_batches_tracked.item<int64_t>());
    }
  }
}

TEST(Backbones, AreaDownsampleIsAvgPool) {
  torch::manual_seed(13);
  for (const auto& [shape, factor] : {std::make_pair(std::vector<int64_t>{3, 3, 128, 128}, 4),
                                      std::make_pair(std::vector<int64_t>{2, 5, 18, 12}, 3)}) {
    const auto x = torch::randn(shape);
    const auto ours = nn::area_downsample(x, factor);
    EXPECT_TRUE(AllCloseRelative(ours, torch::avg_pool2d(x, factor), 1e-6)) << factor;
  }
  EXPECT_THROW(nn::area_downsample(torch::randn({1, 3, 10, 10}), 4), c10::Error);
}

TEST(Backbones, AddReluIsAddThenRelu) {
  // Against at::add then at::relu, bit for bit: float and bf16 (rounded once, to the nearest even, as at::add rounds
  // its bf16 sum), channels-last and contiguous, a size that is no multiple of any vector width, NaN and values whose
  // bf16 sum is a tie; maps of two layouts and a map asking for a gradient take the operators themselves.
  torch::manual_seed(14);
  for (const auto dtype : {torch::kFloat, torch::kBFloat16})
    for (const bool channels_last : {true, false}) {
      auto y = torch::randn({3, 7, 5, 11}), z = torch::randn({3, 7, 5, 11});
      y[0][0][0][0] = std::nanf("");
      y[0][0][0][1] = 1.0f, z[0][0][0][1] = 1.0f / 256;  // 1 + 2^-8: halfway between two bf16 values
      y[0][0][0][2] = 1.0f + 1.0f / 128, z[0][0][0][2] = 1.0f / 256;
      y = y.to(dtype), z = z.to(dtype);
      if (channels_last)
        y = y.contiguous(torch::MemoryFormat::ChannelsLast), z = z.contiguous(torch::MemoryFormat::ChannelsLast);
      const auto expected = torch::relu(y + z);
      torch::NoGradGuard no_grad;
      const auto ours = nn::add_relu_(y.clone(), z);
      EXPECT_EQ(ours.scalar_type(), dtype);
      EXPECT_TRUE(torch::equal(ours.nan_to_num(-1), expected.nan_to_num(-1))) << dtype << channels_last;
      EXPECT_TRUE(std::isnan(ours[0][0][0][0].item<float>()));
    }
  torch::NoGradGuard no_grad;
  const auto y = torch::randn({2, 3, 4, 5});
  const auto z = torch::randn({2, 3, 4, 5}).contiguous(torch::MemoryFormat::ChannelsLast);
  EXPECT_TRUE(torch::equal(nn::add_relu_(y.clone(), z), torch::relu(y + z)));
  torch::AutoGradMode gradient(true);
  const auto w = torch::randn({2, 3}).requires_grad_();
  EXPECT_TRUE(nn::add_relu_owned(w * 1, torch::randn({2, 3})).requires_grad());
}

TEST(Backbones, SparseConvolutionIsTheConvolutionOfTheChosenChannels) {
  // Each sample against torch::conv2d on the input it names (channels gathered from other samples, zeros for -1), with
  // the weights of those input channels, keeping the outputs it computes (the rest zero); 3x3 strided (im2col), 3x3
  // with stride 1 (shifted windows), 1x1 (the input read as its own im2col); few output channels (planar products) and
  // many; with a residual added before the ReLU; the products and the direct kernel (AVX2 or, where the CPU has it,
  // AVX-512; its blocks of 8, 4, 2 and 1 outputs: 5 = 4 + 1, 40, a sample's 2 or 1; its padded phase planes at strides
  // 1 to 3). The FLOPs counter sees each sample's own product.
  torch::manual_seed(6);
  std::vector<nn::SparseConvPath> paths = {nn::SparseConvPath::Products};
  if (nn::sparse_conv_direct_available()) paths.push_back(nn::SparseConvPath::Direct);
  for (const nn::SparseConvPath path : paths)
  for (const int64_t co : {5, 40}) {
    const int64_t n = 4, ci = 6;
    const auto x = torch::randn({n, ci, 9, 7}).contiguous(torch::MemoryFormat::ChannelsLast);
    std::vector<nn::SparseConvSample> samples(4);
    samples[1].all_outputs = false, samples[1].out = {3, 0};
    samples[2].all_inputs = false, samples[2].in_sample = {2, 0, -1}, samples[2].in_channel = {1, 4, 2};
    samples[3].all_inputs = false, samples[3].all_outputs = false, samples[3].out = {4};  // reads nothing: its bias
    for (const auto& [k_, stride_, padding_] :
         {std::make_tuple(3, 2, 1), std::make_tuple(3, 1, 1), std::make_tuple(1, 1, 0), std::make_tuple(1, 2, 0),
          std::make_tuple(5, 3, 2)})
      for (const int mode : {0, 1, 2}) {  // plain, ReLU, a residual and ReLU
        const int k = k_, stride = stride_, padding = padding_;  // (clang: no lambda captures bindings before C++20)
        const bool relu = mode > 0;
        const auto w = torch::randn({co, ci, k, k}), bias = torch::randn({co});
        const int64_t ho = (9 + 2 * padding - k) / stride + 1, wo = (7 + 2 * padding - k) / stride + 1;
        const auto residual =
            mode == 2 ? torch::randn({n, co, ho, wo}).contiguous(torch::MemoryFormat::ChannelsLast) : torch::Tensor();
        nn::FlopsReport counted;
        torch::Tensor ours;
        counted = nn::count_flops(torch::nn::Module(), [&] {
          ours = nn::sparse_conv2d(x, nn::arrange_for_sparse_conv(w), bias, k, stride, padding, relu, samples, residual,
                                   path);
        });
        EXPECT_TRUE(ours.is_contiguous(torch::MemoryFormat::ChannelsLast));
        int64_t macs = 0;
        for (int64_t f = 0; f < n; ++f) {
          const nn::SparseConvSample& s = samples[static_cast<size_t>(f)];
          torch::Tensor in = x[f], weight = w;
          if (!s.all_inputs) {
            std::vector<torch::Tensor> channels;
            for (size_t j = 0; j < s.in_sample.size(); ++j)
              channels.push_back(s.in_sample[j] < 0 ? torch::zeros({9, 7}) : x[s.in_sample[j]][s.in_channel[j]]);
            in = channels.empty() ? torch::zeros({0, 9, 7}) : torch::stack(channels);
            weight = w.index_select(1, torch::tensor(s.in_channel, torch::kLong));
          }
          auto expected = in.size(0) == 0  // (Co, Ho, Wo)
                              ? bias.view({co, 1, 1}).expand({co, ho, wo}).clone()
                              : torch::conv2d(in.unsqueeze(0), weight, bias, stride, padding)[0];
          if (!s.all_outputs) {
            auto only = torch::zeros_like(expected);
            for (int64_t o : s.out) only[o] = expected[o];
            expected = only;
          }
          if (residual.defined()) expected = expected + residual[f];
          if (relu) expected = torch::relu(expected);
          EXPECT_TRUE(AllCloseRelative(ours[f], expected, 1e-5)) << f << " k " << k << " stride " << stride << " path "
                                                                  << static_cast<int>(path);
          macs += expected.size(1) * expected.size(2) * k * k * in.size(0) *
                  (s.all_outputs ? co : static_cast<int64_t>(s.out.size()));
        }
        EXPECT_EQ(counted.total, macs);
      }
  }
  const auto x = torch::randn({4, 6, 9, 7});
  EXPECT_THROW(nn::sparse_conv2d(x, nn::arrange_for_sparse_conv(torch::randn({5, 6, 1, 1})), torch::zeros({5}), 1, 1, 0,
                                 false, std::vector<nn::SparseConvSample>(4)),
               c10::Error);  // not channels-last
}

TEST(Backbones, SmallBatchLinearIsLinear) {
  // Against torch::linear: 1 to 32 rows (one row: its own kernel, four weight rows at a time; more: whole and partial
  // groups of four), inner sizes with and without a tail past the last 8 floats, an odd number of outputs (a last
  // one to three weight rows), with and without bias. Rows past 32 and inputs that ask for a gradient go to
  // torch::linear itself. The FLOPs counter sees the product.
  torch::manual_seed(8);
  torch::NoGradGuard no_grad;
  for (const int64_t m : {1, 3, 4, 7, 16, 18, 32, 33})
    for (const int64_t k : {5, 64, 203})
      for (const bool with_bias : {true, false}) {
        const int64_t n = 37;
        const auto x = torch::randn({m, k}), w = torch::randn({n, k});
        const auto bias = with_bias ? torch::randn({n}) : torch::Tensor();
        torch::Tensor ours;
        const nn::FlopsReport counted =
            nn::count_flops(torch::nn::Module(), [&] { ours = nn::small_batch_linear(x, w, bias); });
        EXPECT_TRUE(AllCloseRelative(ours, torch::linear(x, w, bias), 1e-5)) << m << " " << k;
        EXPECT_EQ(counted.total, m * n * k);
      }
  EXPECT_FALSE(nn::use_small_batch_linear(torch::randn({33, 8}), torch::randn({4, 8})));
  {
    infer::PrecisionGuard bf16(infer::Precision::Bf16);  // autocast's bf16 linear, as everywhere else
    EXPECT_FALSE(nn::use_small_batch_linear(torch::randn({2, 8}), torch::randn({4, 8})));
  }
  EXPECT_FALSE(nn::use_small_batch_linear(torch::randn({2, 4}), torch::randn({4, 4}).t()));  // weight not contiguous
  const auto w8 = torch::randn({8, 8}), x8 = torch::randn({8, 3});  // x not contiguous: its rows copied
  EXPECT_TRUE(AllCloseRelative(nn::small_batch_linear(x8.t(), w8, {}), torch::linear(x8.t(), w8), 1e-5));
  torch::AutoGradMode gradient(true);
  const auto w = torch::randn({4, 8}).requires_grad_();
  EXPECT_FALSE(nn::use_small_batch_linear(torch::randn({2, 8}), w));
  const auto y = nn::small_batch_linear(torch::randn({2, 8}), w, torch::Tensor());
  EXPECT_TRUE(y.requires_grad());  // torch::linear's, with its gradient
}

TEST(Backbones, GruInferenceIsTheGrusForward) {
  // Against torch::nn::GRU's own forward: batch first or not, from zeros or a given state, with and without biases,
  // batch 1 and 5 (the hidden products through small_batch_linear, the path of gru_forward without gradient) and 40
  // (through torch::linear); the FLOPs counted are the GRU's.
  torch::manual_seed(9);
  torch::NoGradGuard no_grad;
  for (const bool batch_first : {true, false})
    for (const bool bias : {true, false})
      for (const int64_t batch : {1, 5, 40}) {
        torch::nn::GRU gru(torch::nn::GRUOptions(12, 19).batch_first(batch_first).bias(bias));
        const int64_t steps = 6;
        const auto x = batch_first ? torch::randn({batch, steps, 12}) : torch::randn({steps, batch, 12});
        ASSERT_TRUE(nn::use_gru_inference(*gru, x));
        for (const bool given : {false, true}) {
          const auto h0 = given ? torch::randn({1, batch, 19}) : torch::Tensor();
          auto [out, last] = gru->forward(x, h0);
          torch::Tensor ours, ours_last;
          const nn::FlopsReport counted =
              nn::count_flops(*gru, [&] { std::tie(ours, ours_last) = nn::gru_forward(*gru, x, h0); });
          const nn::FlopsReport theirs = nn::count_flops(*gru, [&] { gru->forward(x, h0); });
          EXPECT_TRUE(AllCloseRelative(ours, out, 1e-5)) << batch_first << bias << batch << given;
          EXPECT_TRUE(AllCloseRelative(ours_last, last, 1e-5));
          EXPECT_EQ(counted.total, theirs.total);
        }
      }
  torch::nn::GRU two_layers(torch::nn::GRUOptions(4, 4).num_layers(2));
  EXPECT_FALSE(nn::use_gru_inference(*two_layers, torch::randn({3, 2, 4})));
  {
    infer::PrecisionGuard bf16(infer::Precision::Bf16);
    torch::nn::GRU one(torch::nn::GRUOptions(4, 4));
    EXPECT_FALSE(nn::use_gru_inference(*one, torch::randn({3, 2, 4})));  // two sequences: autocast's GRU
    EXPECT_NO_THROW(nn::gru_forward(*one, torch::randn({3, 2, 4}), {}));
  }
  // Under bf16 autocast, one sequence in float here: against the float GRU on the same input (bf16 or float), the
  // outputs in the input's type.
  for (const bool batch_first : {true, false})
    for (const auto type : {torch::kBFloat16, torch::kFloat}) {
      torch::nn::GRU gru(torch::nn::GRUOptions(12, 19).batch_first(batch_first));
      const auto x =
          torch::randn(batch_first ? std::vector<int64_t>{1, 6, 12} : std::vector<int64_t>{6, 1, 12}).to(type);
      const auto h0 = torch::randn({1, 1, 19});
      auto [out, last] = gru->forward(x.to(torch::kFloat), h0);
      infer::PrecisionGuard bf16(infer::Precision::Bf16);
      ASSERT_TRUE(nn::use_gru_inference(*gru, x));
      const auto [ours, ours_last] = nn::gru_forward(*gru, x, h0);
      EXPECT_EQ(ours.scalar_type(), type);
      EXPECT_EQ(ours_last.scalar_type(), type);
      const double tolerance = type == torch::kFloat ? 1e-5 : 4e-3;  // (bf16's rounding of the outputs)
      EXPECT_TRUE(AllCloseRelative(ours, out, tolerance)) << batch_first << type;
      EXPECT_TRUE(AllCloseRelative(ours_last, last, tolerance)) << batch_first << type;
    }
  torch::AutoGradMode gradient(true);
  torch::nn::GRU trained(torch::nn::GRUOptions(4, 4));
  EXPECT_FALSE(nn::use_gru_inference(*trained, torch::randn({3, 2, 4})));  // its weights ask for a gradient
  EXPECT_TRUE(std::get<0>(nn::gru_forward(*trained, torch::randn({3, 2, 4}), {})).requires_grad());  // GRU's own
}

TEST(Backbones, Bf16AutocastRunsInBf16AndRestores) {
  // LibTorch's autocast layers, then the folded network (bf16 weights reordered once, the ReLUs and the block ends
  // fused) against fp32: basic blocks and bottlenecks.
  for (const std::string arch : {"resnet18", "resnet50"}) {
    torch::manual_seed(4);
    auto model = nn::make_backbone(nn::BackboneOptions(arch));
    model->eval();
    const auto x = torch::randn({2, 3, 64, 64});
    torch::NoGradGuard no_grad;
    const auto fp32 = model->forward(x);
    for (const bool folded : {false, true}) {
      if (folded) model->fold_batchnorm();
      torch::Tensor bf16;
      {
        infer::PrecisionGuard guard(infer::Precision::Bf16);
        bf16 = model->forward(x);
      }
      EXPECT_EQ(bf16.scalar_type(), torch::kBFloat16);
      // 8 bits of mantissa through 18 or more layers
      EXPECT_TRUE(AllCloseRelative(bf16.to(torch::kFloat), fp32, 0.05)) << arch << folded;
      EXPECT_EQ(model->forward(x).scalar_type(), torch::kFloat);  // off again after the guard
    }
  }
}

TEST(Precision, Bf16FallsBackToFp32WithoutNativeBf16UnlessEmulationIsAsked) {
  std::string note;
  EXPECT_EQ(infer::resolve_precision("fp32", false, note), infer::Precision::Fp32);
  EXPECT_TRUE(note.empty());
  EXPECT_EQ(infer::resolve_precision("bf16", true, note), infer::Precision::Bf16);
  EXPECT_TRUE(note.empty());
  EXPECT_EQ(infer::resolve_precision("bf16", false, note), infer::Precision::Fp32);
  EXPECT_NE(note.find("running in fp32"), std::string::npos) << note;
  EXPECT_EQ(infer::resolve_precision("bf16-emulated", false, note), infer::Precision::Bf16);
  EXPECT_NE(note.find("emulated"), std::string::npos) << note;
  EXPECT_EQ(infer::resolve_precision("bf16-emulated", true, note), infer::Precision::Bf16);
  EXPECT_TRUE(note.empty());
  EXPECT_THROW(infer::resolve_precision("fp16", true, note), Error);
}

}  // namespace
}  // namespace adafocus
