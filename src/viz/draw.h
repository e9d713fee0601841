// Drawing on frames for visualisations: boxes and short text (a built-in 5x7 pixel font; letters in capitals).
#pragma once

#include <array>
#include <string>

#include "io/image.h"

namespace adafocus::viz {

using Colour = std::array<uint8_t, 3>;

/// A rectangle outline of `thickness` pixels, clipped to the image.
void draw_box(io::Image& image, double x, double y, double w, double h, Colour colour, int thickness = 2);
/// Text with its top-left corner at (x, y), each font pixel drawn as scale x scale, on a dark band for contrast.
void draw_text(io::Image& image, int x, int y, const std::string& text, Colour colour, int scale = 1);
/// Pixel width of `text` at `scale`.
int text_width(const std::string& text, int scale = 1);

}  // namespace adafocus::viz
