#include "infer/adaptive.h"

#include <optional>

namespace adafocus::infer {

AdaptiveResult run_adaptive(methods::MethodImpl& method, const methods::Clips& clips, const ExitRule& rule,
                            bool count) {
  return run_adaptive(method, clips, std::vector<const ExitRule*>(static_cast<size_t>(clips.frames.size(0)), &rule),
                      count);
}

AdaptiveResult run_adaptive(methods::MethodImpl& method, const methods::Clips& clips,
                            const std::vector<const ExitRule*>& rules, bool count, const LeaveCallback& on_leave) {
  const int64_t b = clips.frames.size(0), k = method.exits();
  TORCH_CHECK(static_cast<int64_t>(rules.size()) == b, "run_adaptive: ", rules.size(), " rules for ", b, " videos");
  // Each video's thresholds (B, K): +inf where it does not leave early; everyone leaves at the last exit.
  std::optional<Criterion> criterion;
  auto thresholds = torch::full({b, k}, INFINITY, torch::kDouble);
  for (int64_t i = 0; i < b; ++i) {
    const ExitRule* r = rules[static_cast<size_t>(i)];
    if (!r || r->thresholds.empty()) continue;
    TORCH_CHECK(static_cast<int64_t>(r->thresholds.size()) == k, "run_adaptive: ", r->thresholds.size(),
                " thresholds for ", k, " exits");
    TORCH_CHECK(!criterion || *criterion == r->criterion, "run_adaptive: the videos' rules differ in criterion");
    criterion = r->criterion;
    thresholds[i] = torch::tensor(r->thresholds, torch::kDouble);
  }
  thresholds = thresholds.to(clips.frames.device());
  AdaptiveResult out;
  out.regions.resize(static_cast<size_t>(b));
  out.region_frames.resize(static_cast<size_t>(b));
  std::vector<std::vector<torch::Tensor>> boxes(static_cast<size_t>(b)), positions(static_cast<size_t>(b));
  std::vector<int64_t> exits(static_cast<size_t>(b), -1);
  auto run = [&] {
    auto stepper = method.stepper(clips);
    auto present = torch::arange(b, torch::TensorOptions(torch::kLong).device(clips.frames.device()));
    for (int64_t e = 0; e < k && present.numel() > 0; ++e) {
      const methods::ExitStep step = stepper->next();  // (n, C) for the n videos present
      const auto step_logits = step.logits.to(torch::kFloat);  // float also from a bf16 model
      if (!out.exit_logits.defined()) {
        out.exit_logits = torch::full({b, k, step_logits.size(1)}, NAN, step_logits.options());
        out.logits = torch::empty({b, step_logits.size(1)}, step_logits.options());
      }
      out.exit_logits.select(1, e).index_copy_(0, present, step_logits);
      const auto ids = present.cpu();
      const auto* id = ids.data_ptr<int64_t>();
      if (step.regions.defined())
        for (int64_t i = 0; i < ids.size(0); ++i) {
          boxes[static_cast<size_t>(id[i])].push_back(step.regions[i]);
          positions[static_cast<size_t>(id[i])].push_back(step.region_frames[i]);
        }
      if (step.gflops.defined()) {
        if (!out.video_gflops.defined()) out.video_gflops = torch::zeros({b}, torch::kDouble);
        out.video_gflops.index_add_(0, ids, step.gflops.cpu().to(torch::kDouble));
      }
      const auto leave = e + 1 == k ? torch::ones({present.size(0)}, present.options().dtype(torch::kBool))
                         : !criterion ? torch::zeros({present.size(0)}, present.options().dtype(torch::kBool))
                                      : exit_scores(step_logits.unsqueeze(1), *criterion).squeeze(1).to(torch::kDouble) >=
                                            thresholds.index_select(0, present).select(1, e);  // (n,)
      const auto gone = present.masked_select(leave);
      out.logits.index_copy_(0, gone, step_logits.index_select(0, leave.nonzero().squeeze(1)));
      const auto gone_cpu = gone.cpu();
      const std::vector<int64_t> left(gone_cpu.data_ptr<int64_t>(), gone_cpu.data_ptr<int64_t>() + gone_cpu.numel());
      for (const int64_t i : left) {
        exits[static_cast<size_t>(i)] = e;
        if (!boxes[static_cast<size_t>(i)].empty()) {
          out.regions[static_cast<size_t>(i)] = torch::cat(boxes[static_cast<size_t>(i)]);
          out.region_frames[static_cast<size_t>(i)] = torch::cat(positions[static_cast<size_t>(i)]);
        }
      }
      if (on_leave && !left.empty()) {
        out.exits = torch::tensor(exits, torch::kLong);
        on_leave(left, out);
      }
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
  out.exits = torch::tensor(exits, torch::kLong);
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
