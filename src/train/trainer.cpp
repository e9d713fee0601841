#include "train/trainer.h"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include <unistd.h>

#include "core/error.h"
#include "core/files.h"
#include "core/progress.h"
#include "methods/checkpoint.h"
#include "methods/registry.h"
#include "train/optimizer.h"

namespace adafocus::train {

namespace {

namespace fs = std::filesystem;

std::string under_root(const Config& c, const std::string& key) {
  const std::string path = c.get_string(key), root = c.get_string("data.root");
  return root.empty() || fs::path(path).is_absolute() ? path : (fs::path(root) / path).string();
}

// Keeps the metrics of epochs before `epoch`: a resumed run rewrites what came after its checkpoint.
std::vector<std::string> metrics_before(const std::string& path, int64_t epoch) {
  std::vector<std::string> kept;
  if (!fs::exists(path)) return kept;
  std::istringstream in(read_file(path));
  for (std::string line; std::getline(in, line);)
    if (!line.empty() && nlohmann::json::parse(line).at("epoch").get<int64_t>() < epoch) kept.push_back(line);
  return kept;
}

// Evaluate every train.eval_every epochs and in each of the last train.eval_last (official: 5 and 10), and at the
// end unless both are 0.
bool evaluates(const Config& c, int64_t epoch, int64_t epochs) {
  const int64_t every = c.get_int("train.eval_every"), last = c.get_int("train.eval_last");
  return (every > 0 && ((epoch + 1) % every == 0 || epoch + 1 == epochs)) || epoch >= epochs - last;
}

// Running sums of an epoch, kept in last.pt so that a resumed epoch logs what an uninterrupted one would. The
// method's statistics (MethodInfo::statistics, Losses::statistics) follow the fixed sums, in their declared order,
// averaged over the kStatisticSteps steps that reported them.
enum Sum { kLoss, kCorrect, kVideos, kIou, kVisible, kHits, kSpread, kGrad, kPolicySteps, kStatisticSteps, kSums };

// What the learned policy did in one training step, added to the epoch's sums: where its regions fell against the
// benchmark's ground truth (training view), how far apart they are, and how much gradient reached it. Diagnostics
// of a policy that does not learn (docs/benchmark.md).
void add_policy_step(const methods::Losses& losses, const data::Batch& batch, const data::VideoDataset& set,
                     const std::vector<torch::Tensor>& policy, int input_size, infer::OverlapMeter& overlap,
                     std::vector<double>& sums) {
  if (!losses.regions.defined()) return;
  overlap.clear();
  for (size_t i = 0; i < batch.samples.size(); ++i)
    overlap.add(batch.samples[i], set.entry(batch.indices[i]).path, losses.regions[static_cast<int64_t>(i)].cpu(),
                losses.region_frames[static_cast<int64_t>(i)]);
  if (overlap.iou_frames() > 0) {
    sums[kIou] += overlap.iou() * static_cast<double>(overlap.iou_frames());
    sums[kHits] += overlap.hits() * static_cast<double>(overlap.iou_frames());
    sums[kVisible] += static_cast<double>(overlap.iou_frames());
  }
  const auto r = losses.regions;  // (B, R, 4)
  const auto centres = torch::stack({r.select(2, 0) + r.select(2, 2) / 2, r.select(2, 1) + r.select(2, 3) / 2});
  sums[kSpread] += centres.std().item<double>() / input_size;
  double squares = 0;
  for (const auto& p : policy)
    if (p.grad().defined()) squares += p.grad().pow(2).sum().item<double>();
  sums[kGrad] += std::sqrt(squares);
  sums[kPolicySteps] += 1;
}

void add_statistics_step(const methods::Losses& losses, const methods::MethodInfo& info, std::vector<double>& sums) {
  if (losses.statistics.empty()) return;
  for (const auto& [name, value] : losses.statistics) {
    size_t i = 0;
    while (i < info.statistics.size() && info.statistics[i].name != name) ++i;
    TORCH_CHECK(i < info.statistics.size(), info.name, " reports a statistic its MethodInfo does not list: ", name);
    sums[kSums + i] += value.item<double>();
  }
  sums[kStatisticSteps] += 1;
}

// The progress display's running figures: loss and accuracy, and the statistics the method shows (AdaFocus V1's mean
// reward while PPO trains, AdaFuse's GFLOPs per frame and skipped channels).
std::string status(const std::vector<double>& sums, const methods::MethodInfo& info) {
  std::string s = fmt::format("loss {:.3f} acc {:.1f}%", sums[kLoss] / sums[kVideos], 100 * sums[kCorrect] / sums[kVideos]);
  if (sums[kStatisticSteps] > 0)
    for (size_t i = 0; i < info.statistics.size(); ++i)
      if (!info.statistics[i].display.empty())
        s += " " + fmt::format(fmt::runtime(info.statistics[i].display), sums[kSums + i] / sums[kStatisticSteps]);
  return s;
}

nlohmann::json scores_json(const infer::Evaluation& e) {
  nlohmann::json j{{"val_top1", e.scores.top1}, {"val_top5", e.scores.top5}, {"val_mean_class", e.scores.mean_class},
                   {"val_map", e.scores.map},   {"gflops", e.gflops()}};
  if (e.iou >= 0) j["val_iou"] = e.iou;
  if (e.region_spread >= 0) j["region_spread"] = e.region_spread;
  return j;
}

// Paper presets say model.from_scratch: false: the official code always starts from ImageNet weights, and its
// per-group learning rates assume them; a run without them is refused rather than silently started from random.
void check_initial_weights(const Config& c) {
  if (c.get_bool("model.from_scratch")) return;
  for (const std::string& section : methods::method_info(c.get_string("model.method")).pretrained) {
    const std::string key = "model." + section + ".weights", arch = c.get_string("model." + section + ".arch");
    if (!c.get_string(key).empty()) continue;
    const std::string source = arch == "mobilenet_v2" ? "the ImageNet MobileNetV2 of tonylins/pytorch-mobilenet-v2 "
                                                        "(mobilenet_v2.pth.tar) or torchvision's"
                                                      : "torchvision's ImageNet " + arch;
    throw Error(key + " is not set: this preset starts from ImageNet weights as the official code (" + source + ")",
                c.origin("model.from_scratch"),
                "convert them with `adafocus convert-weights --arch " + arch + " --input FILE --output " + section +
                    ".pth` and set " + key + "=" + section + ".pth, or set model.from_scratch=true to start from "
                    "random weights");
  }
}

// A checkpoint in the run folder (or --init), which only rank 0 reads: the others receive its bytes. With one
// process, simply the file.
methods::Checkpoint read_checkpoint(const std::string& path, dist::Group* group) {
  if (!group) return methods::load_checkpoint(path);
  const std::string bytes = group->share(group->rank() == 0 ? read_file(path) : "");
  if (group->rank() == 0) return methods::load_checkpoint(path);
  const std::string copy = (fs::temp_directory_path() / fmt::format("adafocus-{}-rank{}.pt", ::getpid(), group->rank())).string();
  write_file_atomic(copy, bytes, false);
  methods::Checkpoint c = methods::load_checkpoint(copy);
  fs::remove(copy);
  return c;
}

// The sums of every process (a copy; with one process, the sums).
std::vector<double> summed(const std::vector<double>& sums, dist::Group* group) {
  if (!group) return sums;
  auto t = torch::tensor(sums, torch::kDouble);
  group->all_reduce(t);
  return std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
}

// While alive, the backbones' BatchNorm2d layers normalise over every process's batch.
struct SyncBatchNorm {
  explicit SyncBatchNorm(dist::Group* group) {
    if (group) nn::set_batch_norm_sync([group](auto& bn, const auto& x) { return dist::sync_batch_norm(*group, bn, x); });
  }
  ~SyncBatchNorm() { nn::set_batch_norm_sync(nullptr); }
};

}  // namespace

std::vector<std::string> class_names(const Config& c) {
  const std::string index = under_root(c, "data.class_index");
  if (!c.get_string("data.class_index").empty() && fs::exists(index)) return io::read_class_index(index);
  int64_t largest = -1;
  for (const auto& e : io::read_list(under_root(c, "data.train_list"), io::parse_list_format(c.get_string("data.format"))).entries)
    for (int64_t l : e.labels) largest = std::max(largest, l);
  std::vector<std::string> names;
  for (int64_t i = 0; i <= largest; ++i) names.push_back("class " + std::to_string(i));
  return names;
}

Config stage_config(const Config& config, int64_t stage) {
  Config out = config;
  out.set("stage", std::to_string(stage), "stage " + std::to_string(stage));
  const std::string key = "train.stage" + std::to_string(stage);
  if (!out.has(key)) throw Error("no stage " + std::to_string(stage), config.origin("stage"), "stages are 0 to 3");
  for (const std::string& assignment : config.get_strings(key)) {
    if (assignment.rfind("train.stage", 0) == 0 || assignment.rfind("stage=", 0) == 0)
      throw Error("a stage's overrides cannot change the stages: '" + assignment + "'", config.origin(key));
    out.set(assignment, config.origin(key) + " (" + key + ")");
  }
  return out;
}

namespace {

// A checkpoint a run starts from (--init): it must be of the same method and, for a staged method's stage N > 0,
// of stage N - 1.
methods::Checkpoint checked_init(const std::string& path, const Config& config, dist::Group* group) {
  const int64_t stage = config.get_int("stage");
  if ((!group || group->rank() == 0) && !fs::exists(path))
    throw Error("no such checkpoint", path,
                stage > 0 ? fmt::format("stage {} starts from stage {}'s last.pt", stage, stage - 1) : "check --init");
  methods::Checkpoint c = read_checkpoint(path, group);
  if (c.config_yaml.empty()) return c;  // an official checkpoint: the model's own load checks its keys
  Config its = Config::defaults();
  its.merge_yaml(c.config_yaml, path);
  if (its.get_string("model.method") != config.get_string("model.method"))
    throw Error("a checkpoint of " + its.get_string("model.method") + ", not of " + config.get_string("model.method"),
                path, "--init takes a checkpoint of the method being trained");
  if (stage > 0 && its.get_int("stage") != stage - 1)
    throw Error(fmt::format("a checkpoint of stage {}: stage {} starts from stage {}'s", its.get_int("stage"), stage,
                            stage - 1),
                path, fmt::format("pass --init RUN/stage{}/last.pt", stage - 1));
  return c;
}

// One training run (one stage of a staged method) in its run folder: started or resumed, then epoch after epoch of
// steps, each epoch ending with its metrics line, maybe an evaluation, and the checkpoints.
class Run {
 public:
  Run(const Config& given, const TrainOptions& o)
      : o_(o),
        group_(o.group),
        writer_(!group_ || group_->rank() == 0),  // rank 0 alone reads and writes the run folder
        quiet_(o.quiet || !writer_),
        config_(given),  // train() has read RUN/config.yaml when resuming
        last_path_(o.run_dir + "/last.pt"),
        previous_path_(o.run_dir + "/previous.pt"),
        best_path_(o.run_dir + "/best.pt"),
        metrics_path_(o.run_dir + "/metrics.jsonl") {
    start_or_resume();
    build_model();
    make_loader();
    plan_schedule();
  }

