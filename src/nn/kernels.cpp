#include "nn/kernels.h"

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <torch/autograd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>

#include <oneapi/dnnl/dnnl.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "nn/flop_counter.h"
#include "nn/fused_conv.h"

namespace adafocus::nn {

// A named namespace: the unity batches put other files' anonymous helpers beside these.
namespace cl_batch_norm {

// The (N, H, W, C) memory is M rows of C floats. Rows are taken in chunks (each chunk's sums in float, the chunks'
// in double: as exact as two-level summation gets, and the same whatever the number of threads); inside a chunk a
// "lane" array of L = lcm(C, 16) floats - whole rows - is summed element-wise, which the compiler vectorises.
constexpr int64_t kChunkRows = 2048;

struct Layout {
  int64_t rows, channels, lanes, chunks;
  explicit Layout(const torch::Tensor& x)
      : rows(x.numel() / x.size(1)), channels(x.size(1)), lanes(std::lcm(x.size(1), int64_t{16})),
        chunks((rows + kChunkRows - 1) / kChunkRows) {}
  // The chunk's floats: [begin, end).
  int64_t begin(int64_t chunk) const { return chunk * kChunkRows * channels; }
  int64_t end(int64_t chunk) const { return std::min(rows, (chunk + 1) * kChunkRows) * channels; }
  // A per-channel array repeated to the lane width.
  std::vector<float> spread(const std::vector<double>& v) const {
    std::vector<float> out(static_cast<size_t>(lanes));
    for (int64_t j = 0; j < lanes; ++j) out[static_cast<size_t>(j)] = static_cast<float>(v[static_cast<size_t>(j % channels)]);
    return out;
  }
};

// Per channel, the sums over all rows of the (one or two) quantities f(i, n, acc0, acc1) adds into acc0[j] and
// acc1[j] for the n floats from i (j: the lane).
template <int kSums, typename F>
std::vector<double> channel_sums(const Layout& l, F f) {
  std::vector<double> partial(static_cast<size_t>(l.chunks * kSums * l.channels), 0.0);
  at::parallel_for(0, l.chunks, 1, [&](int64_t first, int64_t last) {
    std::vector<float> acc(static_cast<size_t>(kSums * l.lanes));
    for (int64_t chunk = first; chunk < last; ++chunk) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      const int64_t b = l.begin(chunk), e = l.end(chunk);
      const int64_t whole = b + (e - b) / l.lanes * l.lanes;
      for (int64_t i = b; i < whole; i += l.lanes) f(i, l.lanes, acc.data(), acc.data() + l.lanes);
      if (whole < e) f(whole, e - whole, acc.data(), acc.data() + l.lanes);  // a last partial block
      double* out = partial.data() + chunk * kSums * l.channels;
      for (int s = 0; s < kSums; ++s)
        for (int64_t j = 0; j < l.lanes; ++j) out[s * l.channels + j % l.channels] += acc[static_cast<size_t>(s * l.lanes + j)];
    }
  });
  std::vector<double> sums(static_cast<size_t>(kSums * l.channels), 0.0);
  for (int64_t chunk = 0; chunk < l.chunks; ++chunk)
    for (size_t k = 0; k < sums.size(); ++k) sums[k] += partial[static_cast<size_t>(chunk) * sums.size() + k];
  return sums;
}

// out[i] = a[i] * ka[lane] + b[i] * kb[lane] + kc[lane] (without the b term when b is null), chunk-parallel.
void affine(const Layout& l, const float* a, const float* b, float* out, const std::vector<float>& ka,
            const std::vector<float>& kb, const std::vector<float>& kc) {
  at::parallel_for(0, l.chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t chunk = first; chunk < last; ++chunk) {
      const int64_t bgn = l.begin(chunk), e = l.end(chunk);
      for (int64_t i = bgn; i < e; i += l.lanes) {
        const int64_t n = std::min(l.lanes, e - i);
        if (b)
          for (int64_t j = 0; j < n; ++j) out[i + j] = a[i + j] * ka[j] + b[i + j] * kb[j] + kc[j];
        else
          for (int64_t j = 0; j < n; ++j) out[i + j] = a[i + j] * ka[j] + kc[j];
      }
    }
  });
}

std::vector<double> to_vector(const torch::Tensor& t) {
  const auto d = t.to(torch::kDouble).contiguous();
  return {d.data_ptr<double>(), d.data_ptr<double>() + d.numel()};
}

torch::Tensor to_tensor(const std::vector<double>& v, const torch::TensorOptions& options) {
  return torch::tensor(v, torch::kDouble).to(options);
}

