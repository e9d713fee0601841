#include "nn/patch_crop.h"

#include "nn/kernels.h"

namespace adafocus::nn {

torch::Tensor crop_patches(const torch::Tensor& images, const torch::Tensor& actions, int64_t patch) {
  TORCH_CHECK(images.dim() == 4, "crop_patches: images must be (N, C, H, W), got ", images.sizes());
  TORCH_CHECK(actions.dim() == 2 && actions.size(1) == 2 && actions.size(0) == images.size(0),
              "crop_patches: actions must be (N, 2) for N = ", images.size(0), ", got ", actions.sizes());
  const int64_t n = images.size(0), h = images.size(2), w = images.size(3);
  TORCH_CHECK(patch > 0 && patch <= h && patch <= w, "crop_patches: patch ", patch, " does not fit in ", h, "x", w);
  // theta maps the patch's normalised coordinates to the image's: scale P/W (P/H), shift to the patch centre.
  const auto a = actions.to(images.dtype());
  const auto y1 = a.select(1, 0) * static_cast<double>(h - patch);  // (N,)
  const auto x1 = a.select(1, 1) * static_cast<double>(w - patch);
  if (use_crop_bilinear(images, actions))
    // Without a gradient, the same bilinear samples at (y1 + i, x1 + j) by one separable crop, which blends each
    // pair of rows once, where affine_grid builds a grid and grid_sample reads it per pixel (about a fifth of V2's
    // LibTorch time outside its convolutions at batch 8).
    return crop_bilinear(images, torch::arange(n), torch::stack({y1, x1}, 1), patch);  // (N, C, P, P)
  const auto zero = torch::zeros({n}, a.options());
  const auto row0 = torch::stack({zero + static_cast<double>(patch) / w, zero, -1.0 + (2.0 * x1 + patch) / w}, 1);
  const auto row1 = torch::stack({zero, zero + static_cast<double>(patch) / h, -1.0 + (2.0 * y1 + patch) / h}, 1);
  const auto theta = torch::stack({row0, row1}, 1);  // (N, 2, 3)
  const auto grid = torch::nn::functional::affine_grid(theta, {n, images.size(1), patch, patch}, false);
  return torch::nn::functional::grid_sample(images, grid,
                                            torch::nn::functional::GridSampleFuncOptions()
                                                .mode(torch::kBilinear)
                                                .padding_mode(torch::kZeros)
                                                .align_corners(false));  // (N, C, P, P)
}

torch::Tensor patch_boxes(const torch::Tensor& actions, int64_t height, int64_t width, int64_t patch) {
  const auto a = actions.detach().to(torch::kFloat);
  const auto y = a.select(1, 0) * static_cast<double>(height - patch);
  const auto x = a.select(1, 1) * static_cast<double>(width - patch);
  const auto side = torch::full_like(x, static_cast<double>(patch));
  return torch::stack({x, y, side, side}, 1);  // (N, 4)
}

}  // namespace adafocus::nn