  TrainSummary train() {
    const auto start = std::chrono::steady_clock::now();
    TrainSummary summary;
    for (int64_t epoch = state_.epoch; epoch < epochs_; ++epoch) {
      const auto epoch_start = std::chrono::steady_clock::now();
      double lr = 0;
      const std::vector<double> sums = train_epoch(epoch, lr);
      end_epoch(epoch, sums, lr, epoch_start, summary);
    }
    if (group_) group_->barrier();  // rank 0 hosts the store: nobody leaves while another still needs it
    summary.epochs = epochs_;
    summary.metric = metric_;
    summary.best_metric = state_.best_metric;
    summary.best_epoch = state_.best_epoch;
    summary.failures = loader_->failures();
    summary.seconds = seconds_since(start);
    return summary;
  }

 private:
  // The run folder: last.pt to resume from, or a new run (its config.yaml written, its initial weights checked).
  void start_or_resume() {
    if (o_.resume) {
      if (writer_ && !fs::exists(last_path_) && !fs::exists(previous_path_))
        throw Error("nothing to resume: no last.pt", o_.run_dir, "start the run without --resume");
      state_ = resume_state();
    } else {
      const int64_t stage = config_.get_int("stage");
      if (stage > 0 && o_.init.empty())
        throw Error(fmt::format("stage {} starts from the model of stage {}", stage, stage - 1), config_.origin("stage"),
                    fmt::format("pass --init RUN/stage{}/last.pt, or leave out stage= to train every stage", stage - 1));
      if (o_.init.empty()) check_initial_weights(config_);
      if (writer_) {
        fs::create_directories(o_.run_dir);
        config_.save(o_.run_dir + "/config.yaml");
      }
    }
    classes_ = o_.resume ? state_.classes : class_names(config_);
    if (classes_.empty())
      throw Error("no classes: the training list has no labels", under_root(config_, "data.train_list"));
  }