// y = (x - mean) * invstd * weight + bias with the batch statistics; backward as ATen's batch_norm_backward in
// training mode: dx = weight * invstd * (dy - mean(dy) - (x - mean) * invstd^2 * mean(dy * (x - mean))).
struct ChannelsLastBatchNorm : torch::autograd::Function<ChannelsLastBatchNorm> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& weight,
                               const torch::Tensor& bias, const torch::Tensor& mean, const torch::Tensor& invstd) {
    const Layout l(x);
    const auto m = to_vector(mean), s = to_vector(invstd), w = to_vector(weight), b = to_vector(bias);
    std::vector<double> scale(m.size()), shift(m.size());
    for (size_t c = 0; c < m.size(); ++c) {
      scale[c] = s[c] * w[c];
      shift[c] = b[c] - m[c] * scale[c];
    }
    auto y = torch::empty_like(x, torch::MemoryFormat::ChannelsLast);
    affine(l, x.data_ptr<float>(), nullptr, y.data_ptr<float>(), l.spread(scale), {}, l.spread(shift));
    ctx->save_for_backward({x, weight, mean, invstd});
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto dy = grads[0].contiguous(torch::MemoryFormat::ChannelsLast);
    const Layout l(x);
    const auto m = to_vector(saved[2]), s = to_vector(saved[3]), w = to_vector(saved[1]);
    const std::vector<float> mean_lanes = l.spread(m);
    const float* px = x.data_ptr<float>();
    const float* pdy = dy.data_ptr<float>();
    // Per channel: sum(dy) and sum(dy * (x - mean)).
    const auto sums = channel_sums<2>(l, [&](int64_t i, int64_t n, float* sum_dy, float* sum_dyx) {
      for (int64_t j = 0; j < n; ++j) {
        sum_dy[j] += pdy[i + j];
        sum_dyx[j] += pdy[i + j] * (px[i + j] - mean_lanes[static_cast<size_t>(j)]);
      }
    });
    const int64_t c = l.channels;
    const double count = static_cast<double>(l.rows);
    std::vector<double> ka(static_cast<size_t>(c)), kb(static_cast<size_t>(c)), kc(static_cast<size_t>(c));
    std::vector<double> dweight(static_cast<size_t>(c)), dbias(static_cast<size_t>(c));
    for (size_t k = 0; k < static_cast<size_t>(c); ++k) {
      const double a = w[k] * s[k], mean_dy = sums[k] / count, proj = sums[c + k] / count * s[k] * s[k];
      ka[k] = a;             // dx = a * dy - a * proj * x + a * (proj * mean - mean_dy)
      kb[k] = -a * proj;
      kc[k] = a * (proj * m[k] - mean_dy);
      dweight[k] = sums[c + k] * s[k];
      dbias[k] = sums[k];
    }
    auto dx = torch::empty_like(x, torch::MemoryFormat::ChannelsLast);
    affine(l, pdy, px, dx.data_ptr<float>(), l.spread(ka), l.spread(kb), l.spread(kc));
    const auto opts = saved[1].options();
    return {dx, to_tensor(dweight, opts), to_tensor(dbias, opts), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace cl_batch_norm

bool use_channels_last_batch_norm(const torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x) {
  return bn.is_training() && bn.options.track_running_stats() && bn.options.affine() && x.dim() == 4 &&
         x.size(1) < 16 && x.scalar_type() == torch::kFloat && x.device().is_cpu() &&
         x.is_contiguous(torch::MemoryFormat::ChannelsLast) && !x.is_contiguous();
}

torch::Tensor channels_last_batch_norm(torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x) {
  const cl_batch_norm::Layout l(x);
  const float* px = x.data_ptr<float>();
  // Two passes, as ATen: the mean, then the sum of squared deviations from it.
  const auto sum = cl_batch_norm::channel_sums<1>(l, [&](int64_t i, int64_t n, float* acc, float*) {
    for (int64_t j = 0; j < n; ++j) acc[j] += px[i + j];
  });
  const double count = static_cast<double>(l.rows);
  std::vector<double> mean(sum.size());
  for (size_t k = 0; k < sum.size(); ++k) mean[k] = sum[k] / count;
  const std::vector<float> mean_lanes = l.spread(mean);
  const auto squares = cl_batch_norm::channel_sums<1>(l, [&](int64_t i, int64_t n, float* acc, float*) {
    for (int64_t j = 0; j < n; ++j) {
      const float d = px[i + j] - mean_lanes[static_cast<size_t>(j)];
      acc[j] += d * d;
    }
  });
  std::vector<double> var(sum.size()), invstd(sum.size());
  for (size_t k = 0; k < sum.size(); ++k) {
    var[k] = squares[k] / count;
    invstd[k] = 1.0 / std::sqrt(var[k] + bn.options.eps());
  }
  {  // the running statistics, as BatchNormImplBase::forward and ATen update them
    torch::NoGradGuard no_grad;
    bn.num_batches_tracked += 1;
    const double momentum = bn.options.momentum() ? *bn.options.momentum() : 1.0 / bn.num_batches_tracked.item<double>();
    const auto opts = bn.running_mean.options();
    const double unbiased = count / std::max(count - 1.0, 1.0);
    bn.running_mean.mul_(1 - momentum).add_(cl_batch_norm::to_tensor(mean, opts), momentum);
    bn.running_var.mul_(1 - momentum).add_(cl_batch_norm::to_tensor(var, opts), momentum * unbiased);
  }
  const auto opts = x.options();
  return cl_batch_norm::ChannelsLastBatchNorm::apply(x, bn.weight, bn.bias, cl_batch_norm::to_tensor(mean, opts),
                                                     cl_batch_norm::to_tensor(invstd, opts));
}

bool use_crop_bilinear(const torch::Tensor& frames, const torch::Tensor& corners) {
  return frames.device().is_cpu() && frames.scalar_type() == torch::kFloat &&
         !(torch::GradMode::is_enabled() && (frames.requires_grad() || corners.requires_grad()));
}

torch::Tensor crop_bilinear(const torch::Tensor& frames, const torch::Tensor& index, const torch::Tensor& corners,
                            int64_t side) {
  TORCH_CHECK(frames.dim() == 4 && frames.scalar_type() == torch::kFloat && frames.device().is_cpu(),
              "crop_bilinear: frames must be (F, C, H, W) float on the CPU, got ", frames.sizes());
  const auto src = frames.contiguous();
  const auto idx = index.to(torch::kLong).contiguous();
  const auto at = corners.to(torch::kDouble).contiguous();
  const int64_t n = idx.numel(), channels = src.size(1), height = src.size(2), width = src.size(3);
  TORCH_CHECK(at.sizes() == torch::IntArrayRef({n, 2}), "crop_bilinear: corners must be (", n, ", 2)");
  TORCH_CHECK(n == 0 || (idx.min().item<int64_t>() >= 0 && idx.max().item<int64_t>() < src.size(0)),
              "crop_bilinear: a frame index is outside the ", src.size(0), " frames");
  auto out = torch::empty({n, channels, side, side}, src.options());
  const float* in = src.data_ptr<float>();
  const int64_t* frame = idx.data_ptr<int64_t>();
  const double* corner = at.data_ptr<double>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, n * channels, 1, [&](int64_t first, int64_t last) {
    std::vector<float> row(static_cast<size_t>(side + 1));  // the two source rows blended, columns x0 .. x0 + side
    for (int64_t nc = first; nc < last; ++nc) {
      const int64_t k = nc / channels;
      const float* plane = in + (frame[k] * channels + nc % channels) * height * width;
      const double y = corner[2 * k], x = corner[2 * k + 1];
      const int64_t y0 = static_cast<int64_t>(std::floor(y)), x0 = static_cast<int64_t>(std::floor(x));
      const float fy = static_cast<float>(y - static_cast<double>(y0)), fx = static_cast<float>(x - static_cast<double>(x0));
      // Columns x0 + j inside the frame: j in [lo, hi).
      const int64_t lo = std::clamp<int64_t>(-x0, 0, side + 1), hi = std::clamp<int64_t>(width - x0, lo, side + 1);
      float* o = dst + nc * side * side;
      for (int64_t i = 0; i < side; ++i) {
        const int64_t ya = y0 + i;
        const float* a = ya >= 0 && ya < height ? plane + ya * width + x0 : nullptr;
        const float* b = ya + 1 >= 0 && ya + 1 < height ? plane + (ya + 1) * width + x0 : nullptr;
        std::fill(row.begin(), row.end(), 0.0f);
        if (a)
          for (int64_t j = lo; j < hi; ++j) row[static_cast<size_t>(j)] = (1 - fy) * a[j];
        if (b)
          for (int64_t j = lo; j < hi; ++j) row[static_cast<size_t>(j)] += fy * b[j];
        for (int64_t j = 0; j < side; ++j)
          o[i * side + j] = (1 - fx) * row[static_cast<size_t>(j)] + fx * row[static_cast<size_t>(j + 1)];
      }
    }
  });
  return out;
}

torch::Tensor area_downsample(const torch::Tensor& frames, int64_t factor) {
  TORCH_CHECK(frames.dim() == 4 && frames.scalar_type() == torch::kFloat && frames.device().is_cpu() &&
                  frames.size(2) % factor == 0 && frames.size(3) % factor == 0,
              "area_downsample: frames must be (N, C, H, W) float on the CPU with H and W multiples of ", factor,
              ", got ", frames.sizes());
  const auto src = frames.contiguous();
  const int64_t planes = src.size(0) * src.size(1), height = src.size(2), width = src.size(3);
  const int64_t out_h = height / factor, out_w = width / factor;
  auto out = torch::empty({src.size(0), src.size(1), out_h, out_w}, src.options());
  const float* in = src.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const float scale = 1.0f / static_cast<float>(factor * factor);
  at::parallel_for(0, planes * out_h, 16, [&](int64_t first, int64_t last) {
    std::vector<float> rows(static_cast<size_t>(width));  // the block's rows summed
    for (int64_t r = first; r < last; ++r) {
      const float* p = in + ((r / out_h) * height + (r % out_h) * factor) * width;
      std::copy(p, p + width, rows.begin());
      for (int64_t k = 1; k < factor; ++k)
        for (int64_t x = 0; x < width; ++x) rows[static_cast<size_t>(x)] += p[k * width + x];
      for (int64_t x = 0; x < out_w; ++x) {
        float sum = 0;
        for (int64_t k = 0; k < factor; ++k) sum += rows[static_cast<size_t>(x * factor + k)];
        dst[r * out_w + x] = sum * scale;
      }
    }
  });
  return out;
}

}  // namespace adafocus::nn

