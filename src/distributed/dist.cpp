#include "distributed/dist.h"

#include <fmt/format.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <unistd.h>

#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "core/error.h"

namespace adafocus::dist {

namespace {

using Clock = std::chrono::steady_clock;

std::string env(const char* name, const std::string& fallback = "") {
  const char* value = std::getenv(name);
  return value && *value ? value : fallback;
}

int env_int(const char* name, int fallback) {
  const std::string text = env(name);
  if (text.empty()) return fallback;
  size_t used = 0;
  int value = 0;
  try {
    value = std::stoi(text, &used);
  } catch (const std::exception&) {
  }
  if (used == 0 || used != text.size())
    throw Error(fmt::format("{}={} is not a whole number", name, text), name, "check the launcher's environment");
  return value;
}

// SLURM_TASKS_PER_NODE is "2(x3),1": the count of this node's first group is the leading number.
int slurm_tasks_per_node() {
  if (const int n = env_int("SLURM_NTASKS_PER_NODE", 0); n > 0) return n;
  const std::string text = env("SLURM_TASKS_PER_NODE");
  return text.empty() || !std::isdigit(static_cast<unsigned char>(text[0])) ? 1 : std::stoi(text);
}

// The first host of a SLURM node list: "node[07-09,12],gpu5" -> "node07".
std::string first_host(const std::string& list) {
  size_t depth = 0, end = 0;
  for (; end < list.size() && !(depth == 0 && list[end] == ','); ++end) depth += list[end] == '[' ? 1 : list[end] == ']' ? -1 : 0;
  const std::string host = list.substr(0, end);
  const size_t open = host.find('[');
  if (open == std::string::npos) return host;
  const size_t close = host.find(']', open);
  const std::string inside = host.substr(open + 1, close - open - 1);
  return host.substr(0, open) + inside.substr(0, inside.find_first_of(",-")) +
         (close == std::string::npos ? "" : host.substr(close + 1));
}

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

std::string host_name() {
  char name[256] = {};
  gethostname(name, sizeof(name) - 1);
  return name;
}

bool is_loopback(const std::string& addr) { return addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1"; }

}  // namespace

Launch Launch::from_env() {
  Launch l;
  if (!env("RANK").empty() || !env("WORLD_SIZE").empty()) {  // torchrun, or anything that sets PyTorch's variables
    l.launcher = "torchrun";
    l.rank = env_int("RANK", 0);
    l.world = env_int("WORLD_SIZE", 1);
    l.local_rank = env_int("LOCAL_RANK", l.rank);
    l.local_world = env_int("LOCAL_WORLD_SIZE", l.world);
    l.master_addr = env("MASTER_ADDR", l.master_addr);
    l.master_port = env_int("MASTER_PORT", l.master_port);
    l.agent_store = env("TORCHELASTIC_USE_AGENT_STORE") == "True";
    l.restart = env_int("TORCHELASTIC_RESTART_COUNT", 0);
  } else if (!env("SLURM_PROCID").empty() && !env("SLURM_NTASKS").empty()) {
    l.launcher = "slurm";
    l.rank = env_int("SLURM_PROCID", 0);
    l.world = env_int("SLURM_NTASKS", 1);
    l.local_rank = env_int("SLURM_LOCALID", 0);
    l.local_world = slurm_tasks_per_node();
    const std::string nodes = env("SLURM_JOB_NODELIST", env("SLURM_NODELIST"));
    l.master_addr = env("MASTER_ADDR", nodes.empty() ? l.master_addr : first_host(nodes));
    // Two jobs sharing a node must not pick the same port: derived from the job id unless given.
    l.master_port = env_int("MASTER_PORT", 29500 + env_int("SLURM_JOB_ID", 0) % 1000);
  }
  const char* rank_var = l.launcher == "slurm" ? "SLURM_PROCID" : "RANK";
  if (l.world < 1) throw Error(fmt::format("a world of {} processes", l.world), l.launcher == "slurm" ? "SLURM_NTASKS" : "WORLD_SIZE");
  if (l.rank < 0 || l.rank >= l.world)
    throw Error(fmt::format("rank {} outside a world of {} processes", l.rank, l.world), rank_var);
  if (l.master_port < 1 || l.master_port > 65535) throw Error(fmt::format("port {} is not a TCP port", l.master_port), "MASTER_PORT");
  return l;
}

int local_processes() {
  try {
    return std::max(1, Launch::from_env().local_world);
  } catch (const Error&) {
    return 1;  // the trainer reports the bad variable
  }
}

// ---------------------------------------------------------------------------------------------------------------

struct Group::Impl {
  Launch launch;
  std::chrono::milliseconds timeout;
  c10::intrusive_ptr<c10d::Store> store, beat_store;  // the second for the heartbeat thread
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
  int64_t shares = 0;
  bool failed = false;  // a collective failed: work may be queued that would wait out the timeout

