// A picture of a prediction: the frames the model read, with the regions it looked at and its top class.
#pragma once

#include <string>

#include "infer/predictor.h"
#include "methods/checkpoint.h"

namespace adafocus::viz {

/// Writes the frames the model read, with its regions and its top class drawn on them, as a .gif or .mp4.
void visualize(const std::string& video, const methods::LoadedModel& model, const infer::VideoPrediction& prediction,
               const std::string& out);

}  // namespace adafocus::viz