  // last.pt, or when it cannot be read (truncated, damaged) previous.pt, the checkpoint before it. Rank 0 decides.
  methods::Checkpoint resume_state() {
    std::string path = last_path_;
    if (writer_) {
      try {
        methods::Checkpoint c = methods::load_checkpoint(last_path_);
        if (!group_) return c;
      } catch (const Error& e) {
        if (!fs::exists(previous_path_)) throw;
        methods::Checkpoint previous;
        try {
          previous = methods::load_checkpoint(previous_path_);
        } catch (const Error&) {
          throw e;  // neither: the error of last.pt
        }
        // Set aside (not deleted, and not to become previous.pt at the next epoch's end).
        const std::string damaged = o_.run_dir + "/last.damaged.pt";
        std::error_code ec;
        if (fs::exists(last_path_)) fs::rename(last_path_, damaged, ec);
        fmt::print(stderr, "warning: {}: {}\n  resuming from {}, the checkpoint before it{}\n", e.where(), e.message(),
                   previous_path_, ec || !fs::exists(damaged) ? "" : " (the damaged one kept as " + damaged + ")");
        if (!group_) return previous;
        path = previous_path_;
      }
    }
    return read_checkpoint(group_ ? group_->share(path) : path, group_);
  }

  // The model as the run starts it (initialised, from --init, from ImageNet weights, or as last.pt left it), its
  // optimiser, and across processes the gradient reducer and synchronised batch norm.
  void build_model() {
    seed_ = static_cast<uint64_t>(config_.get_int("seed"));
    torch::manual_seed(seed_);  // initialisation
    method_ = methods::make_method(config_, static_cast<int64_t>(classes_.size()));
    info_ = &methods::method_info(config_.get_string("model.method"));
    sums_size_ = kSums + info_->statistics.size();
    if (!o_.resume && !o_.init.empty())
      nn::load_state_dict(*method_, methods::model_state(*method_, checked_init(o_.init, config_, group_)), o_.init);
    else if (!o_.resume)
      method_->load_pretrained(config_);
    method_->to(o_.device);
    optimizer_ = std::make_unique<Optimizer>(method_->param_groups(), OptimizerOptions::from_config(config_));
    if (o_.resume) {
      nn::load_state_dict(*method_, state_.model, last_path_);
      optimizer_->load_state(state_.optimizer);
    }
    if (group_) {
      // Every process starts from rank 0's weights (the same seed gives the same ones; this makes sure); its
      // BatchNorm statistics follow at the start of each epoch (share_buffers).
      std::vector<torch::Tensor> parameters = method_->parameters();
      group_->broadcast(parameters);
      reducer_ = std::make_unique<dist::GradientReducer>(*group_, method_->named_parameters().pairs(), o_.bucket_mb);
    }
    sync_bn_ = std::make_unique<SyncBatchNorm>(config_.get_bool("train.sync_bn") ? group_ : nullptr);
    for (const auto& g : method_->param_groups())  // the policy's gradient norm, for the log
      if (g.name.rfind("policy", 0) == 0)          // "policy" and its parts ("policy_bias", ...)
        for (const auto& named : g.params) policy_params_.push_back(named.second);
  }

