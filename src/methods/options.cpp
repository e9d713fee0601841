#include "methods/options.h"

#include "core/error.h"
#include "methods/method.h"

namespace adafocus::methods {

LearningRates LearningRates::from_config(const Config& c) {
  return LearningRates()
      .policy(c.get_float("train.lr_policy"))
      .glance(c.get_float("train.lr_glance"))
      .local(c.get_float("train.lr_local"))
      .classifier(c.get_float("train.lr_classifier"));
}

GlanceFocusOptions GlanceFocusOptions::from_config(const Config& c, int64_t local_segments) {
  const int64_t frames = c.get_int("data.segments");
  auto o = GlanceFocusOptions(backbone_options(c, "model.glance", 1000, frames),
                              backbone_options(c, "model.local", 1000, local_segments))
               .frames(frames)
               .focus_frames(c.get_int("data.focus_segments"))
               .input_size(c.get_int("data.input_size"))
               .glance_size(c.get_int("model.glance.resolution"))
               .resize(c.get_string("model.resize"))
               .patch_size(c.get_int("model.patch_size"))
               .policy(c.get_string("model.policy"))
               .policy_channels(c.get_int("model.policy_channels"))
               .policy_hidden(c.get_int("model.policy_hidden"))
               .classifier_hidden(c.get_int("model.classifier_hidden"))
               .dropout(c.get_float("model.dropout"))
               .fc_dropout(c.get_float("model.fc_dropout"))
               .lr(LearningRates::from_config(c));
  if (o.patch_size() <= 0 || o.patch_size() > o.input_size())
    throw Error("model.patch_size " + std::to_string(o.patch_size()) + " must be in (0, data.input_size = " +
                    std::to_string(o.input_size()) + "]",
                c.origin("model.patch_size"));
  return o;
}

}  // namespace adafocus::methods