namespace adafocus::nn {

namespace {

// Loops the compiler vectorises for the widest instruction set the CPU has (target_clones; reductions by `omp simd`):
// one function for AVX-512 and AVX2 machines. (Each string is one clone, "avx2,fma" would be two; "arch=haswell"
// would be chosen by CPU model, not by its features, and miss AMD's.)
#if defined(__x86_64__)
#define ADAFOCUS_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ADAFOCUS_CLONES
#endif

// Whether this CPU runs our AVX2 + FMA kernels (sparse_conv2d's direct kernel; small_batch_linear, whose portable
// loops were measured only on such CPUs), asked once.
bool cpu_has_avx2_fma() {
#if defined(__x86_64__)
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

// Whether this CPU runs our AVX-512 kernels (sparse_conv2d's direct kernel in 16 lanes), asked once.
bool cpu_has_avx512() {
#if defined(__x86_64__)
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
#else
  return false;
#endif
}

}  // namespace

namespace shift {

// Elements moved as the unsigned integers T of their size. `last`: each frame's pixels copied whole, then their
// shifted channels one at a time over the pixels (pixel by pixel, each range was a call to memmove); else whole
// planes.
template <typename T>
void copy(const T* x, T* y, int64_t frames, int64_t segments, int64_t c, int64_t hw, int64_t fold, bool last) {
  at::parallel_for(0, frames, 1, [&](int64_t first, int64_t end) {
    for (int64_t f = first; f < end; ++f) {
      const int64_t t = f % segments;
      // (channel range, the frame it comes from or -1 for zeros)
      const std::array<std::tuple<int64_t, int64_t, int64_t>, 2> moved{
          std::make_tuple(0, fold, t + 1 < segments ? f + 1 : -1), std::make_tuple(fold, 2 * fold, t > 0 ? f - 1 : -1)};
      if (last) {
        // In blocks of pixels whose rows stay in L1 while their shifted channels are picked out.
        const int64_t block = std::max<int64_t>(1, 4096 / c);
        for (int64_t p0 = 0; p0 < hw; p0 += block) {
          const int64_t p1 = std::min(hw, p0 + block);
          T* out = y + f * hw * c;
          std::copy(x + (f * hw + p0) * c, x + (f * hw + p1) * c, out + p0 * c);
          for (const auto& [a, b, from] : moved)
            for (int64_t k = a; k < b; ++k) {
              if (from < 0) {
                for (int64_t p = p0; p < p1; ++p) out[p * c + k] = T{0};
                continue;
              }
              const T* src = x + from * hw * c + k;
              for (int64_t p = p0; p < p1; ++p) out[p * c + k] = src[p * c];
            }
        }
      } else {
        std::copy(x + (f * c + 2 * fold) * hw, x + (f + 1) * c * hw, y + (f * c + 2 * fold) * hw);
        for (const auto& [a, b, from] : moved) {
          T* to = y + (f * c + a) * hw;
          if (from < 0)
            std::fill(to, to + (b - a) * hw, T{0});
          else
            std::copy(x + (from * c + a) * hw, x + (from * c + b) * hw, to);
        }
      }
    }
  });
}

}  // namespace shift

bool use_shift_copy(const torch::Tensor& x) {
  const int64_t bytes = x.element_size();
  return x.dim() == 4 && x.is_cpu() &&
         (x.is_contiguous() || x.is_contiguous(torch::MemoryFormat::ChannelsLast)) &&
         (bytes == 1 || bytes == 2 || bytes == 4 || bytes == 8) && !(x.requires_grad() && at::GradMode::is_enabled());
}

torch::Tensor shift_copy(const torch::Tensor& x, int64_t segments, int64_t fold) {
  TORCH_CHECK(use_shift_copy(x) && segments > 0 && x.size(0) % segments == 0 && fold >= 0 && 2 * fold <= x.size(1),
              "shift_copy: x ", x.sizes(), " (CPU, contiguous or channels-last, no gradient), ", segments,
              " segments, fold ", fold);
  const bool last = x.is_contiguous(torch::MemoryFormat::ChannelsLast) && !x.is_contiguous();
  auto y = torch::empty_like(x);  // (the same layout)
  auto run = [&](auto element) {
    using T = decltype(element);
    shift::copy(static_cast<const T*>(x.data_ptr()), static_cast<T*>(y.data_ptr()), x.size(0), segments, x.size(1),
                x.size(2) * x.size(3), fold, last);
  };
  switch (x.element_size()) {
    case 1: run(uint8_t{}); break;
    case 2: run(uint16_t{}); break;
    case 4: run(uint32_t{}); break;
    default: run(uint64_t{});
  }
  return y;
}

namespace add_relu {

ADAFOCUS_CLONES void floats(float* y, const float* z, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::max(y[i] + z[i], 0.0f);
}

// Summed in float and rounded once (c10::BFloat16's own conversions), as at::add then at::relu compute it.
ADAFOCUS_CLONES void bf16(c10::BFloat16* y, const c10::BFloat16* z, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    y[i] = c10::BFloat16(std::max(static_cast<float>(y[i]) + static_cast<float>(z[i]), 0.0f));
}

}  // namespace add_relu

torch::Tensor add_relu_(torch::Tensor y, const torch::Tensor& z) {
  const auto layout = y.suggest_memory_format();
  const bool ours = y.is_cpu() && z.is_cpu() && y.sizes() == z.sizes() && y.scalar_type() == z.scalar_type() &&
                    (y.scalar_type() == torch::kFloat || y.scalar_type() == torch::kBFloat16) &&
                    y.is_contiguous(layout) && z.is_contiguous(layout) && !at::GradMode::is_enabled();
  if (!ours) return y.add_(z).relu_();
  at::parallel_for(0, y.numel(), 32768, [&](int64_t first, int64_t last) {
    if (y.scalar_type() == torch::kFloat)
      add_relu::floats(y.data_ptr<float>() + first, z.data_ptr<float>() + first, last - first);
    else
      add_relu::bf16(y.data_ptr<c10::BFloat16>() + first, z.data_ptr<c10::BFloat16>() + first, last - first);
  });
  return y;
}

torch::Tensor arrange_for_sparse_conv(const torch::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == weight.size(3),
              "arrange_for_sparse_conv: expected (Co, Ci, k, k)");
  return weight.permute({2, 3, 1, 0}).reshape({-1, weight.size(0)}).contiguous();  // (k*k*Ci, Co)
}

namespace sparse_conv {

extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc);

// c += a (rows x depth, row-major) x b (depth x cols, row-major), c either rows x cols row-major or, `planar`, its
// transpose (cols x rows, row-major: the rows - pixels - as BLAS's long dimension). BLAS is column-major, a row-major
// matrix its transpose. Single-threaded inside a parallel region (OpenBLAS and oneDNN built with OpenMP).
// Choice: oneDNN's sgemm where it runs AVX-512, OpenBLAS's elsewhere (where it was measured). On an AMD Zen 5 oneDNN's
// took about half OpenBLAS's time at ResNet-50's 128-512 channels (bench_kernels; OpenBLAS ran its AVX2 kernels, as
// that machine's OPENBLAS_CORETYPE=Haswell asked, and its AVX-512 ones took about two thirds).
void matmul_add(int64_t rows, int64_t cols, int64_t depth, const float* a, const float* b, float* c, bool planar) {
  if (!planar && onednn_avx512()) {  // (with oneDNN never planar: kPlanarBelow; its sgemm is row-major)
    dnnl_sgemm('N', 'N', rows, cols, depth, 1.0f, a, depth, b, cols, 1.0f, c, cols);
    return;
  }
  const int r = static_cast<int>(rows), n = static_cast<int>(cols), k = static_cast<int>(depth);
  const float one = 1.0f;
  if (planar)
    sgemm_("T", "T", &r, &n, &k, &one, a, &k, b, &n, &one, c, &r);
  else
    sgemm_("N", "N", &n, &r, &k, &one, b, &n, a, &k, &one, c, &n);
}

// Below this many output channels a sample's product runs planar with OpenBLAS: its float micro-kernel spans 16 of
// its long dimension and 6 of the other (Haswell and later), so the few channels of a gated block would fill a
// fraction of it, where the pixels fill it whole. oneDNN's sgemm took 0.3-0.8x as long on the pixel-major product at
// ResNet-50's sizes and most of the demo's (bench_kernels: the bottleneck conv1 at 56 px, 22 outputs, 2x faster), so
// never there (at 8 channels of 64 px 2-3x as long, but Auto gives those to the direct kernel).
constexpr int64_t kPlanarBelow = 32;
// Below this many input channels a stride-1 convolution runs as one product per tap on a shifted window of a padded
// copy of the input, not on an im2col: the im2col of a few channels copies a few floats per tap and pixel, which took
// longer than the products (the demo's 8-channel layers).
constexpr int64_t kShiftedBelow = 16;
// Auto takes the direct kernel (below) for a k > 1 convolution of a sample that reads at most this many channels.
constexpr int64_t kDirectUpTo = 64;

// The k x k patches of in (H, W, C) as rows (Ho*Wo, k*k*C), in (ky, kx, c) order; outside the map: zeros.
void im2col(const float* in, int64_t h, int64_t w, int64_t c, int64_t k, int64_t stride, int64_t padding, int64_t ho,
            int64_t wo, float* cols) {
  for (int64_t oy = 0; oy < ho; ++oy)
    for (int64_t ox = 0; ox < wo; ++ox) {
      float* row = cols + (oy * wo + ox) * k * k * c;
      for (int64_t ky = 0; ky < k; ++ky) {
        const int64_t iy = oy * stride - padding + ky;
        for (int64_t kx = 0; kx < k; ++kx, row += c) {
          const int64_t ix = ox * stride - padding + kx;
          if (iy < 0 || iy >= h || ix < 0 || ix >= w)
            std::fill(row, row + c, 0.0f);
          else
            std::copy(in + (iy * w + ix) * c, in + (iy * w + ix + 1) * c, row);
        }
      }
    }
}

// The direct kernel: each sample's convolution straight from a planar copy of the channels it reads, vectorised over
// the output pixels - the few channels of the demo's gated blocks (8-64, of which a frame reads or computes a fifth)
// made BLAS products of 1-20 columns, which ran at a fraction of its rate. The input is copied zero-padded into
// stride x stride phase planes per channel (padded pixel (y, x) to plane (y % s, x % s) at (y / s, x / s)), so that
// tap (ky, kx) of every output of a row-major grid of `width` columns (the first wo of each row are the outputs) reads
// one contiguous window of one plane, at offset (ky / s) * width + kx / s.
struct Direct {
  // output pixels a tile (three vectors: 48 with AVX-512, else 24), phase plane width, grid pixels (rounded up to
  // tiles), floats a plane
  int64_t stride, kernel, tile, width, grid, plane;
  Direct(int64_t h, int64_t w, int64_t k, int64_t s, int64_t p, int64_t ho)
      : stride(s), kernel(k), tile(cpu_has_avx512() ? 48 : 24) {
    width = (w + 2 * p + s - 1) / s;
    grid = (ho * width + tile - 1) / tile * tile;
    const int64_t reach = (k - 1) / s * width + (k - 1) / s;  // the farthest tap's offset
    plane = std::max((h + 2 * p + s - 1) / s * width, grid + reach);
  }
  // Where tap t of input channel c starts, for the tiles to read from.
  int64_t offset(int64_t c, int64_t t) const {
    const int64_t ky = t / kernel, kx = t % kernel;
    return (c * stride * stride + ky % stride * stride + kx % stride) * plane + ky / stride * width + kx / stride;
  }
};

#if defined(__x86_64__)
// acc rows o < OB (row stride ld), grid pixels [g, g + 24): sum over d of w[d * OB + o] * planes[offsets[d] + g + i].
template <int OB>
__attribute__((target("avx2,fma"))) void direct_tile(const float* planes, const int64_t* offsets, int64_t depth,
                                                     const float* w, float* acc, int64_t ld, int64_t g) {
  __m256 a[OB][3];
#pragma GCC unroll 4
  for (int o = 0; o < OB; ++o) a[o][0] = a[o][1] = a[o][2] = _mm256_setzero_ps();
  for (int64_t d = 0; d < depth; ++d) {
    const float* in = planes + offsets[d] + g;
    const __m256 v0 = _mm256_loadu_ps(in), v1 = _mm256_loadu_ps(in + 8), v2 = _mm256_loadu_ps(in + 16);
#pragma GCC unroll 4
    for (int o = 0; o < OB; ++o) {
      const __m256 wv = _mm256_broadcast_ss(w + d * OB + o);
      a[o][0] = _mm256_fmadd_ps(wv, v0, a[o][0]);
      a[o][1] = _mm256_fmadd_ps(wv, v1, a[o][1]);
      a[o][2] = _mm256_fmadd_ps(wv, v2, a[o][2]);
    }
  }
#pragma GCC unroll 4
  for (int o = 0; o < OB; ++o)
    for (int r = 0; r < 3; ++r) _mm256_storeu_ps(acc + o * ld + g + 8 * r, a[o][r]);
}

// The same in 16 lanes, grid pixels [g, g + 48), up to 8 outputs: 24 accumulators of AVX-512's 32 registers, each
// input vector loaded once for twice as many outputs as with AVX2's 16.
template <int OB>
__attribute__((target("avx512f"))) void direct_tile16(const float* planes, const int64_t* offsets, int64_t depth,
                                                      const float* w, float* acc, int64_t ld, int64_t g) {
  __m512 a[OB][3];
#pragma GCC unroll 8
  for (int o = 0; o < OB; ++o) a[o][0] = a[o][1] = a[o][2] = _mm512_setzero_ps();
  for (int64_t d = 0; d < depth; ++d) {
    const float* in = planes + offsets[d] + g;
    const __m512 v0 = _mm512_loadu_ps(in), v1 = _mm512_loadu_ps(in + 16), v2 = _mm512_loadu_ps(in + 32);
#pragma GCC unroll 8
    for (int o = 0; o < OB; ++o) {
      const __m512 wv = _mm512_set1_ps(w[d * OB + o]);
      a[o][0] = _mm512_fmadd_ps(wv, v0, a[o][0]);
      a[o][1] = _mm512_fmadd_ps(wv, v1, a[o][1]);
      a[o][2] = _mm512_fmadd_ps(wv, v2, a[o][2]);
    }
  }
#pragma GCC unroll 8
  for (int o = 0; o < OB; ++o)
    for (int r = 0; r < 3; ++r) _mm512_storeu_ps(acc + o * ld + g + 16 * r, a[o][r]);
}

using DirectTile = void (*)(const float*, const int64_t*, int64_t, const float*, float*, int64_t, int64_t);

// The tile function for `block` outputs (a power of two up to 8 with 48-pixel tiles, 4 with 24).
DirectTile direct_tiles(int64_t tile, int64_t block) {
  if (tile == 48)
    return block == 8   ? direct_tile16<8>
           : block == 4 ? direct_tile16<4>
           : block == 2 ? direct_tile16<2>
                        : direct_tile16<1>;
  return block == 4 ? direct_tile<4> : block == 2 ? direct_tile<2> : direct_tile<1>;
}
#endif

// The convolution's sizes, and its input and weights.
struct Conv {
  int64_t ci, h, w, co, kernel, stride, padding, ho, wo;
  const float* weights;  // arranged (k * k * ci, co)
};

// What one sample reads and computes: input j is channel in[j] of the map at sources[j] (nullptr: zeros; its pixels
// ci floats apart), output o is channel out[o]. `whole`: the sample's own map when it reads all its channels in order.
struct Sample {
  const float* whole = nullptr;
  std::vector<const float*> sources;
  std::vector<int64_t> in, out;
  bool all_outputs = true;
};

// Buffers a thread reuses across its samples.
struct Scratch {
  std::vector<float> gathered, padded, cols, weights, acc;
  std::vector<int64_t> offsets;
  std::vector<std::pair<const float*, float*>> reads;
};

// Where the products leave a sample's outputs: planar, acc (out, stride) over a grid of rows of `grid_w` pixels whose
// first wo are the outputs; else acc (ho * grid_w, out).
struct Products {
  bool planar;
  int64_t grid_w, stride;
};

// The direct kernel. `column[x]`: where input column x goes in a row of a plane.
Products direct_products(const Conv& c, const Direct& geometry, const std::vector<int64_t>& column, const Sample& s,
                         Scratch& b) {
  const int64_t cin = static_cast<int64_t>(s.in.size()), cout = static_cast<int64_t>(s.out.size());
  const int64_t taps = c.kernel * c.kernel, depth = taps * cin, phases = c.stride * c.stride;
  b.gathered.assign(static_cast<size_t>(cin * phases * geometry.plane), 0.0f);
  // Row by row, each row's channels in turn: the row stays in L1 while its channels are picked out (a channel of
  // the whole map at a time took 1.5x as long, a pixel at a time as long).
  b.reads.clear();
  for (int64_t j = 0; j < cin; ++j)
    if (const float* src = s.sources[static_cast<size_t>(j)])
      b.reads.emplace_back(src, b.gathered.data() + j * phases * geometry.plane);
  for (int64_t y0 = 0; y0 < c.h; ++y0) {
    const int64_t py = y0 + c.padding;
    const int64_t row = py % c.stride * c.stride * geometry.plane + py / c.stride * geometry.width;
    for (const auto& [src, dst] : b.reads) {
      const float* from = src + y0 * c.w * c.ci;
      float* to = dst + row;
      for (int64_t x0 = 0; x0 < c.w; ++x0) to[column[static_cast<size_t>(x0)]] = from[x0 * c.ci];
    }
  }
  b.offsets.resize(static_cast<size_t>(depth));
  for (int64_t j = 0; j < cin; ++j)
    for (int64_t t = 0; t < taps; ++t) b.offsets[static_cast<size_t>(j * taps + t)] = geometry.offset(j, t);
  if (depth > 0)  // (every tile is written)
    b.acc.resize(static_cast<size_t>(cout * geometry.grid));
  else
    b.acc.assign(static_cast<size_t>(cout * geometry.grid), 0.0f);
  // Outputs in blocks of 8 (AVX-512) or 4, then halves; the block's weights (depth, block), depth in (input, tap)
  // order.
  const int64_t widest = geometry.tile == 48 ? 8 : 4;
  for (int64_t o0 = 0, block = widest; o0 < cout && depth > 0; o0 += block) {
    for (block = widest; block > cout - o0;) block /= 2;
    b.weights.resize(static_cast<size_t>(depth * block));
    for (int64_t j = 0; j < cin; ++j)
      for (int64_t t = 0; t < taps; ++t)
        for (int64_t o = 0; o < block; ++o)
          b.weights[static_cast<size_t>((j * taps + t) * block + o)] =
              c.weights[(t * c.ci + s.in[static_cast<size_t>(j)]) * c.co + s.out[static_cast<size_t>(o0 + o)]];
    float* rows = b.acc.data() + o0 * geometry.grid;
#if defined(__x86_64__)
    const DirectTile tiles = direct_tiles(geometry.tile, block);
    for (int64_t g = 0; g < geometry.grid; g += geometry.tile)
      tiles(b.gathered.data(), b.offsets.data(), depth, b.weights.data(), rows, geometry.grid, g);
#endif
  }
  return {true, geometry.width, geometry.grid};
}

// BLAS: one product of the sample's im2col (or its input, 1x1) with its rows and columns of the weights or, for
// stride 1 on few channels, one per tap over shifted windows of a padded copy.
Products blas_products(const Conv& c, const Sample& s, Scratch& b) {
  const int64_t cin = static_cast<int64_t>(s.in.size()), cout = static_cast<int64_t>(s.out.size());
  const int64_t taps = c.kernel * c.kernel, depth = taps * cin, hw = c.h * c.w, hwo = c.ho * c.wo;
  // The input it reads, (H*W, cin).
  const float* in = s.whole;
  if (!in) {
    b.gathered.resize(static_cast<size_t>(hw * cin));
    for (int64_t j = 0; j < cin; ++j) {
      const float* src = s.sources[static_cast<size_t>(j)];
      for (int64_t p = 0; p < hw; ++p) b.gathered[static_cast<size_t>(p * cin + j)] = src ? src[p * c.ci] : 0.0f;
    }
    in = b.gathered.data();
  }
  // Its weights, (depth, cout): the rows of the channels it reads, the columns of those it computes.
  const float* weights = c.weights;
  if (!s.whole || !s.all_outputs) {
    b.weights.resize(static_cast<size_t>(depth * cout));
    for (int64_t t = 0; t < taps; ++t)
      for (int64_t j = 0; j < cin; ++j) {
        const float* row = c.weights + (t * c.ci + s.in[static_cast<size_t>(j)]) * c.co;
        float* dst = b.weights.data() + (t * cin + j) * cout;
        if (s.all_outputs)
          std::copy(row, row + c.co, dst);
        else
          for (int64_t o = 0; o < cout; ++o) dst[o] = row[s.out[static_cast<size_t>(o)]];
      }
    weights = b.weights.data();
  }
  const bool planar = cout < kPlanarBelow && !onednn_avx512();
  if (c.stride == 1 && c.kernel > 1 && cin > 0 && cin < kShiftedBelow) {
    // Tap (ky, kx) of output (oy, ox) reads padded pixel (oy + ky, ox + kx): with rows of the padded width pw, the
    // window of every output is one contiguous block at offset ky * pw + kx (a row's last k - 1 are not outputs;
    // k - 1 more zero pixels at the end keep the last window inside).
    const int64_t pw = c.w + 2 * c.padding;
    b.padded.assign(static_cast<size_t>(((c.h + 2 * c.padding) * pw + c.kernel - 1) * cin), 0.0f);
    for (int64_t y0 = 0; y0 < c.h; ++y0)
      std::copy(in + y0 * c.w * cin, in + (y0 + 1) * c.w * cin,
                b.padded.data() + ((y0 + c.padding) * pw + c.padding) * cin);
    b.acc.assign(static_cast<size_t>(c.ho * pw * cout), 0.0f);
    for (int64_t t = 0; t < taps; ++t)
      matmul_add(c.ho * pw, cout, cin, b.padded.data() + ((t / c.kernel) * pw + t % c.kernel) * cin,
                 weights + t * cin * cout, b.acc.data(), planar);
    return {planar, pw, c.ho * pw};
  }
  const float* a = in;
  if (c.kernel != 1 || c.stride != 1 || c.padding != 0) {  // (else the input is its own im2col)
    b.cols.resize(static_cast<size_t>(hwo * depth));
    im2col(in, c.h, c.w, cin, c.kernel, c.stride, c.padding, c.ho, c.wo, b.cols.data());
    a = b.cols.data();
  }
  b.acc.assign(static_cast<size_t>(hwo * cout), 0.0f);
  if (depth > 0) matmul_add(hwo, cout, depth, a, weights, b.acc.data(), planar);
  return {planar, c.wo, hwo};
}

}  // namespace sparse_conv