  // The training videos, each process loading its share of every batch.
  void make_loader() {
    train_set_ = std::make_unique<data::VideoDataset>(data::DatasetOptions::from_config(config_, "data.train_list", true));
    data::LoaderOptions lo = data::LoaderOptions::from_config(config_, true);
    if (group_) {
      if (lo.batch_size % group_->world() != 0)
        throw Error(fmt::format("data.batch_size {} (the batch of all processes) does not split over {} processes",
                                lo.batch_size, group_->world()),
                    config_.origin("data.batch_size"), "use a multiple of the number of processes");
      lo.batch_size /= group_->world();
      lo.rank = group_->rank();
      lo.world = group_->world();
    }
    loader_ = std::make_unique<data::Loader>(*train_set_, lo);
    steps_ = loader_->batches_per_epoch();
    if (steps_ == 0)
      throw Error(fmt::format("{} training videos make no full batch of {}", train_set_->size(),
                              config_.get_int("data.batch_size")),
                  train_set_->options().list, "lower data.batch_size");
    input_size_ = static_cast<int>(config_.get_int("data.input_size"));
    overlap_ = std::make_unique<infer::OverlapMeter>(train_set_->options().list, input_size_, 0);  // training view
  }

  // Epochs, the learning-rate schedule, and when the policy joins (and, with train.policy_only, trains alone).
  void plan_schedule() {
    // train.schedule_videos: the epoch counts were set for that many training videos; on another training set they
    // scale so that the optimiser takes the same number of steps (computed here, not written back, so resuming agrees).
    epochs_ = config_.get_int("train.epochs");
    int64_t policy_from_epoch = config_.get_int("train.policy_from_epoch");
    if (const int64_t reference = config_.get_int("train.schedule_videos"); reference > 0) {
      const double factor = static_cast<double>(reference) / static_cast<double>(train_set_->size());
      epochs_ = std::max<int64_t>(1, std::llround(static_cast<double>(epochs_) * factor));
      policy_from_epoch = std::llround(static_cast<double>(policy_from_epoch) * factor);
      if (!quiet_)
        fmt::print(stderr, "schedule for {} training videos (train.schedule_videos {}): {} epochs{}\n",
                   train_set_->size(), reference, epochs_,
                   policy_from_epoch > 0 ? fmt::format(", policy from epoch {}", policy_from_epoch) : "");
    }
    schedule_ = config_.get_string("train.schedule");
    lr0_ = config_.get_float("train.lr"), warmup_ = config_.get_float("train.warmup"), clip_ = config_.get_float("train.clip_grad");
    lr_steps_ = config_.get_ints("train.lr_steps");
    checkpoint_every_ = config_.get_int("train.checkpoint_every");
    metric_ = config_.get_string("train.metric");
    if (metric_ != "map" && metric_ != "top1") throw Error("train.metric must be map or top1", config_.origin("train.metric"));
    context_.policy_from_epoch = policy_from_epoch;
    context_.stage = config_.get_int("stage");
    two_stages_ = config_.get_bool("train.policy_only") && policy_from_epoch > 0 && policy_from_epoch < epochs_;
    if (writer_) metrics_ = metrics_before(metrics_path_, state_.epoch);
  }

