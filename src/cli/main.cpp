// adafocus: one binary, one subcommand per task. Each subcommand lives in its own file and stays thin: parse,
// call the library, print.
#include <fmt/format.h>
#include <sched.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include <thread>

#include "cli/common.h"
#include "core/error.h"
#include "core/host.h"
#include "distributed/dist.h"
#include "infer/precision.h"

namespace {

// OpenMP's worker threads spin while they wait for work (libgomp's default). Alone that costs nothing, but beside
// another busy process they burn the cores it needs: two demo-preset trainings side by side took 5.4x as long as
// one alone, instead of 2x (docs/performance.md). Waiting passively, they took 1.6x, and a training alone was as fast.
// libgomp reads OMP_WAIT_POLICY once, when it is loaded - before main - so the long-running commands set it and
// start again (0.4 s, LibTorch's start-up); a policy the user set is kept.
void wait_passively(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") || std::getenv("GOMP_SPINCOUNT")) return;
  static const char* const kLong[] = {"train", "demo", "sweep", "eval", "bench", "calibrate", "pretrain-items", "features",
                                      "serve"};
  bool long_running = false;
  for (char** a = argv + 1; *a && !long_running; ++a)
    for (const char* name : kLong) long_running = long_running || std::strcmp(*a, name) == 0;
  if (!long_running) return;
  setenv("OMP_WAIT_POLICY", "passive", 1);
  execv("/proc/self/exe", argv);  // returns only on failure: then run on as we are
}

}  // namespace

int main(int argc, char** argv) {
  using namespace adafocus;
  wait_passively(argv);
  keep_freed_memory();
  CLI::App app{"adafocus: efficient video recognition by adaptive spatial-temporal computation"};
  app.option_defaults()->always_capture_default();
  app.require_subcommand(1);

  cli::Runtime runtime;
  // The cores this process may run on (a container's or taskset's share), not all the machine's, shared with the
  // other processes of a data-parallel job on this machine (torchrun's LOCAL_WORLD_SIZE, SLURM's tasks per node) -
  // unless the launcher gave each process its own cores already (srun's CPU binding).
  cpu_set_t cpus;
  const int machine = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  runtime.threads = sched_getaffinity(0, sizeof(cpus), &cpus) == 0 ? std::max(1, CPU_COUNT(&cpus)) : machine;
  if (runtime.threads == machine || !std::getenv("SLURM_PROCID"))
    runtime.threads = std::max(1, runtime.threads / dist::local_processes());
  runtime.device = torch::cuda::is_available() ? "cuda" : "cpu";
  // LibTorch defaults to one intra-op thread; we default to every core.
  app.add_option("--threads", runtime.threads, "CPU threads for tensor operations")->check(CLI::PositiveNumber);
  app.add_option("--device", runtime.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  std::string precision = "fp32";
  app.add_option("--precision", precision,
                 "inference arithmetic: fp32; bf16 (autocast) where the CPU has it natively (AVX512-BF16, AMX), "
                 "else fp32; bf16-emulated: bf16 on any CPU")
      ->check(CLI::IsMember({"fp32", "bf16", "bf16-emulated"}));

  cli::Commands commands;
  cli::add_demo_command(app, commands, runtime);
  cli::add_sweep_command(app, commands, runtime);
  cli::add_train_command(app, commands, runtime);
  cli::add_eval_command(app, commands, runtime);
  cli::add_predict_command(app, commands, runtime);
  cli::add_calibrate_command(app, commands, runtime);
  cli::add_bench_command(app, commands, runtime);
  cli::add_serve_command(app, commands, runtime);
  cli::add_pretrain_items_command(app, commands, runtime);
  cli::add_flops_command(app, commands, runtime);
  cli::add_features_command(app, commands, runtime);
  cli::add_convert_weights_command(app, commands, runtime);
  cli::add_export_command(app, commands, runtime);
  cli::add_make_synthetic_command(app, commands, runtime);
  cli::add_make_list_command(app, commands, runtime);
  cli::add_check_data_command(app, commands, runtime);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  try {
    if (runtime.device == "cuda" && !torch::cuda::is_available())
      throw Error("--device cuda: no CUDA device (or this LibTorch was built without CUDA)", "",
                  "use --device cpu");
    at::set_num_threads(runtime.threads);
    std::string note;
    runtime.precision = infer::resolve_precision(precision, precision != "fp32" && infer::cpu_has_bf16(), note);
    for (const auto& command : commands) {
      if (!command.app->parsed()) continue;
      if (precision != "fp32") {
        const std::string name = command.app->get_name();
        if (name != "eval" && name != "predict" && name != "bench" && name != "calibrate" && name != "serve")
          throw Error("--precision " + precision + " is for inference", "",
                      "use it with eval, predict, bench, calibrate or serve; training runs in fp32");
        if (!note.empty()) fmt::print(stderr, "note: {}\n", note);
      }
      // Models run on this thread (loader workers only decode): autocast, which is per thread, is set here.
      infer::PrecisionGuard guard(runtime.precision);
      return command.run();
    }
    return 0;
  } catch (const Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
  } catch (const c10::Error& e) {
    std::string what = e.what_without_backtrace();
    fmt::print(stderr, "error: {}\n", what.substr(0, what.find('\n')));
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
  }
  return 1;
}