bool sparse_conv_direct_available() { return cpu_has_avx2_fma(); }

torch::Tensor sparse_conv2d(const torch::Tensor& x, const torch::Tensor& arranged, const torch::Tensor& bias,
                            int64_t kernel, int64_t stride, int64_t padding, bool relu,
                            const std::vector<SparseConvSample>& samples, const torch::Tensor& residual,
                            SparseConvPath path) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == torch::kFloat && x.device().is_cpu() &&
                  x.is_contiguous(torch::MemoryFormat::ChannelsLast),
              "sparse_conv2d: x must be (N, C, H, W) float, channels-last, on the CPU, got ", x.sizes());
  const int64_t n = x.size(0), ci = x.size(1), h = x.size(2), w = x.size(3);
  TORCH_CHECK(arranged.dim() == 2 && arranged.size(0) == kernel * kernel * ci && arranged.is_contiguous() &&
                  bias.dim() == 1 && bias.size(0) == arranged.size(1) && bias.is_contiguous() &&
                  static_cast<int64_t>(samples.size()) == n,
              "sparse_conv2d: weights ", arranged.sizes(), " and bias ", bias.sizes(), " do not fit ", ci,
              " input channels, k ", kernel, ", or not one sample description per sample");
  TORCH_CHECK(kernel >= 1 && stride >= 1 && padding >= 0, "sparse_conv2d: kernel ", kernel, ", stride ", stride,
              ", padding ", padding);
  const int64_t co = arranged.size(1), taps = kernel * kernel;
  const int64_t ho = (h + 2 * padding - kernel) / stride + 1, wo = (w + 2 * padding - kernel) / stride + 1;
  TORCH_CHECK(!residual.defined() ||
                  (residual.sizes() == torch::IntArrayRef{n, co, ho, wo} && residual.scalar_type() == torch::kFloat &&
                   residual.device().is_cpu() && residual.is_contiguous(torch::MemoryFormat::ChannelsLast)),
              "sparse_conv2d: the residual must be (", n, ", ", co, ", ", ho, ", ", wo,
              ") float, channels-last, on the CPU, got ", residual.sizes());
  const float* rp = residual.defined() ? residual.data_ptr<float>() : nullptr;
  const int64_t hw = h * w, hwo = ho * wo;
  for (const SparseConvSample& s : samples) {
    TORCH_CHECK(s.all_inputs || s.in_sample.size() == s.in_channel.size(),
                "sparse_conv2d: in_sample and in_channel differ in length");
    for (size_t j = 0; !s.all_inputs && j < s.in_sample.size(); ++j)
      TORCH_CHECK(s.in_sample[j] >= -1 && s.in_sample[j] < n && s.in_channel[j] >= 0 && s.in_channel[j] < ci,
                  "sparse_conv2d: input (", s.in_sample[j], ", ", s.in_channel[j], ") outside ", n, " x ", ci);
    for (int64_t o : s.out)
      TORCH_CHECK(s.all_outputs || (o >= 0 && o < co), "sparse_conv2d: output ", o, " outside ", co);
  }
  // Each sample's channels read times channels computed: its product's size (per output pixel and tap).
  std::vector<int64_t> cost(static_cast<size_t>(n));
  for (int64_t f = 0; f < n; ++f) {
    const SparseConvSample& s = samples[static_cast<size_t>(f)];
    cost[static_cast<size_t>(f)] = (s.all_inputs ? ci : static_cast<int64_t>(s.in_channel.size())) *
                                   (s.all_outputs ? co : static_cast<int64_t>(s.out.size()));
  }
  count_kernel("sparse_conv2d", {n, co, ho, wo}, hwo * taps * std::accumulate(cost.begin(), cost.end(), int64_t{0}));
  auto y = torch::empty({n, co, ho, wo}, x.options().memory_format(torch::MemoryFormat::ChannelsLast));
  const float *xp = x.data_ptr<float>(), *wp = arranged.data_ptr<float>(), *bp = bias.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const bool direct_runs = sparse_conv_direct_available();
  TORCH_CHECK(path != SparseConvPath::Direct || direct_runs,
              "sparse_conv2d: the direct kernel needs a CPU with AVX2 and FMA");
  const sparse_conv::Conv conv{ci, h, w, co, kernel, stride, padding, ho, wo, wp};
  const sparse_conv::Direct geometry(h, w, kernel, stride, padding, ho);
  std::vector<int64_t> column(static_cast<size_t>(w));  // the direct kernel: where input column x goes in a plane row
  for (int64_t x0 = 0; x0 < w; ++x0)
    column[static_cast<size_t>(x0)] = (x0 + padding) % stride * geometry.plane + (x0 + padding) / stride;
  // Choice: samples dealt to the threads by the size of their products, each, largest first, to the least loaded one -
  // not in runs of consecutive samples, as each frame's gates give it a size of its own. dealt: thread t's samples
  // at [start[t], start[t + 1]).
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), n);
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return cost[a] > cost[b]; });
  std::vector<std::vector<int64_t>> to_thread(static_cast<size_t>(threads));
  std::vector<int64_t> load(static_cast<size_t>(threads));
  for (const int64_t f : order) {
    const auto least = static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    to_thread[least].push_back(f);
    load[least] += cost[static_cast<size_t>(f)] + 1;
  }
  std::vector<int64_t> dealt, start{0};
  for (const auto& mine : to_thread) {
    dealt.insert(dealt.end(), mine.begin(), mine.end());
    start.push_back(static_cast<int64_t>(dealt.size()));
  }
  at::parallel_for(0, threads, 1, [&](int64_t first, int64_t last) {
    sparse_conv::Scratch scratch;  // reused across this thread's samples
    sparse_conv::Sample one;
    for (int64_t i = start[static_cast<size_t>(first)]; i < start[static_cast<size_t>(last)]; ++i) {
      const int64_t f = dealt[static_cast<size_t>(i)];
      const SparseConvSample& s = samples[static_cast<size_t>(f)];
      one.whole = s.all_inputs ? xp + f * hw * ci : nullptr;
      one.all_outputs = s.all_outputs;
      one.in.clear(), one.sources.clear(), one.out.clear();
      for (int64_t j = 0, cin = s.all_inputs ? ci : static_cast<int64_t>(s.in_channel.size()); j < cin; ++j) {
        const int64_t from = s.all_inputs ? f : s.in_sample[static_cast<size_t>(j)];
        one.in.push_back(s.all_inputs ? j : s.in_channel[static_cast<size_t>(j)]);
        one.sources.push_back(from < 0 ? nullptr : xp + from * hw * ci + one.in.back());
      }
      if (s.all_outputs)
        for (int64_t o = 0; o < co; ++o) one.out.push_back(o);
      else
        one.out = s.out;
      const int64_t cin = static_cast<int64_t>(one.in.size()), cout = static_cast<int64_t>(one.out.size());
      float* yf = yp + f * hwo * co;
      if (cout > 0) {
        // Auto: the direct kernel where it reuses each input over several taps and reads few channels (bench_kernels:
        // a 3x3 convolution reading up to 64 channels took 0.3-1x the products' time, reading 95 or more up to 1.7x as
        // long; a 1x1 one reading ResNet-50's 256-2048 channels 2x as long: its input is BLAS's operand as it is).
        const bool direct = path == SparseConvPath::Direct ||
                            (path == SparseConvPath::Auto && direct_runs && kernel > 1 &&
                             cin <= sparse_conv::kDirectUpTo);
        const sparse_conv::Products p = direct ? sparse_conv::direct_products(conv, geometry, column, one, scratch)
                                               : sparse_conv::blas_products(conv, one, scratch);
        // + bias, ReLU if asked and no residual follows, into its output channels (the others zero); each layout
        // read in its own order.
        if (!s.all_outputs) std::fill(yf, yf + hwo * co, 0.0f);
        const bool relu_now = relu && !rp;
        const float* acc = scratch.acc.data();
        if (p.planar) {  // row by row, each row's channels in turn (the row stays in L1)
          for (int64_t oy = 0; oy < ho; ++oy)
            for (int64_t o = 0; o < cout; ++o) {
              const int64_t c = one.out[static_cast<size_t>(o)];
              const float* from = acc + o * p.stride + oy * p.grid_w;
              float* to = yf + oy * wo * co + c;
              if (relu_now)
                for (int64_t ox = 0; ox < wo; ++ox) to[ox * co] = std::max(from[ox] + bp[c], 0.0f);
              else
                for (int64_t ox = 0; ox < wo; ++ox) to[ox * co] = from[ox] + bp[c];
            }
        } else {
          for (int64_t oy = 0; oy < ho; ++oy)
            for (int64_t ox = 0; ox < wo; ++ox) {
              const float* from = acc + (oy * p.grid_w + ox) * cout;
              float* to = yf + (oy * wo + ox) * co;
              for (int64_t o = 0; o < cout; ++o) {
                const int64_t c = one.out[static_cast<size_t>(o)];
                to[c] = relu_now ? std::max(from[o] + bp[c], 0.0f) : from[o] + bp[c];
              }
            }
        }
      } else {
        std::fill(yf, yf + hwo * co, 0.0f);
      }
      // The residual, then the ReLU, over the sample's whole output (hot in cache).
      if (rp) {
        const float* r = rp + f * hwo * co;
        if (relu)
          for (int64_t i = 0; i < hwo * co; ++i) yf[i] = std::max(yf[i] + r[i], 0.0f);
        else
          for (int64_t i = 0; i < hwo * co; ++i) yf[i] += r[i];
      }
    }
  });
  return y;
}