  // The epoch's steps (from where a resumed run stopped); the sums of every process, and the last rate in `lr`.
  std::vector<double> train_epoch(int64_t epoch, double& lr) {
    context_.epoch = epoch;
    context_.policy_only = two_stages_ && epoch >= context_.policy_from_epoch;
    // Two stages (train.policy_only) each have their own learning-rate schedule.
    const int64_t stage_start = context_.policy_only ? context_.policy_from_epoch : 0;
    const int64_t stage_epochs =
        !two_stages_ ? epochs_ : context_.policy_only ? epochs_ - stage_start : context_.policy_from_epoch;
    const int64_t first = epoch == state_.epoch ? state_.batch : 0;
    std::vector<double> sums(sums_size_, 0.0);
    if (epoch == state_.epoch && writer_)  // resumed within the epoch (checkpoints before the policy's sums have fewer)
      std::copy_n(state_.epoch_sums.begin(), std::min(sums_size_, state_.epoch_sums.size()), sums.begin());
    loader_->start_epoch(epoch, first);
    Progress progress(fmt::format("epoch {}/{}", epoch + 1, epochs_), steps_, "steps");
    method_->train();
    share_buffers();
    if (reducer_) reducer_->reset_wait_seconds();
    for (int64_t step = first; step < steps_; ++step) {
      lr = learning_rate(schedule_, lr0_, epoch - stage_start, step, steps_, stage_epochs, warmup_, lr_steps_);
      train_step(epoch, step, lr, sums);
      if (!quiet_) progress.update(step + 1, status(sums, *info_));
      if (checkpoint_every_ > 0 && (step + 1) % checkpoint_every_ == 0 && step + 1 < steps_) {
        const std::vector<double> all = summed(sums, group_);
        if (writer_) save(last_path_, epoch, step + 1, all);
      }
    }
    sums = summed(sums, group_);  // the epoch over every process's share
    if (!quiet_) progress.finish(status(sums, *info_));
    return sums;
  }

