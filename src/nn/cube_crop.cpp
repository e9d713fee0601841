#include "nn/cube_crop.h"

#include <cmath>
#include <limits>

#include "nn/kernels.h"

namespace adafocus::nn {

namespace {

namespace F = torch::nn::functional;

// Pixel (or frame) position p of a dimension of `size` in grid_sample's coordinates, align_corners=False.
torch::Tensor normalised(const torch::Tensor& p, int64_t size) { return (2.0 * p + 1.0) / static_cast<double>(size) - 1.0; }

}  // namespace

torch::Tensor cube_corners(const torch::Tensor& actions, int64_t height, int64_t width, int64_t frames, int64_t side,
                           int64_t length) {
  TORCH_CHECK(actions.dim() == 3 && actions.size(2) == 3, "cube_corners: actions must be (B, K, 3), got ", actions.sizes());
  TORCH_CHECK(side <= height && side <= width && length <= frames, "cube_corners: a cube of ", length, "x", side, "x",
              side, " does not fit in ", frames, "x", height, "x", width);
  const auto range = torch::tensor({static_cast<double>(height - side), static_cast<double>(width - side),
                                    static_cast<double>(frames - length)},
                                   actions.options());
  return actions * range;  // (B, K, 3)
}

torch::Tensor sample_cubes(const torch::Tensor& clips, const torch::Tensor& corners, int64_t side, int64_t length) {
  TORCH_CHECK(clips.dim() == 5, "sample_cubes: clips must be (B, T, C, H, W), got ", clips.sizes());
  TORCH_CHECK(corners.dim() == 3 && corners.size(0) == clips.size(0) && corners.size(2) == 3,
              "sample_cubes: corners must be (B, K, 3) for B = ", clips.size(0), ", got ", corners.sizes());
  const int64_t b = clips.size(0), frames = clips.size(1), height = clips.size(3), width = clips.size(4),
                k = corners.size(1);
  const auto c = corners.to(clips.dtype());
  if (use_crop_bilinear(clips, corners)) {
    // Whole frames in time (fixed placements, enlarged cubes) need no trilinear sampling: bilinear crops of the
    // frames they cover give the same values (the time weight is 1), 16x faster than the 3-d grid_sample.
    const auto t = c.select(2, 2);
    if (torch::equal(t, torch::round(t)) && t.min().item<double>() >= 0 &&
        t.max().item<double>() + static_cast<double>(length) <= static_cast<double>(frames)) {
      const auto index = (torch::arange(b, torch::kLong).view({b, 1, 1}) * frames + t.to(torch::kLong).unsqueeze(2) +
                          torch::arange(length, torch::kLong).view({1, 1, length}));  // (B, K, L) frame of each crop
      const auto at = c.narrow(2, 0, 2).unsqueeze(2).expand({b, k, length, 2}).reshape({-1, 2});
      const auto crops = crop_bilinear(clips.reshape({b * frames, clips.size(2), height, width}), index.view(-1), at, side);
      return crops.view({b, k, length, clips.size(2), side, side});  // (B, K, L, C, P, P)
    }
  }
  const auto o = c.options();
  const auto l = torch::arange(length, o).view({1, 1, length, 1, 1});
  const auto i = torch::arange(side, o).view({1, 1, 1, side, 1});
  const auto y = c.select(2, 0).view({b, k, 1, 1, 1}) + i, x = c.select(2, 1).view({b, k, 1, 1, 1}) + i.transpose(3, 4),
             t = c.select(2, 2).view({b, k, 1, 1, 1}) + l;
  const std::vector<int64_t> shape{b, k, length, side, side};
  const auto grid = torch::stack({normalised(x, width).expand(shape), normalised(y, height).expand(shape),
                                  normalised(t, frames).expand(shape)},
                                 -1)
                        .view({b, k * length, side, side, 3});
  // Zeros outside the frame: only enlarged cubes reach there.
  const auto out = F::grid_sample(clips.permute({0, 2, 1, 3, 4}), grid,  // input (B, C, T, H, W)
                                  F::GridSampleFuncOptions().mode(torch::kBilinear).padding_mode(torch::kZeros)
                                      .align_corners(false));             // (B, C, K*L, P, P)
  return out.view({b, clips.size(2), k, length, side, side}).permute({0, 2, 3, 1, 4, 5});  // (B, K, L, C, P, P)
}

EnlargedCubes enlarge_cubes(const torch::Tensor& corners, int64_t frames, int64_t side, int64_t length,
                            int64_t stride) {
  TORCH_CHECK(length + 1 <= frames, "enlarge_cubes: an enlarged cube of ", length + 1, " frames does not fit in ",
              frames);
  const auto o = corners.options();
  const auto q = corners.detach();
  EnlargedCubes e;
  // Space: centred on the real cube, half a cell larger on each side (zeros where that leaves the frame), so the real
  // cube sits half a cell in - the paper's fixed offset. Time: whole frames, the first at or before the real one.
  const auto t = torch::clamp(torch::floor(q.narrow(2, 2, 1)), 0, static_cast<double>(frames - length - 1));
  e.corners = torch::cat({q.narrow(2, 0, 2) - stride / 2.0, t}, 2);  // (B, K, 3)
  // Eq. 6: (q - sg(q)) / cell + offset: the value of the offset, the gradient of the position.
  const auto cell = torch::tensor({static_cast<double>(stride), static_cast<double>(stride), 1.0}, o);
  const auto offset = torch::cat({torch::full_like(q.narrow(2, 0, 2), 0.5), q.narrow(2, 2, 1) - t}, 2);
  e.offsets = (corners - q) / cell + offset;
  e.side = side + stride;
  e.length = length + 1;
  return e;
}

torch::Tensor interpolate_cube_features(const torch::Tensor& maps, const torch::Tensor& offsets) {
  TORCH_CHECK(maps.dim() == 5 && maps.size(1) >= 2 && maps.size(3) >= 2 && maps.size(4) >= 2,
              "interpolate_cube_features: maps must be (N, L + 1, C, h + 1, w + 1), got ", maps.sizes());
  TORCH_CHECK(offsets.dim() == 2 && offsets.size(0) == maps.size(0) && offsets.size(1) == 3,
              "interpolate_cube_features: offsets must be (N, 3), got ", offsets.sizes());
  const int64_t n = maps.size(0), length = maps.size(1) - 1, h = maps.size(3) - 1, w = maps.size(4) - 1;
  const auto u = offsets.to(maps.dtype());
  const auto o = u.options();
  // Positions in cells, normalised with align_corners=True: cell index p of a dimension of n + 1 cells -> 2p/n - 1.
  const auto t = (torch::arange(length, o).view({1, length, 1, 1}) + u.select(1, 2).view({n, 1, 1, 1})) * (2.0 / length) - 1.0;
  const auto y = (torch::arange(h, o).view({1, 1, h, 1}) + u.select(1, 0).view({n, 1, 1, 1})) * (2.0 / h) - 1.0;
  const auto x = (torch::arange(w, o).view({1, 1, 1, w}) + u.select(1, 1).view({n, 1, 1, 1})) * (2.0 / w) - 1.0;
  const std::vector<int64_t> shape{n, length, h, w};
  const auto grid = torch::stack({x.expand(shape), y.expand(shape), t.expand(shape)}, -1);  // (N, L, h, w, 3)
  const auto out = F::grid_sample(maps.permute({0, 2, 1, 3, 4}), grid,                    // input (N, C, L+1, h+1, w+1)
                                  F::GridSampleFuncOptions().mode(torch::kBilinear).padding_mode(torch::kBorder)
                                      .align_corners(true));                               // (N, C, L, h, w)
  return out.permute({0, 2, 1, 3, 4});                                                     // (N, L, C, h, w)
}

torch::Tensor assign_frames(const torch::Tensor& times, int64_t frames) {
  TORCH_CHECK(times.dim() == 2 && times.size(1) <= frames, "assign_frames: ", times.size(1), " cubes for ", frames,
              " frames");
  const auto t = times.detach().to(torch::kCPU, torch::kDouble).contiguous();
  auto out = torch::empty(t.sizes(), torch::kLong);
  const double* in = t.data_ptr<double>();
  int64_t* chosen = out.data_ptr<int64_t>();
  for (int64_t b = 0; b < t.size(0); ++b) {
    std::vector<bool> taken(static_cast<size_t>(frames), false);
    for (int64_t k = 0; k < t.size(1); ++k) {
      const double position = in[b * t.size(1) + k];
      int64_t best = -1;
      for (int64_t f = 0; f < frames; ++f)  // ascending: a tie keeps the earlier frame
        if (!taken[static_cast<size_t>(f)] && (best < 0 || std::abs(f - position) < std::abs(best - position))) best = f;
      taken[static_cast<size_t>(best)] = true;
      chosen[b * t.size(1) + k] = best;
    }
  }
  return out.to(times.device());
}

}  // namespace adafocus::nn