namespace small_linear {

constexpr int64_t kMaxRows = 32;

// out[n] = bias[n] + x . w[n] for one row x and the weight rows n in [n0, n1), four weight rows at a time: a step of
// a recurrence at batch 1 (AdaFocusV2's GRU reads 50 MB of weights a step), bound by reading the weights, which
// rows() below would slow by computing its one row of x four times.
ADAFOCUS_CLONES void one_row(const float* x, int64_t k_size, const float* w, const float* bias, float* out, int64_t n0,
                             int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    const float *w0 = w + n * k_size, *w1 = w0 + k_size, *w2 = w1 + k_size, *w3 = w2 + k_size;
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t k = 0; k < k_size; ++k) s0 += w0[k] * x[k], s1 += w1[k] * x[k], s2 += w2[k] * x[k], s3 += w3[k] * x[k];
    const float sums[4] = {s0, s1, s2, s3};
    for (int64_t i = 0; i < 4; ++i) out[n + i] = sums[i] + (bias ? bias[n + i] : 0.0f);
  }
  for (; n < n1; ++n) {
    const float* w0 = w + n * k_size;
    float s0 = 0;
#pragma omp simd reduction(+ : s0)
    for (int64_t k = 0; k < k_size; ++k) s0 += w0[k] * x[k];
    out[n] = s0 + (bias ? bias[n] : 0.0f);
  }
}