  // One optimisation step on the next batch, added to the epoch's sums.
  void train_step(int64_t epoch, int64_t step, double lr, std::vector<double>& sums) {
    if (group_) group_->report(fmt::format("epoch {} step {}", epoch + 1, step + 1));
    std::optional<data::Batch> batch = loader_->next();
    // Dropout and random patches draw from a stream fixed by (seed, epoch, step): resuming repeats them. Each
    // process draws its own for its share of the batch.
    const auto e = static_cast<uint64_t>(epoch), t = static_cast<uint64_t>(step);
    torch::manual_seed((group_ && group_->rank() > 0 ? Rng::derive(seed_, {e, t, static_cast<uint64_t>(group_->rank())})
                                                     : Rng::derive(seed_, {e, t})).next());
    const methods::Clips clips{batch->clips.to(o_.device),
                               batch->focus.defined() ? batch->focus.to(o_.device) : torch::Tensor()};
    const auto target = batch->target.to(o_.device);
    const methods::Losses losses = method_->loss(clips, target, context_);
    const double value = losses.total.item<double>();
    if (!std::isfinite(value))
      throw Error(fmt::format("the loss became {} at epoch {} step {}", value, epoch + 1, step + 1), o_.run_dir,
                  "lower train.lr or set train.clip_grad; last.pt still holds the last good state");
    optimizer_->zero_grad();
    if (reducer_) reducer_->prepare();
    losses.total.backward();
    if (reducer_) reducer_->finish();  // every process's gradients, averaged
    add_policy_step(losses, *batch, *train_set_, policy_params_, input_size_, *overlap_, sums);
    add_statistics_step(losses, *info_, sums);
    if (clip_ > 0) optimizer_->clip_grad_norm(clip_);
    optimizer_->step(lr);
    const int64_t b = target.size(0);
    sums[kLoss] += value * b;
    sums[kCorrect] += (losses.logits.argmax(1) == target).sum().item<double>();
    sums[kVideos] += b;
  }

