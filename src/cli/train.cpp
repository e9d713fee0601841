// adafocus train: train a method on a dataset into a run folder (see train/trainer.h for what it holds), in one
// process or data-parallel in several (dist/dist.h): launched by torchrun or srun, or by --nproc N here.
#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "cli/common.h"
#include "core/error.h"
#include "core/files.h"
#include "train/trainer.h"

namespace adafocus::cli {

namespace {

struct TrainArgs {
  ConfigArgs config;
  std::string data, out, resume, init;
  int nproc = 1;
  double timeout = 300, bucket_mb = 25;
};

// A TCP port free on loopback now (the kernel's choice), for the local job's rendezvous.
int free_port() {
  const int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(a);
  const bool ok = s >= 0 && bind(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
                  getsockname(s, reinterpret_cast<sockaddr*>(&a), &length) == 0;
  if (s >= 0) close(s);
  if (!ok) throw Error("found no free TCP port on loopback for the processes' rendezvous");
  return ntohs(a.sin_port);
}

std::string describe(int status) {
  if (WIFSIGNALED(status)) return fmt::format("was killed by signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
  return fmt::format("exited with status {}", WEXITSTATUS(status));
}

// --nproc N: this command line again, N times, as ranks 0..N-1 of a job on loopback (torchrun's variables). When one
// fails, the others stop on their own (their next collective fails and names it); any still running after the
// timeout are killed. Returns the exit status: 0, or the first failure's.
int run_local(int nproc, double timeout_s) {
  if (!dist::Launch::from_env().launcher.empty())
    throw Error("--nproc inside a job that a launcher started", "RANK/SLURM_PROCID",
                "let the launcher start the processes (torchrun --nproc_per_node, srun -n), or drop its variables");
  std::vector<std::string> args;  // our own command line, without --nproc
  const std::string cmdline = read_file("/proc/self/cmdline");
  for (size_t begin = 0, end; begin < cmdline.size(); begin = end + 1) {
    end = cmdline.find('\0', begin);
    args.push_back(cmdline.substr(begin, end - begin));
  }
  for (size_t i = 1; i < args.size(); ++i)
    if (args[i] == "--nproc" && i + 1 < args.size())
      args.erase(args.begin() + static_cast<long>(i), args.begin() + static_cast<long>(i) + 2);
    else if (args[i].rfind("--nproc=", 0) == 0)
      args.erase(args.begin() + static_cast<long>(i));
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const std::string port = std::to_string(free_port()), world = std::to_string(nproc);
  std::vector<pid_t> pids;
  for (int rank = 0; rank < nproc; ++rank) {
    const pid_t pid = fork();
    if (pid < 0) throw Error("could not start process " + std::to_string(rank));
    if (pid == 0) {
      const std::string r = std::to_string(rank);
      setenv("RANK", r.c_str(), 1);
      setenv("LOCAL_RANK", r.c_str(), 1);
      setenv("WORLD_SIZE", world.c_str(), 1);
      setenv("LOCAL_WORLD_SIZE", world.c_str(), 1);
      setenv("MASTER_ADDR", "127.0.0.1", 1);
      setenv("MASTER_PORT", port.c_str(), 1);
      execv("/proc/self/exe", argv.data());
      _exit(127);
    }
    pids.push_back(pid);
  }
  int failure = 0;
  auto deadline = std::chrono::steady_clock::time_point::max();
  for (size_t running = pids.size(); running > 0;) {
    int status = 0;
    const pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      --running;
      const auto rank = std::find(pids.begin(), pids.end(), pid) - pids.begin();
      pids[static_cast<size_t>(rank)] = 0;
      if (status != 0 && failure == 0) {
        fmt::print(stderr, "error: rank {} of {} {}\n", rank, nproc, describe(status));
        failure = WIFEXITED(status) ? WEXITSTATUS(status) : 1;
        deadline = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                          std::chrono::duration<double>(timeout_s + 10));
      }
      continue;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      for (size_t r = 0; r < pids.size(); ++r)
        if (pids[r] > 0) {
          fmt::print(stderr, "error: rank {} still running {:.0f} s after the failure: killed\n", r, timeout_s + 10);
          kill(pids[r], SIGKILL);
        }
      deadline = std::chrono::steady_clock::time_point::max();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return failure;
}

int run(const TrainArgs& args, const Runtime& runtime) {
  if (args.nproc > 1) return run_local(args.nproc, args.timeout);
  if (!args.resume.empty() && (!args.config.file.empty() || !args.config.overrides.empty() || !args.init.empty()))
    throw Error("--resume continues a run with its own config.yaml", args.resume,
                "drop -c and key=value, or start a new run with --out");
  train::TrainOptions o;
  o.device = runtime.torch_device();
  o.init = args.init;
  Config config = Config::defaults();
  if (!args.resume.empty()) {
    o.run_dir = args.resume;
    o.resume = true;
  } else {
    std::vector<std::pair<std::string, std::string>> flags;
    if (!args.data.empty()) flags.emplace_back("data.root", args.data);
    config = args.config.load(flags);
    if (args.config.print_if_asked(config)) return 0;
    if (args.out.empty()) throw Error("--out RUN is required", "", "the folder for checkpoints and metrics");
    o.run_dir = args.out;
  }
  const dist::Launch launch = dist::Launch::from_env();
  std::unique_ptr<dist::Group> group;
  if (launch.world > 1) {
    group = std::make_unique<dist::Group>(
        launch, std::chrono::milliseconds(static_cast<int64_t>(args.timeout * 1000)));
    o.group = group.get();
    o.bucket_mb = args.bucket_mb;
  }
  train::TrainSummary s;
  try {
    s = train::train(config, o);
  } catch (const std::exception& e) {
    if (group) group->publish_error(e.what());  // for the others to name when they stop
    throw;
  }
  if (launch.rank != 0) return 0;  // rank 0 reports
  fmt::print("{}: {} epochs in {:.0f} s\n", o.run_dir, s.epochs, s.seconds);
  if (s.best_epoch >= 0)
    fmt::print("best val {} {:.2f} at epoch {} (best.pt); last val top1 {:.2f}, mAP {:.2f}, {:.4f} GFLOPs/video\n",
               s.metric, s.best_metric, s.best_epoch + 1, s.last.scores.top1,
               s.last.scores.map, s.last.flops.report.gflops());
  if (!s.failures.empty()) {
    fmt::print("{} samples failed to load and were replaced:\n", s.failures.size());
    for (const auto& f : s.failures) fmt::print("  {}: {}\n", f.path, f.message);
  }
  return 0;
}

}  // namespace

void add_train_command(CLI::App& app, Commands& commands, const Runtime& runtime) {
  auto args = std::make_shared<TrainArgs>();
  CLI::App* sub = app.add_subcommand("train", "train a method on labelled videos");
  sub->add_option("--data", args->data, "dataset folder (data.root): lists, classInd.txt, videos or frames");
  sub->add_option("--out", args->out, "run folder for config.yaml, metrics.jsonl, last.pt, best.pt");
  sub->add_option("--resume", args->resume, "continue the run in this folder from its last.pt");
  sub->add_option("--init", args->init,
                  "start from this checkpoint's weights (a staged method's previous stage: stage=N --init "
                  "RUN/stage<N-1>/last.pt)");
  sub->add_option("--nproc", args->nproc,
                  "train data-parallel in N processes on this machine (as torchrun --nproc_per_node N); "
                  "data.batch_size is the batch of all of them")
      ->check(CLI::PositiveNumber);
  sub->add_option("--timeout", args->timeout,
                  "several processes: seconds a process waits for the others before it stops, naming the one at fault")
      ->check(CLI::PositiveNumber);
  sub->add_option("--bucket-mb", args->bucket_mb, "several processes: size of the gradient buckets all-reduced during backward")
      ->check(CLI::PositiveNumber);
  args->config.add_to(*sub);
  commands.push_back({sub, [args, &runtime] { return run(*args, runtime); }});
}

}  // namespace adafocus::cli
