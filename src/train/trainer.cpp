#include "train/trainer.h"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include <unistd.h>

#include "core/error.h"
#include "core/files.h"
#include "core/progress.h"
#include "methods/checkpoint.h"
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

// Running sums of an epoch, kept in last.pt so that a resumed epoch logs what an uninterrupted one would.
enum Sum { kLoss, kCorrect, kVideos, kIou, kVisible, kHits, kSpread, kGrad, kPolicySteps, kPpoSteps, kSums };

// Statistics methods report among their loss terms, averaged per epoch over the steps that report them into
// metrics.jsonl: AdaFocus V1's PPO and AdaFuse's gates. Their running sums follow the fixed ones above in last.pt:
// PPO's first, counted in kPpoSteps (the layout of earlier last.pt files), then the gates' and their count.
struct TermGroup {
  std::vector<std::string> names;
  size_t first, count;  // slots of the first sum and of the step count
};
const std::vector<TermGroup>& term_groups() {
  static const std::vector<TermGroup> groups{
      {{"ppo_reward", "ppo_advantage", "ppo_entropy", "ppo_clip_fraction", "ppo_value_loss"}, kSums, kPpoSteps},
      {{"gflops", "gflops_upb", "kept", "reused", "skipped"}, kSums + 5, kSums + 10}};
  return groups;
}
constexpr size_t kAllSums = kSums + 11;

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

void add_term_step(const methods::Losses& losses, std::vector<double>& sums) {
  for (const TermGroup& g : term_groups()) {
    bool any = false;
    for (const auto& [name, value] : losses.terms)
      for (size_t i = 0; i < g.names.size(); ++i)
        if (name == g.names[i]) {
          sums[g.first + i] += value.item<double>();
          any = true;
        }
    sums[g.count] += any;
  }
}

