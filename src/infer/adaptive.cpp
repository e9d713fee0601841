#include "infer/adaptive.h"


namespace adafocus::infer {

AdaptiveResult run_adaptive(methods::MethodImpl& method, const methods::Clips& clips, const ExitRule& rule,
                            bool count) {
  const int64_t b = clips.frames.size(0), k = method.exits();
  TORCH_CHECK(rule.thresholds.empty() || static_cast<int64_t>(rule.thresholds.size()) == k, "run_adaptive: ",
              rule.thresholds.size(), " thresholds for ", k, " exits");
  AdaptiveResult out;
  out.regions.resize(static_cast<size_t>(b));
  out.region_frames.resize(static_cast<size_t>(b));
  std::vector<std::vector<torch::Tensor>> boxes(static_cast<size_t>(b)), positions(static_cast<size_t>(b));
  auto run = [&] {
    auto stepper = method.stepper(clips);
    auto present = torch::arange(b, torch::TensorOptions(torch::kLong).device(clips.frames.device()));
    for (int64_t e = 0; e < k && present.numel() > 0; ++e) {
      const methods::ExitStep step = stepper->next();  // (n, C) for the n videos present
      const auto step_logits = step.logits.to(torch::kFloat);  // float also from a bf16 model
      if (!out.exit_logits.defined()) {
        out.exit_logits = torch::full({b, k, step_logits.size(1)}, NAN, step_logits.options());
        out.logits = torch::empty({b, step_logits.size(1)}, step_logits.options());
        out.exits = torch::empty({b}, present.options());
      }
      out.exit_logits.select(1, e).index_copy_(0, present, step_logits);
      if (step.regions.defined()) {
        const auto ids = present.cpu();
        for (int64_t i = 0; i < ids.size(0); ++i) {
          boxes[static_cast<size_t>(ids[i].item<int64_t>())].push_back(step.regions[i]);
          positions[static_cast<size_t>(ids[i].item<int64_t>())].push_back(step.region_frames[i]);
        }
      }
      torch::Tensor leave;  // (n,) bool
      if (e + 1 == k)
        leave = torch::ones({present.size(0)}, present.options().dtype(torch::kBool));
      else if (rule.thresholds.empty())
        leave = torch::zeros({present.size(0)}, present.options().dtype(torch::kBool));
      else
        leave = exit_scores(step_logits.unsqueeze(1), rule.criterion).squeeze(1) >= rule.thresholds[static_cast<size_t>(e)];
      const auto gone = present.masked_select(leave);
      out.logits.index_copy_(0, gone, step_logits.index_select(0, leave.nonzero().squeeze(1)));
      out.exits.index_fill_(0, gone, e);
      if (gone.numel() == present.numel()) break;
      if (gone.numel() > 0) {
        const auto rows = (~leave).nonzero().squeeze(1);
        stepper->keep(rows);
        present = present.index_select(0, rows);
      }
    }
  };
  if (count)
    out.macs = nn::count_flops(method, run).total;
  else
    run();
  for (size_t i = 0; i < boxes.size(); ++i)
    if (!boxes[i].empty()) {
      out.regions[i] = torch::cat(boxes[i]);
      out.region_frames[i] = torch::cat(positions[i]);
    }
  out.exits = out.exits.cpu();
  return out;
}

MethodFlops method_flops(methods::MethodImpl& method, int64_t frames, int64_t focus_frames, int64_t size) {
  const bool was_training = method.is_training();
  method.eval();
  torch::NoGradGuard no_grad;
  const auto device = method.parameters().empty() ? torch::kCPU : method.parameters()[0].device();
  const auto options = torch::TensorOptions().device(device);
  methods::Clips clips{torch::zeros({1, frames, 3, size, size}, options),
                       focus_frames > 0 ? torch::zeros({1, focus_frames, 3, size, size}, options) : torch::Tensor()};
  MethodFlops out;
  out.report = nn::count_flops(method, [&] { method.flops_forward(clips); });
  // The exits' costs from the exit-by-exit path itself: what a video leaving there has run.
  std::unique_ptr<methods::ExitStepper> stepper;
  int64_t spent = 0;
  for (int64_t k = 0; k < method.exits(); ++k) {
    spent += nn::count_flops(method, [&] {
               if (!stepper) stepper = method.stepper(clips);
               stepper->next();
             }).total;
    out.exits.push_back(static_cast<double>(spent) * 1e-9);
  }
  method.train(was_training);
  return out;
}

}  // namespace adafocus::infer
