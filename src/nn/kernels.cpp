#include "nn/kernels.h"

#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <algorithm>
#include <cmath>
#include <numeric>

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