  std::mutex mutex;  // guards what follows
  std::condition_variable wake;
  bool stopping = false, moved = false;
  std::string where = "starting";
  std::thread heartbeat;

  std::string store_address() const { return fmt::format("{}:{}", launch.master_addr, launch.master_port); }

  c10::intrusive_ptr<c10d::Store> connect(bool server) const {
    c10d::TCPStoreOptions o;
    o.port = static_cast<uint16_t>(launch.master_port);
    o.isServer = server;
    o.waitWorkers = false;
    o.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(launch.master_addr, o);
    // Under torchrun the agent's store is shared with it: its workers' keys live under this prefix (as PyTorch's).
    const std::string prefix = launch.agent_store ? fmt::format("/worker/attempt_{}", launch.restart) : "adafocus";
    return c10::make_intrusive<c10d::PrefixStore>(prefix, tcp);
  }

  // Every second, and whenever the rank moves on: a beat (a rank whose count stops is gone or stopped) and where
  // the rank is. The main thread never waits for the store.
  void beat() {
    const std::string rank = std::to_string(launch.rank);
    std::unique_lock<std::mutex> lock(mutex);
    while (!stopping) {
      const std::string at = where;
      moved = false;
      lock.unlock();
      try {
        beat_store->add("beat/" + rank, 1);
        beat_store->set("at/" + rank, std::vector<uint8_t>(at.begin(), at.end()));
      } catch (const std::exception&) {
        return;  // the store is gone: the main thread finds out at its next collective
      }
      lock.lock();
      wake.wait_for(lock, std::chrono::seconds(1), [&] { return stopping || moved; });
    }
  }

  std::string get(const std::string& key) {
    const std::vector<uint8_t> bytes = store->get(key);
    return std::string(bytes.begin(), bytes.end());
  }
};

Group::Group(const Launch& launch, std::chrono::milliseconds timeout) : impl_(std::make_unique<Impl>()) {
  Impl& g = *impl_;
  g.launch = launch;
  g.timeout = timeout;
  const std::string where = fmt::format("rank {} of {}", launch.rank, launch.world);
  try {
    g.store = g.connect(launch.rank == 0 && !launch.agent_store);
    g.beat_store = g.connect(false);
  } catch (const std::exception& e) {
    throw Error(fmt::format("could not reach the rendezvous store at {} within {} s: {}", g.store_address(),
                            timeout.count() / 1000, first_line(e.what())),
                where,
                launch.rank == 0 ? "is the port free (MASTER_PORT)? another job may be using it"
                                 : "rank 0 hosts it: is rank 0 running, and are MASTER_ADDR and MASTER_PORT the same on "
                                   "every rank?");
  }
  const std::string me = fmt::format("{} pid {}", host_name(), getpid());
  g.store->set(fmt::format("joined/{}", launch.rank), std::vector<uint8_t>(me.begin(), me.end()));
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  // The interface gloo talks over: GLOO_SOCKET_IFNAME as PyTorch, loopback for a local job, else the one this
  // machine's hostname resolves to.
  if (const std::string interface = env("GLOO_SOCKET_IFNAME"); !interface.empty())
    options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(interface));
  else if (is_loopback(launch.master_addr))
    options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  else
    options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  options->threads = 2;
  try {
    g.pg = c10::make_intrusive<c10d::ProcessGroupGloo>(g.store, launch.rank, launch.world, options);
  } catch (const std::exception& e) {
    std::string missing;
    for (int r = 0; r < launch.world; ++r)
      if (!g.store->check({fmt::format("joined/{}", r)})) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
    throw Error(missing.empty() ? "the processes could not connect: " + first_line(e.what())
                                : fmt::format("rank(s) {} did not join within {} s", missing, timeout.count() / 1000),
                where, "start every rank (WORLD_SIZE of them) with the same MASTER_ADDR and MASTER_PORT");
  }
  g.heartbeat = std::thread([&g] { g.beat(); });
}

Group::~Group() {
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    impl_->stopping = true;
  }
  impl_->wake.notify_all();
  if (impl_->heartbeat.joinable()) impl_->heartbeat.join();
  // The gloo group's destructor waits for queued work, which after a failure could wait out the timeout once per
  // bucket: the process is about to end, leave it.
  if (impl_->failed) (void)impl_->pg.release();
}