// out[m][n] = bias[n] + x[m] . w[n] for the m_rows rows of x and the weight rows n in [n0, n1): blocks of four weight
// rows by four rows of x (16 sums), so each weight row is read from memory once and each load feeds four products;
// rows of x past the last repeat it (computed, not stored); a last one to three weight rows one row of x at a time.
ADAFOCUS_CLONES void rows(const float* x, int64_t m_rows, int64_t k_size, const float* w, const float* bias,
                          float* out, int64_t n_size, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    const float *w0 = w + n * k_size, *w1 = w0 + k_size, *w2 = w1 + k_size, *w3 = w2 + k_size;
    for (int64_t m = 0; m < m_rows; m += 4) {
      const float* x0 = x + m * k_size;
      const float* x1 = x + std::min(m + 1, m_rows - 1) * k_size;
      const float* x2 = x + std::min(m + 2, m_rows - 1) * k_size;
      const float* x3 = x + std::min(m + 3, m_rows - 1) * k_size;
      float s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
      float s20 = 0, s21 = 0, s22 = 0, s23 = 0, s30 = 0, s31 = 0, s32 = 0, s33 = 0;
#pragma omp simd reduction(+ : s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, s22, s23, s30, s31, s32, s33)
      for (int64_t k = 0; k < k_size; ++k) {
        const float a0 = w0[k], a1 = w1[k], a2 = w2[k], a3 = w3[k];
        s00 += a0 * x0[k], s01 += a1 * x0[k], s02 += a2 * x0[k], s03 += a3 * x0[k];
        s10 += a0 * x1[k], s11 += a1 * x1[k], s12 += a2 * x1[k], s13 += a3 * x1[k];
        s20 += a0 * x2[k], s21 += a1 * x2[k], s22 += a2 * x2[k], s23 += a3 * x2[k];
        s30 += a0 * x3[k], s31 += a1 * x3[k], s32 += a2 * x3[k], s33 += a3 * x3[k];
      }
      const float sums[4][4] = {{s00, s01, s02, s03}, {s10, s11, s12, s13}, {s20, s21, s22, s23}, {s30, s31, s32, s33}};
      for (int64_t i = 0; i < std::min<int64_t>(4, m_rows - m); ++i)
        for (int64_t j = 0; j < 4; ++j) out[(m + i) * n_size + n + j] = sums[i][j] + (bias ? bias[n + j] : 0.0f);
    }
  }
  for (int64_t m = 0; m < m_rows; ++m) one_row(x + m * k_size, k_size, w, bias, out + m * n_size, n, n1);
}

