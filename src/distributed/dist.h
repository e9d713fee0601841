// Data-parallel training over several processes and machines on PyTorch's own engine, c10d: a TCPStore rendezvous
// and a gloo process group (NCCL would take gloo's place where LibTorch has CUDA; this one has not). Processes are
// launched as PyTorch users launch them: torchrun (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
// MASTER_PORT), SLURM's srun (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, the master from SLURM_JOB_NODELIST) or
// `adafocus train --nproc N`. What each process does (its shard of the data, rank 0 alone writing) is the trainer's;
// this module only connects the processes, moves tensors between them and names the rank at fault when one fails.
//
// The c10d headers (and gloo's) stay in dist.cpp: only it pays for them.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace adafocus::dist {

/// Where this process sits among the processes of a job, as its launcher describes it.
struct Launch {
  int rank = 0, world = 1, local_rank = 0, local_world = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string launcher;           ///< "torchrun", "slurm", or "" (one process)
  bool agent_store = false;       ///< torchrun hosts the store itself (TORCHELASTIC_USE_AGENT_STORE)
  int restart = 0;                ///< torchrun's restart count: the store's key prefix

  /// Reads the environment: RANK/WORLD_SIZE (torchrun, or any launcher setting them) first, else SLURM's. A value
  /// that is not a number, or a rank outside the world, is an adafocus::Error naming the variable.
  static Launch from_env();
};

/// The processes on this machine according to the environment (LOCAL_WORLD_SIZE, SLURM_NTASKS_PER_NODE), 1 when
/// none is set or it is not a number: each process's default share of the cores.
int local_processes();

/// The processes of one job, connected. Every call is collective: all ranks make the same calls in the same order.
/// A failure (a rank died, hung past the timeout, or threw) becomes an adafocus::Error naming the rank at fault and
/// what it last reported, with the hint to --resume from the last checkpoint.
class Group {
 public:
  /// Rendezvous: rank 0 hosts a TCPStore at master_addr:master_port (torchrun's agent hosts it instead), every rank
  /// joins a gloo process group through it. Ranks that do not join within `timeout` are named in the error.
  Group(const Launch& launch, std::chrono::milliseconds timeout);
  ~Group();
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  int rank() const;
  int world() const;

  /// Sums `t` (contiguous, CPU or the group's device) across ranks, in place.
  void all_reduce(torch::Tensor& t);
  /// The same without waiting: the returned function waits (and throws as above).
  std::function<void()> all_reduce_async(torch::Tensor t);
  /// Rank `root`'s tensors copied into every rank's (same shapes).
  void broadcast(std::vector<torch::Tensor>& tensors, int root = 0);
  /// The ranks' tensors concatenated along dim 0 in rank order; the first dimension may differ between ranks,
  /// the others must not.
  torch::Tensor all_gather_rows(const torch::Tensor& t);
  /// Rank 0's `bytes` on every rank (what others pass is ignored): configs and checkpoints only rank 0 can read.
  std::string share(const std::string& bytes);
  /// Waits for every rank.
  void barrier();

  /// Where this rank is ("epoch 3 step 12"), kept for the message of a failure elsewhere.
  void report(const std::string& where);
  /// Leaves this rank's error for the others to name, and disconnects so that they stop at once. The group is
  /// unusable after it.
  void publish_error(const std::string& message);
  /// Turns a failed collective into the error described above; `during` says what was being done.
  [[noreturn]] void fail(const std::exception& cause, const std::string& during);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

/// Gradients averaged across ranks during the backward pass, as DistributedDataParallel does: the parameters are
/// cut into buckets (in reverse order of definition, the order in which backward reaches them; the first bucket
/// small so that communication starts early), a hook on each parameter copies its gradient into its bucket, and a
/// full bucket is all-reduced at once, in bucket order on every rank, while backward goes on. finish() waits for
/// them and writes the averages into .grad. A parameter without a gradient on this rank contributes zeros; one
/// without a gradient on any rank keeps none (the optimizer skips it, as in one process).
class GradientReducer {
 public:
  GradientReducer(Group& group, const std::vector<std::pair<std::string, torch::Tensor>>& params, double bucket_mb);
  ~GradientReducer();
  /// Before the backward pass of a step.
  void prepare();
  /// After it: every rank's gradients averaged into .grad.
  void finish();
  double bytes_per_step() const;       ///< gradient bytes all-reduced per step (each rank's payload)
  double wait_seconds() const;         ///< time spent in finish() waiting for communication, so far
  void reset_wait_seconds();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

/// Batch normalisation of `x` (N, C, ...) in training mode with statistics over the batch of every rank
/// (SyncBatchNorm): mean and variance from the all-reduced sums, running statistics updated as BatchNorm does,
/// gradients all-reduced in the backward pass. `bn` gives the affine parameters, eps, momentum and running buffers.
torch::Tensor sync_batch_norm(Group& group, torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x);

}  // namespace adafocus::dist