int Group::rank() const { return impl_->launch.rank; }
int Group::world() const { return impl_->launch.world; }

void Group::report(const std::string& where) {
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    impl_->where = where;
    impl_->moved = true;
  }
  impl_->wake.notify_all();
}

void Group::publish_error(const std::string& message) {
  Impl& g = *impl_;
  try {
    g.store->set(fmt::format("error/{}", rank()), std::vector<uint8_t>(message.begin(), message.end()));
  } catch (const std::exception&) {
    return;  // the store is gone too: the others find this rank silent instead
  }
  // Closing the connections makes the others' next (or current) collective fail now, not at the timeout; the store
  // this rank may host stays a moment so that they can read why. (After a failed collective they know already.)
  if (!g.failed) g.pg.reset();
  if (rank() == 0 && !g.launch.agent_store) std::this_thread::sleep_for(std::chrono::seconds(4));
}

void Group::fail(const std::exception& cause, const std::string& during) {
  Impl& g = *impl_;
  g.failed = true;
  std::vector<std::string> culprits;
  const auto where_of = [&](int r) { return g.store->check({fmt::format("at/{}", r)}) ? g.get(fmt::format("at/{}", r)) : "?"; };
  try {
    for (int r = 0; r < world(); ++r)  // a rank that threw says why
      if (r != rank() && g.store->check({fmt::format("error/{}", r)}))
        culprits.push_back(fmt::format("rank {} failed ({}): {}", r, where_of(r), g.get(fmt::format("error/{}", r))));
    if (culprits.empty()) {  // else the ranks whose heartbeat stopped: gone, or stopped
      std::vector<int64_t> before;
      for (int r = 0; r < world(); ++r) before.push_back(g.store->add(fmt::format("beat/{}", r), 0));
      std::this_thread::sleep_for(std::min<std::chrono::milliseconds>(std::chrono::seconds(3), g.timeout));
      for (int r = 0; r < world(); ++r)
        if (r != rank() && g.store->add(fmt::format("beat/{}", r), 0) == before[static_cast<size_t>(r)])
          culprits.push_back(fmt::format("rank {} stopped responding (its process is gone or stopped; last seen at {})",
                                         r, where_of(r)));
    }
    if (culprits.empty()) {  // all alive: one of them is stuck elsewhere, or slower than the timeout allows
      std::string at;
      for (int r = 0; r < world(); ++r) at += fmt::format("{}rank {} at {}", at.empty() ? "" : ", ", r, where_of(r));
      culprits.push_back("every rank is alive, one did not reach this point within the timeout: " + at);
    }
  } catch (const std::exception&) {
    culprits = {g.launch.agent_store || rank() == 0
                    ? "the rendezvous store at " + g.store_address() + " is gone (torchrun's agent hosts it)"
                    : "rank 0, which hosts the rendezvous store at " + g.store_address() + ", is gone"};
  }
  std::string text;
  for (const auto& c : culprits) text += (text.empty() ? "" : "; ") + c;
  throw Error(fmt::format("distributed training stopped during {}: {} [here: {}]", during, text, first_line(cause.what())),
              fmt::format("rank {} of {}", rank(), world()),
              "the last checkpoint is intact: restart with --resume RUN (with any number of processes that divides "
              "data.batch_size); --timeout sets how long a rank waits for the others");
}

