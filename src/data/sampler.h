// Which frames of a video a clip is made of, as in the official code (TSN segment sampling, the AdaFocusV2
// `input_order`, dense sampling). Indices are 0-based frame numbers.
#pragma once

#include <cstdint>
#include <vector>

#include "core/rng.h"

namespace adafocus::data {

/// TSN segments: the video is cut into `segments` equal parts; training takes a random frame of each part, testing
/// the centre one, int(tick/2 + tick*i). Videos shorter than `segments` repeat frames evenly, and a video of exactly
/// `segments` frames gives each frame once: the official code returns frame 0 for every segment in both cases (at
/// test time also when the lengths are equal), a quirk we do not copy.
std::vector<int64_t> tsn_indices(int64_t num_frames, int64_t segments, bool train, Rng& rng);

/// Dense sampling as TSM: `frames` frames `stride` apart (stride 0: 64 / frames), the window at a random start in
/// training, at (1 + num_frames - window) / 2 in testing; indices wrap around in videos shorter than the window.
std::vector<int64_t> dense_indices(int64_t num_frames, int64_t frames, int64_t stride, bool train, Rng& rng);

/// The official AdaFocusV2 order (main_v2.py input_order) in which the frames of a T-frame clip are fed, so that
/// every prefix covers the whole video: T=16 -> 7,0,15,3,11,1,5,9,13,2,4,6,8,10,12,14; T=8 -> 3,0,7,1,5,2,4,6.
std::vector<int64_t> input_order(int64_t segments);

/// indices re-ordered by `order`: out[k] = indices[order[k]].
std::vector<int64_t> reorder(const std::vector<int64_t>& indices, const std::vector<int64_t>& order);

/// Uni-AdaFocus glance frames among C candidates: one of every `every` candidates (training: a random one of each
/// group, testing: the middle one). Returns positions into the candidate list.
std::vector<int64_t> glance_positions(int64_t candidates, int64_t every, bool train, Rng& rng);

}  // namespace adafocus::data