  // The epoch's line in metrics.jsonl, the evaluation when it is due (and best.pt when it improves), and last.pt.
  void end_epoch(int64_t epoch, const std::vector<double>& sums, double lr,
                 std::chrono::steady_clock::time_point epoch_start, TrainSummary& summary) {
    nlohmann::json line{{"epoch", epoch}, {"lr", lr}, {"train_loss", sums[kLoss] / sums[kVideos]},
                        {"train_top1", 100 * sums[kCorrect] / sums[kVideos]},
                        {"epoch_s", seconds_since(epoch_start)}};  // a resumed epoch: since the resume
    if (sums[kStatisticSteps] > 0)
      for (size_t i = 0; i < info_->statistics.size(); ++i)
        line[info_->statistics[i].name] = sums[kSums + i] / sums[kStatisticSteps];
    if (reducer_) {  // the gradients' all-reduce: bytes each process sends into it per step, time waited for it
      line["processes"] = group_->world();
      line["allreduce_mb_per_step"] = reducer_->bytes_per_step() / 1e6;
      line["allreduce_wait_s"] = reducer_->wait_seconds();
    }
    if (sums[kPolicySteps] > 0) {  // the learned policy during this epoch's training steps
      line["policy_spread"] = sums[kSpread] / sums[kPolicySteps];
      line["policy_grad"] = sums[kGrad] / sums[kPolicySteps];
      if (sums[kVisible] > 0) {
        line["train_iou"] = sums[kIou] / sums[kVisible];
        line["train_hits"] = sums[kHits] / sums[kVisible];
      }
    }
    if (evaluates(config_, epoch, epochs_)) {
      share_buffers();
      infer::EvalOptions eval_options;
      eval_options.device = o_.device;
      eval_options.group = group_;
      summary.last = infer::evaluate(*method_, config_, eval_options);
      line.update(scores_json(summary.last));
      const double value = metric_ == "map" ? summary.last.scores.map : summary.last.scores.top1;
      if (value > state_.best_metric) {
        state_.best_metric = value;
        state_.best_epoch = epoch;
        if (writer_) save(best_path_, epoch + 1, 0, std::vector<double>(sums_size_, 0.0));
      }
      if (!quiet_)
        fmt::print(stderr, "  val top1 {:.2f}  mAP {:.2f}{}  ({:.3f} GFLOPs/video)\n", summary.last.scores.top1,
                   summary.last.scores.map, summary.last.iou >= 0 ? fmt::format("  IoU {:.3f}", summary.last.iou) : "",
                   summary.last.gflops());
    }
    if (writer_) {
      metrics_.push_back(line.dump());
      std::string text;
      for (const auto& l : metrics_) text += l + "\n";
      write_file_atomic(metrics_path_, text);  // before last.pt: a crash in between redoes this epoch's line
      save(last_path_, epoch + 1, 0, std::vector<double>(sums_size_, 0.0));
      if (o_.on_epoch) o_.on_epoch(line);
    }
  }

  // previous.pt: the checkpoint last.pt is about to replace, for a resume to fall back on if last.pt is damaged
  // later. A hard link (no copy), made under a temporary name and renamed, so that previous.pt is always whole.
  // Choice: one copy back - the disk holds two checkpoints, not more.
  void keep_previous() {
    if (!fs::exists(last_path_)) return;
    const std::string tmp = previous_path_ + ".tmp";
    std::error_code ec;
    fs::remove(tmp, ec);
    fs::create_hard_link(last_path_, tmp, ec);
    if (!ec) fs::rename(tmp, previous_path_, ec);
    if (ec) {  // e.g. a file system without hard links: the run goes on without the fallback
      if (!quiet_) fmt::print(stderr, "warning: cannot keep {}: {}\n", previous_path_, ec.message());
      fs::remove(tmp, ec);
    }
  }

  // A checkpoint of everything a resumed run needs: at `epoch`, `batch` steps into it, with the epoch's sums so far.
  void save(const std::string& path, int64_t epoch, int64_t batch, const std::vector<double>& sums) {
    state_.config_yaml = config_.to_yaml();
    state_.classes = classes_;
    state_.model = nn::state_dict(*method_);
    state_.optimizer = optimizer_->state();
    state_.epoch = epoch;
    state_.batch = batch;
    state_.epoch_sums = sums;
    if (path == last_path_) keep_previous();
    methods::save_checkpoint(path, state_);
  }

  // BatchNorm statistics that are not synchronised (train.sync_bn false, the policies' BatchNorm1d) drift apart
  // between processes: rank 0's are the model's (its checkpoints), and every process takes them at the start of an
  // epoch (frozen networks in eval mode use them while training) and before validation.
  void share_buffers() {
    if (!group_) return;
    std::vector<torch::Tensor> buffers = method_->buffers();
    group_->broadcast(buffers);
  }