void Group::all_reduce(torch::Tensor& t) { all_reduce_async(t)(); }

std::function<void()> Group::all_reduce_async(torch::Tensor t) {
  std::vector<torch::Tensor> tensors{std::move(t)};
  c10::intrusive_ptr<c10d::Work> work;
  try {
    work = impl_->pg->allreduce(tensors);
  } catch (const std::exception& e) {
    fail(e, "an all-reduce");
  }
  return [this, work] {
    try {
      work->wait();
    } catch (const std::exception& e) {
      fail(e, "an all-reduce");
    }
  };
}

void Group::broadcast(std::vector<torch::Tensor>& tensors, int root) {
  // gloo broadcasts one tensor per call: the tensors travel as one flat buffer per dtype.
  std::map<torch::ScalarType, std::vector<torch::Tensor*>> by_type;
  for (auto& t : tensors) by_type[t.scalar_type()].push_back(&t);
  for (auto& [type, members] : by_type) {
    std::vector<torch::Tensor> flat;
    for (torch::Tensor* t : members) flat.push_back(t->detach().reshape(-1));
    std::vector<torch::Tensor> buffer{torch::cat(flat)};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    try {
      impl_->pg->broadcast(buffer, options)->wait();
    } catch (const std::exception& e) {
      fail(e, "a broadcast");
    }
    torch::NoGradGuard no_grad;
    int64_t offset = 0;
    for (torch::Tensor* t : members) {
      t->copy_(buffer[0].narrow(0, offset, t->numel()).view(t->sizes()));
      offset += t->numel();
    }
  }
}

torch::Tensor Group::all_gather_rows(const torch::Tensor& t) {
  auto sizes = torch::zeros({world()}, torch::kLong);
  sizes[rank()] = t.size(0);
  all_reduce(sizes);
  const int64_t most = sizes.max().item<int64_t>();
  std::vector<int64_t> shape = t.sizes().vec();
  shape[0] = most;
  std::vector<torch::Tensor> input{torch::zeros(shape, t.options())};
  input[0].narrow(0, 0, t.size(0)).copy_(t);
  std::vector<std::vector<torch::Tensor>> output(1);
  for (int r = 0; r < world(); ++r) output[0].push_back(torch::empty(shape, t.options()));
  try {
    impl_->pg->allgather(output, input)->wait();
  } catch (const std::exception& e) {
    fail(e, "an all-gather");
  }
  std::vector<torch::Tensor> parts;
  for (int r = 0; r < world(); ++r) parts.push_back(output[0][static_cast<size_t>(r)].narrow(0, 0, sizes[r].item<int64_t>()));
  return torch::cat(parts);
}

std::string Group::share(const std::string& bytes) {
  const std::string key = fmt::format("share/{}", impl_->shares++);
  try {
    if (rank() == 0) impl_->store->set(key, std::vector<uint8_t>(bytes.begin(), bytes.end()));
    return rank() == 0 ? bytes : impl_->get(key);
  } catch (const std::exception& e) {
    fail(e, "sharing rank 0's files");
  }
}

void Group::barrier() {
  try {
    impl_->pg->barrier()->wait();
  } catch (const std::exception& e) {
    fail(e, "a barrier");
  }
}

// ---------------------------------------------------------------------------------------------------------------