bool no_gradient(std::initializer_list<const torch::Tensor*> tensors) {
  if (!at::GradMode::is_enabled()) return true;
  for (const auto* t : tensors)
    if (t->defined() && t->requires_grad()) return false;
  return true;
}

}  // namespace small_linear

bool use_small_batch_linear(const torch::Tensor& x, const torch::Tensor& weight) {
  // (under bf16 autocast, at::linear: autocast runs it in bf16)
  return cpu_has_avx2_fma() && !at::autocast::is_cpu_enabled() && x.dim() == 2 && weight.dim() == 2 &&
         x.size(0) >= 1 && x.size(0) <= small_linear::kMaxRows && x.size(1) == weight.size(1) && x.is_cpu() &&
         weight.is_cpu() && x.scalar_type() == torch::kFloat && weight.scalar_type() == torch::kFloat &&
         weight.is_contiguous() && small_linear::no_gradient({&x, &weight});
}

torch::Tensor small_batch_linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
  const bool plain_bias = !bias.defined() || (bias.dim() == 1 && bias.size(0) == weight.size(0) && bias.is_cpu() &&
                                              bias.scalar_type() == torch::kFloat && bias.is_contiguous() &&
                                              small_linear::no_gradient({&bias}));
  if (!plain_bias || !use_small_batch_linear(x, weight)) return torch::linear(x, weight, bias);
  const int64_t m = x.size(0), k = x.size(1), n = weight.size(0);
  const auto rows = x.contiguous();  // (a few rows: a step of a sequence, say)
  auto out = torch::empty({m, n}, x.options());
  const float* b = bias.defined() ? bias.data_ptr<float>() : nullptr;
  // Blocks of four weight rows in parallel, each thread at least ~256 KB of weights.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(k, 1));
  at::parallel_for(0, (n + 3) / 4, grain, [&](int64_t first, int64_t last) {
    const int64_t n0 = 4 * first, n1 = std::min(n, 4 * last);
    if (m == 1)
      small_linear::one_row(rows.data_ptr<float>(), k, weight.data_ptr<float>(), b, out.data_ptr<float>(), n0, n1);
    else
      small_linear::rows(rows.data_ptr<float>(), m, k, weight.data_ptr<float>(), b, out.data_ptr<float>(), n, n0, n1);
  });
  count_kernel("linear", {m, n}, m * n * k);
  return out;
}