// The progress display's running figures: loss and accuracy, the mean reward while PPO trains, AdaFuse's GFLOPs
// per frame and skipped channels.
std::string status(const std::vector<double>& sums) {
  std::string s = fmt::format("loss {:.3f} acc {:.1f}%", sums[kLoss] / sums[kVideos], 100 * sums[kCorrect] / sums[kVideos]);
  if (sums[kPpoSteps] > 0) s += fmt::format(" reward {:+.4f}", sums[kSums] / sums[kPpoSteps]);
  const TermGroup& gates = term_groups()[1];
  if (sums[gates.count] > 0)
    s += fmt::format(" GFLOPs {:.4g} skip {:.2f}", sums[gates.first] / sums[gates.count],
                     sums[gates.first + 4] / sums[gates.count]);
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
  const std::string method = c.get_string("model.method");
  const std::vector<std::string> sections = method == "full_frame" || method == "adafuse"
                                                ? std::vector<std::string>{"backbone"}
                                                : std::vector<std::string>{"glance", "local"};
  for (const std::string& section : sections) {
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

TrainSummary train_one(const Config& given, const TrainOptions& o) {
  const auto start_time = std::chrono::steady_clock::now();
  const std::string config_path = o.run_dir + "/config.yaml", last_path = o.run_dir + "/last.pt",
                    best_path = o.run_dir + "/best.pt", metrics_path = o.run_dir + "/metrics.jsonl";
  dist::Group* const group = o.group;
  const bool writer = !group || group->rank() == 0;  // rank 0 alone reads and writes the run folder
  const bool quiet = o.quiet || !writer;
  Config config = given;  // train() has read RUN/config.yaml when resuming
  methods::Checkpoint state;
  if (o.resume) {
    if (writer && !fs::exists(last_path))
      throw Error("nothing to resume: no last.pt", o.run_dir, "start the run without --resume");
    state = read_checkpoint(last_path, group);
  } else {
    const int64_t stage = config.get_int("stage");
    if (stage > 0 && o.init.empty())
      throw Error(fmt::format("stage {} starts from the model of stage {}", stage, stage - 1), config.origin("stage"),
                  fmt::format("pass --init RUN/stage{}/last.pt, or leave out stage= to train every stage", stage - 1));
    if (o.init.empty()) check_initial_weights(config);
    if (writer) {
      fs::create_directories(o.run_dir);
      config.save(config_path);
    }
  }
  const std::vector<std::string> classes = o.resume ? state.classes : class_names(config);
  if (classes.empty()) throw Error("no classes: the training list has no labels", under_root(config, "data.train_list"));

  const uint64_t seed = static_cast<uint64_t>(config.get_int("seed"));
  torch::manual_seed(seed);  // initialisation
  methods::Method method = methods::make_method(config, static_cast<int64_t>(classes.size()));
  if (!o.resume && !o.init.empty())
    nn::load_state_dict(*method, methods::model_state(*method, checked_init(o.init, config, group)), o.init);
  else if (!o.resume)
    method->load_pretrained(config);
  method->to(o.device);

  Optimizer optimizer(method->param_groups(), OptimizerOptions::from_config(config));
  if (o.resume) {
    nn::load_state_dict(*method, state.model, last_path);
    optimizer.load_state(state.optimizer);
  }
  std::unique_ptr<dist::GradientReducer> reducer;
  if (group) {
    // Every process starts from rank 0's weights (the same seed gives the same ones; this makes sure); its
    // BatchNorm statistics follow at the start of each epoch (share_buffers).
    std::vector<torch::Tensor> parameters = method->parameters();
    group->broadcast(parameters);
    reducer = std::make_unique<dist::GradientReducer>(*group, method->named_parameters().pairs(), o.bucket_mb);
  }
  const SyncBatchNorm sync_bn(config.get_bool("train.sync_bn") ? group : nullptr);

  data::VideoDataset train_set(data::DatasetOptions::from_config(config, "data.train_list", true));
  data::LoaderOptions loader_options = data::LoaderOptions::from_config(config, true);
  if (group) {
    if (loader_options.batch_size % group->world() != 0)
      throw Error(fmt::format("data.batch_size {} (the batch of all processes) does not split over {} processes",
                              loader_options.batch_size, group->world()),
                  config.origin("data.batch_size"), "use a multiple of the number of processes");
    loader_options.batch_size /= group->world();
    loader_options.rank = group->rank();
    loader_options.world = group->world();
  }
  data::Loader loader(train_set, loader_options);
  const int64_t steps = loader.batches_per_epoch();
  if (steps == 0)
    throw Error(fmt::format("{} training videos make no full batch of {}", train_set.size(),
                            config.get_int("data.batch_size")),
                train_set.options().list, "lower data.batch_size");
  // train.schedule_videos: the epoch counts were set for that many training videos; on another training set they
  // scale so that the optimiser takes the same number of steps (computed here, not written back, so resuming agrees).
  int64_t epochs = config.get_int("train.epochs"), policy_from_epoch = config.get_int("train.policy_from_epoch");
  if (const int64_t reference = config.get_int("train.schedule_videos"); reference > 0) {
    const double factor = static_cast<double>(reference) / static_cast<double>(train_set.size());
    epochs = std::max<int64_t>(1, std::llround(static_cast<double>(epochs) * factor));
    policy_from_epoch = std::llround(static_cast<double>(policy_from_epoch) * factor);
    if (!quiet)
      fmt::print(stderr, "schedule for {} training videos (train.schedule_videos {}): {} epochs{}\n", train_set.size(),
                 reference, epochs, policy_from_epoch > 0 ? fmt::format(", policy from epoch {}", policy_from_epoch) : "");
  }
  const double lr0 = config.get_float("train.lr"), warmup = config.get_float("train.warmup"),
               clip = config.get_float("train.clip_grad");
  const std::string schedule = config.get_string("train.schedule"), metric = config.get_string("train.metric");
  const std::vector<int64_t> lr_steps = config.get_ints("train.lr_steps");
  if (metric != "map" && metric != "top1") throw Error("train.metric must be map or top1", config.origin("train.metric"));
  const int64_t checkpoint_every = config.get_int("train.checkpoint_every");
  const int input_size = static_cast<int>(config.get_int("data.input_size"));
  infer::OverlapMeter train_overlap(train_set.options().list, input_size, 0);  // training view
  std::vector<torch::Tensor> policy_params;  // the gradient norm the log reports
  for (const auto& group : method->param_groups())
    if (group.name.rfind("policy", 0) == 0)  // "policy" and its parts ("policy_bias", ...)
      for (const auto& named : group.params) policy_params.push_back(named.second);
  methods::StepContext context;
  context.policy_from_epoch = policy_from_epoch;
  context.stage = config.get_int("stage");
  const bool two_stages = config.get_bool("train.policy_only") && context.policy_from_epoch > 0 &&
                          context.policy_from_epoch < epochs;

  std::vector<std::string> metrics = writer ? metrics_before(metrics_path, state.epoch) : std::vector<std::string>();
  auto save = [&](const std::string& path, int64_t epoch, int64_t batch, const std::vector<double>& sums) {
    state.config_yaml = config.to_yaml();
    state.classes = classes;
    state.model = nn::state_dict(*method);
    state.optimizer = optimizer.state();
    state.epoch = epoch;
    state.batch = batch;
    state.epoch_sums = sums;
    methods::save_checkpoint(path, state);
  };

  // BatchNorm statistics that are not synchronised (train.sync_bn false, the policies' BatchNorm1d) drift apart
  // between processes: rank 0's are the model's (its checkpoints), and every process takes them at the start of an
  // epoch (frozen networks in eval mode use them while training) and before validation.
  auto share_buffers = [&] {
    if (!group) return;
    std::vector<torch::Tensor> buffers = method->buffers();
    group->broadcast(buffers);
  };
  TrainSummary summary;
  infer::EvalOptions eval_options;
  eval_options.device = o.device;
  eval_options.group = group;
  for (int64_t epoch = state.epoch; epoch < epochs; ++epoch) {
    context.epoch = epoch;
    context.policy_only = two_stages && epoch >= context.policy_from_epoch;
    // Two stages (train.policy_only) each have their own learning-rate schedule.
    const int64_t stage_start = context.policy_only ? context.policy_from_epoch : 0;
    const int64_t stage_epochs = !two_stages ? epochs : context.policy_only ? epochs - stage_start : context.policy_from_epoch;
    const int64_t first = epoch == state.epoch ? state.batch : 0;
    std::vector<double> sums(kAllSums, 0.0);
    if (epoch == state.epoch && writer)  // resumed within the epoch (checkpoints before the policy's sums have only 3)
      std::copy_n(state.epoch_sums.begin(), std::min(kAllSums, state.epoch_sums.size()), sums.begin());
    const auto epoch_start = std::chrono::steady_clock::now();
    loader.start_epoch(epoch, first);
    Progress progress(fmt::format("epoch {}/{}", epoch + 1, epochs), steps, "steps");
    method->train();
    share_buffers();
    if (reducer) reducer->reset_wait_seconds();
    double lr = 0;
    for (int64_t step = first; step < steps; ++step) {
      if (group) group->report(fmt::format("epoch {} step {}", epoch + 1, step + 1));
      std::optional<data::Batch> batch = loader.next();
      // Dropout and random patches draw from a stream fixed by (seed, epoch, step): resuming repeats them. Each
      // process draws its own for its share of the batch.
      const auto e = static_cast<uint64_t>(epoch), t = static_cast<uint64_t>(step);
      torch::manual_seed((group && group->rank() > 0 ? Rng::derive(seed, {e, t, static_cast<uint64_t>(group->rank())})
                                                     : Rng::derive(seed, {e, t})).next());
      lr = learning_rate(schedule, lr0, epoch - stage_start, step, steps, stage_epochs, warmup, lr_steps);
      const methods::Clips clips{batch->clips.to(o.device),
                                 batch->focus.defined() ? batch->focus.to(o.device) : torch::Tensor()};
      const auto target = batch->target.to(o.device);
      const methods::Losses losses = method->loss(clips, target, context);
      const double value = losses.total.item<double>();
      if (!std::isfinite(value))
        throw Error(fmt::format("the loss became {} at epoch {} step {}", value, epoch + 1, step + 1), o.run_dir,
                    "lower train.lr or set train.clip_grad; last.pt still holds the last good state");
      optimizer.zero_grad();
      if (reducer) reducer->prepare();
      losses.total.backward();
      if (reducer) reducer->finish();  // every process's gradients, averaged
      add_policy_step(losses, *batch, train_set, policy_params, input_size, train_overlap, sums);
      add_term_step(losses, sums);
      if (clip > 0) optimizer.clip_grad_norm(clip);
      optimizer.step(lr);
      const int64_t b = target.size(0);
      sums[kLoss] += value * b;
      sums[kCorrect] += (losses.logits.argmax(1) == target).sum().item<double>();
      sums[kVideos] += b;
      if (!quiet) progress.update(step + 1, status(sums));
      if (checkpoint_every > 0 && (step + 1) % checkpoint_every == 0 && step + 1 < steps) {
        const std::vector<double> all = summed(sums, group);
        if (writer) save(last_path, epoch, step + 1, all);
      }
    }
    sums = summed(sums, group);  // the epoch over every process's share
    if (!quiet) progress.finish(status(sums));

    nlohmann::json line{{"epoch", epoch}, {"lr", lr}, {"train_loss", sums[kLoss] / sums[kVideos]},
                        {"train_top1", 100 * sums[kCorrect] / sums[kVideos]},
                        {"epoch_s", seconds_since(epoch_start)}};  // a resumed epoch: since the resume
    for (const TermGroup& g : term_groups())
      if (sums[g.count] > 0)
        for (size_t i = 0; i < g.names.size(); ++i) line[g.names[i]] = sums[g.first + i] / sums[g.count];
    if (reducer) {  // the gradients' all-reduce: bytes each process sends into it per step, time waited for it
      line["processes"] = group->world();
      line["allreduce_mb_per_step"] = reducer->bytes_per_step() / 1e6;
      line["allreduce_wait_s"] = reducer->wait_seconds();
    }
    if (sums[kPolicySteps] > 0) {  // the learned policy during this epoch's training steps
      line["policy_spread"] = sums[kSpread] / sums[kPolicySteps];
      line["policy_grad"] = sums[kGrad] / sums[kPolicySteps];
      if (sums[kVisible] > 0) {
        line["train_iou"] = sums[kIou] / sums[kVisible];
        line["train_hits"] = sums[kHits] / sums[kVisible];
      }
    }
    if (evaluates(config, epoch, epochs)) {
      share_buffers();
      summary.last = infer::evaluate(*method, config, eval_options);
      line.update(scores_json(summary.last));
      const double value = metric == "map" ? summary.last.scores.map : summary.last.scores.top1;
      if (value > state.best_metric) {
        state.best_metric = value;
        state.best_epoch = epoch;
        if (writer) save(best_path, epoch + 1, 0, std::vector<double>(kAllSums, 0.0));
      }
      if (!quiet)
        fmt::print(stderr, "  val top1 {:.2f}  mAP {:.2f}{}  ({:.3f} GFLOPs/video)\n", summary.last.scores.top1,
                   summary.last.scores.map, summary.last.iou >= 0 ? fmt::format("  IoU {:.3f}", summary.last.iou) : "",
                   summary.last.gflops());
    }
    if (writer) {
      metrics.push_back(line.dump());
      std::string text;
      for (const auto& l : metrics) text += l + "\n";
      write_file_atomic(metrics_path, text);  // before last.pt: a crash in between redoes this epoch's line
      save(last_path, epoch + 1, 0, std::vector<double>(kAllSums, 0.0));
    }
  }
  if (group) group->barrier();  // rank 0 hosts the store: nobody leaves while another still needs it
  summary.epochs = epochs;
  summary.metric = metric;
  summary.best_metric = state.best_metric;
  summary.best_epoch = state.best_epoch;
  summary.failures = loader.failures();
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_time).count();
  return summary;
}

}  // namespace

TrainSummary train(const Config& given, const TrainOptions& o) {
  Config config = given;
  const bool writer = !o.group || o.group->rank() == 0;
  if (o.resume) {
    const std::string path = o.run_dir + "/config.yaml";
    if (writer && !fs::exists(path))
      throw Error("nothing to resume: no config.yaml", o.run_dir, "start the run without --resume");
    config = Config::defaults();
    config.merge_yaml(o.group ? o.group->share(writer ? read_file(path) : "") : read_file(path), path);
  }
  const int64_t stages = methods::training_stages(config.get_string("model.method")), stage = config.get_int("stage");
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