struct GradientReducer::Impl {
  struct Param {
    torch::Tensor tensor;
    size_t bucket;
    int64_t offset;
    bool seen = false;
  };
  struct Bucket {
    torch::Tensor flat;
    size_t members = 0, pending = 0;
    std::function<void()> wait;  // set once launched
  };
  Group& group;
  std::vector<Param> params;
  std::vector<Bucket> buckets;
  std::vector<unsigned> hooks;
  size_t next = 0;      // the next bucket to launch: buckets go in order on every rank
  double wait_s = 0;

  explicit Impl(Group& g) : group(g) {}

  // Launches the buckets that are full, in order; with `all`, also those some parameters of which had no gradient.
  void launch(bool all) {
    while (next < buckets.size() && (all || buckets[next].pending == 0)) {
      buckets[next].wait = group.all_reduce_async(buckets[next].flat);
      ++next;
    }
  }

  void on_gradient(size_t i, const torch::Tensor& grad) {
    Param& p = params[i];
    Bucket& b = buckets[p.bucket];
    auto slot = b.flat.narrow(0, p.offset, p.tensor.numel()).view(p.tensor.sizes());
    if (p.seen) {  // a second gradient in one step (two backward passes): only while its bucket waits
      if (b.wait) throw Error("a parameter received a gradient after its bucket was sent", "",
                              "distributed training supports one backward pass per step");
      slot.add_(grad);
      return;
    }
    slot.copy_(grad);
    p.seen = true;
    if (--b.pending == 0) launch(false);
  }
};

GradientReducer::GradientReducer(Group& group, const std::vector<std::pair<std::string, torch::Tensor>>& params,
                                 double bucket_mb)
    : impl_(std::make_unique<Impl>(group)) {
  Impl& r = *impl_;
  // Backward reaches the last-defined parameters first: buckets fill from the end. The first bucket holds about
  // 1 MB so that the first all-reduce starts early (DistributedDataParallel's choice), the others bucket_mb.
  const double cap = bucket_mb * 1e6;
  std::vector<std::vector<size_t>> members;
  double bytes = 0;
  torch::ScalarType type = torch::kFloat;
  for (auto it = params.rbegin(); it != params.rend(); ++it) {
    const torch::Tensor& t = it->second;
    if (!t.requires_grad()) continue;
    const double size = static_cast<double>(t.numel() * t.element_size());
    if (members.empty() || bytes + size > (members.size() == 1 ? std::min(cap, 1e6) : cap) || t.scalar_type() != type) {
      members.emplace_back();
      bytes = 0;
      type = t.scalar_type();
    }
    members.back().push_back(r.params.size());
    r.params.push_back({t, members.size() - 1, 0});
    bytes += size;
  }
  for (const auto& m : members) {
    Impl::Bucket b;
    int64_t numel = 0;
    for (size_t i : m) {
      r.params[i].offset = numel;
      numel += r.params[i].tensor.numel();
    }
    b.flat = torch::zeros({numel}, r.params[m.front()].tensor.options().requires_grad(false));
    b.members = m.size();
    r.buckets.push_back(std::move(b));
  }
  for (size_t i = 0; i < r.params.size(); ++i)
    r.hooks.push_back(r.params[i].tensor.register_hook([&r, i](const torch::Tensor& grad) { r.on_gradient(i, grad); }));
}

GradientReducer::~GradientReducer() {
  for (size_t i = 0; i < impl_->params.size(); ++i) impl_->params[i].tensor.remove_hook(impl_->hooks[i]);
}

void GradientReducer::prepare() {
  Impl& r = *impl_;
  for (auto& b : r.buckets) {
    b.flat.zero_();  // a parameter without a gradient this step adds zeros
    b.pending = b.members;
    b.wait = nullptr;
  }
  for (auto& p : r.params) p.seen = false;
  r.next = 0;
}