torch::Tensor sequential_forward(torch::nn::SequentialImpl& seq, torch::Tensor x) {
  for (auto& module : seq) {
    auto* linear = module.ptr()->as<torch::nn::Linear>();  // (any other shape: small_batch_linear's torch::linear)
    x = linear ? small_batch_linear(x, linear->weight, linear->bias) : module.forward(x);
  }
  return x;
}

bool use_gru_inference(const torch::nn::GRUImpl& gru, const torch::Tensor& x) {
  const auto& o = gru.options;
  if (o.num_layers() != 1 || o.bidirectional() || x.dim() != 3 || !x.is_cpu() || x.size(2) != o.input_size())
    return false;
  // Choice: under bf16 autocast, a single sequence (a policy at batch 1) in float here, where autocast's own GRU (bf16
  // on float weights it converts on every call) took as long or longer (bench_kernels, V2's profile); on batches
  // autocast's, which took half as long as this.
  const bool autocast = at::autocast::is_cpu_enabled();
  if (autocast ? (at::autocast::get_autocast_cpu_dtype() != torch::kBFloat16 || x.size(o.batch_first() ? 0 : 1) != 1 ||
                  (x.scalar_type() != torch::kFloat && x.scalar_type() != torch::kBFloat16))
               : x.scalar_type() != torch::kFloat)
    return false;
  const auto params = gru.named_parameters();
  return small_linear::no_gradient({&x, &params["weight_ih_l0"], &params["weight_hh_l0"]});
}

std::tuple<torch::Tensor, torch::Tensor> gru_forward(torch::nn::GRUImpl& gru, const torch::Tensor& x,
                                                     const torch::Tensor& h0) {
  if (!use_gru_inference(gru, x)) return gru.forward(x, h0);
  const auto params = gru.named_parameters();
  const bool bias = gru.options.bias(), batch_first = gru.options.batch_first();
  const int64_t hidden = gru.options.hidden_size();
  const int64_t batch = x.size(batch_first ? 0 : 1), steps = x.size(batch_first ? 1 : 0);
  // In float, autocast off (small_batch_linear would leave the products to its at::linear), the outputs in the
  // input's type (bf16 under autocast, as its GRU gives them).
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  const auto in_type = x.scalar_type();
  const auto xf = x.to(torch::kFloat);
  // The input's products for every step at once: (B, T, 3H) or (T, B, 3H), gates in PyTorch's order r, z, n.
  const auto gi = small_batch_linear(xf.reshape({-1, x.size(2)}), params["weight_ih_l0"],
                                     bias ? params["bias_ih_l0"] : torch::Tensor());
  const auto w_hh = params["weight_hh_l0"].contiguous();
  const auto b_hh = bias ? params["bias_hh_l0"].contiguous() : torch::Tensor();
  auto h = h0.defined() ? h0.reshape({batch, hidden}).to(torch::kFloat).clone(torch::MemoryFormat::Contiguous)
                        : torch::zeros({batch, hidden}, xf.options());  // (B, H), updated step by step
  auto out = torch::empty(batch_first ? std::vector<int64_t>{batch, steps, hidden}
                                      : std::vector<int64_t>{steps, batch, hidden},
                          xf.options());
  const float* in = gi.data_ptr<float>();
  float* o = out.data_ptr<float>();
  for (int64_t t = 0; t < steps; ++t) {
    const auto gh = small_batch_linear(h, w_hh, b_hh);  // (B, 3H)
    const float* g = gh.data_ptr<float>();
    float* state = h.data_ptr<float>();
    at::parallel_for(0, batch * hidden, 4096, [&](int64_t first, int64_t last) {
      for (int64_t i = first; i < last; ++i) {
        const int64_t b = i / hidden, j = i % hidden;
        const int64_t row = batch_first ? b * steps + t : t * batch + b;
        const float* a = in + row * 3 * hidden;
        const float* c = g + b * 3 * hidden;
        const float r = 1.0f / (1.0f + std::exp(-(a[j] + c[j])));
        const float z = 1.0f / (1.0f + std::exp(-(a[hidden + j] + c[hidden + j])));
        const float n = std::tanh(a[2 * hidden + j] + r * c[2 * hidden + j]);
        state[i] = (1.0f - z) * n + z * state[i];
        o[row * hidden + j] = state[i];
      }
    });
  }
  return {out.to(in_type), h.unsqueeze(0).to(in_type)};
}

}  // namespace adafocus::nn
