#pragma once
// CPU kernels that LibTorch 1.13 lacks or runs slowly for the benchmark's small networks, each checked against the
// LibTorch operator it replaces (tests/test_backbones.cpp, test_adaptive.cpp) and timed in bench/bench_kernels.cpp.
// Compiled with OpenMP (CMakeLists.txt), so that at::parallel_for uses LibTorch's threads.
//
// Training-mode BatchNorm2d for channels-last float tensors with few channels. LibTorch 1.13's channels-last batch
// norm vectorises over the channels, so with fewer channels than a vector it crawls: forward + backward of (256, 4,
// 32, 32) took 69 ms against 2.5 in NCHW, (256, 8, 64, 64) 91 against 18 (2 threads here, docs/performance.md) - while oneDNN's convolutions on those same small-channel maps are 2.5-4x
// faster in channels-last. This one treats the (N, H, W, C) memory as rows of C and sums blocks of whole rows, so
// the reductions vectorise whatever C is, and keeps every tensor it returns (the output, the input's gradient) in
// channels-last: a gradient in another layout would send the ReLU and addition behind it onto slow mixed-stride paths.
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/rnn.h>

#include <vector>

namespace adafocus::nn {

/// Whether channels_last_batch_norm takes x through bn: training mode, tracked running statistics, float,
/// CPU, 4-d channels-last (and not also NCHW-contiguous) with fewer than 16 channels.
bool use_channels_last_batch_norm(const torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x);

/// bn(x) in training mode - the same values, gradients and running-statistics update as bn.forward(x) (batch
/// statistics, biased variance for normalising, unbiased for running_var, num_batches_tracked counted), computed
/// as described above. Call only where use_channels_last_batch_norm holds.
torch::Tensor channels_last_batch_norm(torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x);

/// Whether crop_bilinear may stand in for grid_sample's crops of `frames` at positions computed from `corners`: CPU
/// floats, no gradient asked of either.
bool use_crop_bilinear(const torch::Tensor& frames, const torch::Tensor& corners);

/// Bilinear crops without gradient: crop n (side x side) of frame index[n] of frames (F, C, H, W), its top-left sample
/// at pixel (corners[n][0], corners[n][1]) (y, x; pixel centres at whole numbers), zeros outside the frame -> (N, C,
/// side, side). The values of grid_sample's bilinear, zero-padded sampling at those points, computed separably: for
/// 256 crops of 56 px the cube cut's 3-d grid_sample took 16 ms, a 2-d one 11, this 1 (docs/performance.md). Float,
/// CPU.
torch::Tensor crop_bilinear(const torch::Tensor& frames, const torch::Tensor& index, const torch::Tensor& corners,
                            int64_t side);

/// The mean of every factor x factor block of frames (N, C, H, W) -> (N, C, H / factor, W / factor): avg_pool2d
/// with kernel = stride = factor (the glance's area resize, 128 -> 32 px on the benchmark), whose NCHW kernel is
/// not vectorised in LibTorch 1.13 (a demo batch: 14 ms, this 5). Float, CPU, no gradient; H and W multiples of
/// factor.
torch::Tensor area_downsample(const torch::Tensor& frames, int64_t factor);

/// Whether shift_copy takes x: CPU, contiguous or channels-last, elements of 1, 2, 4 or 8 bytes, no gradient to carry.
bool use_shift_copy(const torch::Tensor& x);

/// temporal_shift's values (nn/temporal_shift.h: channels [0, fold) of frame t from frame t+1, [fold, 2 fold) from
/// t-1, zeros past each clip of `segments` frames) as one pass of copies in x's own layout: the slices and cat it
/// replaces copy a channels-last map's few shifted channels element by element (bench_kernels: 2-3x as long).
torch::Tensor shift_copy(const torch::Tensor& x, int64_t segments, int64_t fold);

/// y = relu(y + z) in place, in one pass: a residual block's end (at::add_ then at::relu_ read and write the map
/// twice). Ours for CPU floats or bf16 of one size and layout without gradient recording (the same values as the two
/// operators), else those operators. Returns y.
torch::Tensor add_relu_(torch::Tensor y, const torch::Tensor& z);

/// What one sample of sparse_conv2d reads and computes.
struct SparseConvSample {
  bool all_inputs = true;                     ///< read every channel of its own sample (in_* unused)
  std::vector<int64_t> in_sample, in_channel; ///< else input j is channel in_channel[j] of sample in_sample[j]
                                              ///< (in_sample -1: zeros), multiplied by that channel's weights
  bool all_outputs = true;                    ///< compute every output channel (out unused)
  std::vector<int64_t> out;                   ///< else only these output channels; the others are zero
};

/// A convolution's weight (Co, Ci, k, k) arranged for sparse_conv2d: (k * k * Ci, Co), rows in the order (ky, kx,
/// ci) of its im2col columns.
torch::Tensor arrange_for_sparse_conv(const torch::Tensor& weight);

/// How sparse_conv2d computes a sample: BLAS products, the direct kernel (AVX2 or AVX-512), or either by its sizes
/// (Auto).
enum class SparseConvPath { Auto, Products, Direct };

/// Whether this CPU runs sparse_conv2d's direct kernel (AVX2 and FMA).
bool sparse_conv_direct_available();

/// A k x k convolution (stride >= 1, zero padding) of float, channels-last x (N, Ci, H, W) in which every sample
/// reads and computes only the channels `samples` names: per sample the channels it reads (gathered from any sample)
/// and one matrix product (sgemm: oneDNN's where it runs AVX-512, else BLAS's) with the rows and columns of `arranged`
/// (arrange_for_sparse_conv) it needs, over an im2col or, for stride 1 on few channels, over shifted windows of a
/// padded copy; or, for a k > 1 convolution of a sample that reads at most 64 channels on a CPU with AVX2, straight
/// from planar copies of its channels by our own kernel (Auto: by those sizes, per sample) - so that its cost is its
/// own channels' (AdaFuse's gated blocks, where each frame keeps other channels). bias (Co,), then residual (N, Co,
/// Ho, Wo) channels-last if defined (a basic block's shortcut), then ReLU if asked -> (N, Co, Ho, Wo) channels-last,
/// uncomputed outputs zero (before the residual). Samples run in parallel (each product on one thread: OpenBLAS and
/// oneDNN use OpenMP, scripts/install-deps.sh). CPU, no gradient.
torch::Tensor sparse_conv2d(const torch::Tensor& x, const torch::Tensor& arranged, const torch::Tensor& bias,
                            int64_t kernel, int64_t stride, int64_t padding, bool relu,
                            const std::vector<SparseConvSample>& samples, const torch::Tensor& residual = {},
                            SparseConvPath path = SparseConvPath::Auto);

/// Whether small_batch_linear computes linear(x, weight) itself: CPU floats, a contiguous weight, no gradient asked,
/// no bf16 autocast, x (M, K) with M <= 32 rows, and a CPU with AVX2 and FMA (else at::linear does it).
bool use_small_batch_linear(const torch::Tensor& x, const torch::Tensor& weight);

/// x (M, K) weight (N, K) bias (N) or undefined -> x weight^T + bias (M, N), as at::linear. For a few rows (a GRU's
/// step, a classifier at batch 1) at::linear's BLAS packs the whole weight matrix on every call, which takes
/// several times as long as reading it once; this reads each weight row once and takes its dot products with all M
/// rows of x while it is in cache (bench_kernels has both). Falls back to at::linear where use_small_batch_linear
/// does not hold.
torch::Tensor small_batch_linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias);

/// seq.forward(x), its Linear layers through small_batch_linear: the policies' and classifiers' MLPs and heads,
/// which at batch 1 run on one to 18 rows (a video's frames).
torch::Tensor sequential_forward(torch::nn::SequentialImpl& seq, torch::Tensor x);

/// Whether gru_forward takes the streaming path: no gradient asked (no grad mode, or nothing requires one), one
/// layer, one direction, CPU float; under bf16 autocast, a single sequence of float or bf16.
bool use_gru_inference(const torch::nn::GRUImpl& gru, const torch::Tensor& x);

/// gru.forward(x, h0) (h0 (layers, B, H), undefined: zeros) -> (output, last state). Where use_gru_inference holds,
/// computed here: the input products of all steps in one small_batch_linear, each step's hidden product through
/// small_batch_linear (a policy GRU of 2048 units reads 50 MB of weights a step) - the same values to float rounding;
/// in float under bf16 autocast too, the outputs in the input's type.
std::tuple<torch::Tensor, torch::Tensor> gru_forward(torch::nn::GRUImpl& gru, const torch::Tensor& x,
                                                     const torch::Tensor& h0);

}  // namespace adafocus::nn