void GradientReducer::finish() {
  Impl& r = *impl_;
  const auto start = Clock::now();
  r.launch(true);
  auto used = torch::empty({static_cast<int64_t>(r.params.size())}, torch::kFloat);  // (P,) 1 where a rank had a gradient
  float* u = used.data_ptr<float>();
  for (size_t i = 0; i < r.params.size(); ++i) u[i] = r.params[i].seen;
  r.group.all_reduce(used);
  for (auto& b : r.buckets) {
    b.wait();
    b.flat.div_(r.group.world());
  }
  r.wait_s += std::chrono::duration<double>(Clock::now() - start).count();
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < r.params.size(); ++i) {
    if (u[i] == 0) continue;
    Impl::Param& p = r.params[i];
    const auto average = r.buckets[p.bucket].flat.narrow(0, p.offset, p.tensor.numel()).view(p.tensor.sizes());
    if (p.tensor.grad().defined())
      p.tensor.mutable_grad().copy_(average);
    else
      p.tensor.mutable_grad() = average.clone();
  }
}

double GradientReducer::bytes_per_step() const {
  double bytes = 0;
  for (const auto& b : impl_->buckets) bytes += static_cast<double>(b.flat.numel() * b.flat.element_size());
  return bytes;
}

double GradientReducer::wait_seconds() const { return impl_->wait_s; }
void GradientReducer::reset_wait_seconds() { impl_->wait_s = 0; }

// ---------------------------------------------------------------------------------------------------------------

namespace {

// Sum across ranks as an autograd function: every rank's output depends on every rank's input, so the gradient
// of an input is the sum of the output gradients of all ranks - another all-reduce, in the backward pass.
struct AllReduceSum : torch::autograd::Function<AllReduceSum> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x, Group* group) {
    ctx->saved_data["group"] = reinterpret_cast<int64_t>(group);
    torch::Tensor out = x.clone();
    group->all_reduce(out);
    return out;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto* group = reinterpret_cast<Group*>(ctx->saved_data["group"].toInt());
    torch::Tensor g = grads[0].contiguous().clone();
    group->all_reduce(g);
    return {g, torch::Tensor()};
  }
};

}  // namespace

torch::Tensor sync_batch_norm(Group& group, torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x) {
  // x: (N, C, *) -> (N, C, *)
  std::vector<int64_t> dims{0}, shape(static_cast<size_t>(x.dim()), 1);
  for (int64_t d = 2; d < x.dim(); ++d) dims.push_back(d);
  shape[1] = x.size(1);
  // Sums in double: the variance is E[x^2] - E[x]^2, which cancels badly in float. The count travels with them
  // (one all-reduce per layer); it is a constant, its gradient is dropped.
  const auto local = torch::stack({x.sum(dims, false, torch::kDouble), x.square().sum(dims, false, torch::kDouble),
                                   torch::full({x.size(1)}, static_cast<double>(x.numel() / x.size(1)),
                                               x.options().dtype(torch::kDouble))});
  const auto sums = AllReduceSum::apply(local, &group);  // (3, C)
  const double n = sums[2][0].item<double>();
  const auto mean = sums[0] / n, var = (sums[1] / n - mean.square()).clamp_min(0);
  if (bn.options.track_running_stats()) {  // as BatchNorm: the unbiased variance, momentum or a cumulative average
    torch::NoGradGuard no_grad;
    bn.num_batches_tracked += 1;
    const auto& m = bn.options.momentum();
    const double momentum = m ? *m : 1.0 / bn.num_batches_tracked.item<double>();
    bn.running_mean.mul_(1 - momentum).add_(mean.to(bn.running_mean.scalar_type()), momentum);
    bn.running_var.mul_(1 - momentum).add_((var * (n / std::max(1.0, n - 1))).to(bn.running_var.scalar_type()), momentum);
  }
  const auto invstd = (var + bn.options.eps()).rsqrt().to(x.scalar_type());
  auto y = (x - mean.to(x.scalar_type()).view(shape)) * invstd.view(shape);
  if (bn.options.affine()) y = y * bn.weight.view(shape) + bn.bias.view(shape);
  return y;
}

}  // namespace adafocus::dist
