// adafocus serve: flags of serve::serve (src/serve/server.h); stops on SIGTERM or SIGINT after answering what it has
// admitted.
#include <fmt/format.h>

#include <csignal>
#include <thread>

#include "cli/common.h"
#include "serve/server.h"

namespace adafocus::cli {

namespace {

int run(serve::ServeOptions o, const Runtime& runtime) {
  o.device = runtime.torch_device();
  o.precision = runtime.precision;
  // SIGTERM and SIGINT go to a thread of their own (blocked here before any thread starts, so none else gets them):
  // it asks the server to drain and stop.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::atomic<bool> stop{false};
  std::thread waiter([&] {
    int signal = 0;
    sigwait(&signals, &signal);
    if (!stop) fmt::print(stderr, "{}: finishing the requests in flight, then stopping\n", strsignal(signal));
    stop = true;
  });
  try {
    serve::serve(o, stop, [&](int port) {
      fmt::print("listening on http://{}:{}\n", o.host.find(':') != std::string::npos ? "[" + o.host + "]" : o.host,
                 port);
      std::fflush(stdout);
    });
  } catch (...) {
    stop = true;
    pthread_kill(waiter.native_handle(), SIGTERM);
    waiter.join();
    throw;
  }
  if (!stop.exchange(true)) pthread_kill(waiter.native_handle(), SIGTERM);
  waiter.join();
  fmt::print(stderr, "stopped\n");
  return 0;
}

}  // namespace

void add_serve_command(CLI::App& app, Commands& commands, const Runtime& runtime) {
  auto o = std::make_shared<serve::ServeOptions>();
  CLI::App* sub = app.add_subcommand(
      "serve", "answer videos over HTTP (loopback by default): batched exit by exit, at a budget the load decides");
  sub->add_option("--checkpoint", o->checkpoint, "the model (best.pt / last.pt of a run, or an official .pth.tar)")
      ->required();
  sub->add_option("-c,--config", o->preset, "preset for checkpoints without a configuration (official ones)");
  sub->add_option("--thresholds", o->thresholds, "early-exit thresholds (calibrate --out; default: the checkpoint's)");
  sub->add_option("--host", o->host, "address to listen on (127.0.0.1 or ::1 for this machine only)");
  sub->add_option("--port", o->port, "port (0: any free one, printed)")->check(CLI::Range(0, 65535));
  sub->add_option("--budget", o->budget, "GFLOPs per video when a request names none (-1: the model's full cost)");
  sub->add_option("--min-budget", o->min_budget,
                  "the load may lower requests to this budget and no further (-1: the cheapest exit)");
  sub->add_option("--slo-ms", o->slo_ms, "latency objective per request, in ms (0: none; only --queue sheds)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--max-batch", o->max_batch, "videos per batch")->check(CLI::PositiveNumber);
  sub->add_option("--max-delay-ms", o->max_delay_ms, "a batch waits at most this long for more videos")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--queue", o->queue, "requests admitted and not yet answered, at most (more: 503)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--max-upload-mb", o->max_upload_mb, "largest upload (more: 413)")->check(CLI::PositiveNumber);
  sub->add_option("--max-frames", o->max_frames, "longest video, in frames (more: 422)")->check(CLI::PositiveNumber);
  sub->add_option("--max-pixels", o->max_pixels, "largest frame, in pixels (more: 422)")->check(CLI::PositiveNumber);
  sub->add_option("--read-timeout-s", o->read_timeout_s, "a request must arrive in full within this")
      ->check(CLI::PositiveNumber);
  sub->add_option("--media-root", o->media_root, "the folder stream sources may be read from (default: none)");
  sub->add_option("--api-key-file", o->api_key_file, "a file holding the key /v1/* and /metrics require");
  sub->add_option("--decode-threads", o->decode_threads, "threads decoding uploads (0: one per core)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--max-streams", o->max_streams, "live streams at once")->check(CLI::PositiveNumber);
  sub->add_option("--set", o->overrides, "key=value on the model's configuration (e.g. --set data.short_side=128)");
  commands.push_back({sub, [o, &runtime] { return run(*o, runtime); }});
}

}  // namespace adafocus::cli