  const TrainOptions& o_;
  dist::Group* const group_;
  const bool writer_, quiet_;
  Config config_;
  const std::string last_path_, previous_path_, best_path_, metrics_path_;
  methods::Checkpoint state_;
  std::vector<std::string> classes_, metrics_;
  uint64_t seed_ = 0;
  methods::Method method_;
  const methods::MethodInfo* info_ = nullptr;
  size_t sums_size_ = kSums;
  std::unique_ptr<Optimizer> optimizer_;
  std::unique_ptr<dist::GradientReducer> reducer_;
  std::unique_ptr<SyncBatchNorm> sync_bn_;
  std::vector<torch::Tensor> policy_params_;
  std::unique_ptr<data::VideoDataset> train_set_;
  std::unique_ptr<data::Loader> loader_;
  std::unique_ptr<infer::OverlapMeter> overlap_;
  int input_size_ = 0;
  int64_t steps_ = 0, epochs_ = 0, checkpoint_every_ = 0;
  std::string schedule_, metric_;
  double lr0_ = 0, warmup_ = 0, clip_ = 0;
  std::vector<int64_t> lr_steps_;
  methods::StepContext context_;
  bool two_stages_ = false;
};

TrainSummary train_one(const Config& config, const TrainOptions& o) { return Run(config, o).train(); }

}  // namespace

TrainSummary train(const Config& given, const TrainOptions& o) {
  Config config = given;
  const bool writer = !o.group || o.group->rank() == 0;
  // Two runs writing one folder would overwrite each other's checkpoints: the first one holds it.
  std::optional<FolderLock> lock;
  if (writer) lock.emplace(o.run_dir, "wait for that run to end, or train into another folder");
  if (o.resume) {
    const std::string path = o.run_dir + "/config.yaml";
    if (writer && !fs::exists(path))
      throw Error("nothing to resume: no config.yaml", o.run_dir, "start the run without --resume");
    config = Config::defaults();
    config.merge_yaml(o.group ? o.group->share(writer ? read_file(path) : "") : read_file(path), path);
  }
  const int64_t stages = methods::method_info(config.get_string("model.method"), config.origin("model.method")).stages,
                stage = config.get_int("stage");
  if (stages == 1 && stage != -1)
    throw Error(config.get_string("model.method") + " trains in one stage", config.origin("stage"), "leave out stage=");
  if (stage < -1 || stage >= stages)
    throw Error(fmt::format("{} trains in stages 0 to {}", config.get_string("model.method"), stages - 1),
                config.origin("stage"));
  if (stages == 1) return train_one(config, o);
  if (stage >= 0) return train_one(o.resume ? config : stage_config(config, stage), o);

  // Every stage in turn, each in its own folder from the previous one's last.pt. The stages' overrides are checked
  // before the first one trains.
  std::vector<Config> per_stage;
  for (int64_t s = 0; s < stages; ++s) per_stage.push_back(stage_config(config, s));
  if (!o.resume) {
    check_initial_weights(config);
    if (writer) {
      fs::create_directories(o.run_dir);
      config.save(o.run_dir + "/config.yaml");
    }
  }
  TrainSummary summary;
  double seconds = 0;
  for (int64_t s = 0; s < stages; ++s) {
    TrainOptions so = o;
    so.run_dir = fmt::format("{}/stage{}", o.run_dir, s);
    const bool exists = writer && fs::exists(so.run_dir + "/last.pt");
    so.resume = (o.group ? o.group->share(exists ? "1" : "0") : exists ? "1" : "0") == "1";  // a finished stage resumes to its end at once
    so.init = s == 0 ? o.init : fmt::format("{}/stage{}/last.pt", o.run_dir, s - 1);
    if (!o.quiet && writer) fmt::print(stderr, "== stage {} of 0-{} ({}) ==\n", s, stages - 1, so.run_dir);
    summary = train_one(per_stage[static_cast<size_t>(s)], so);
    seconds += summary.seconds;
  }
  summary.seconds = seconds;
  return summary;
}

}  // namespace adafocus::train
