#include "serve/server.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/error.h"
#include "core/files.h"
#include "core/progress.h"
#include "infer/predictor.h"
#include "io/video_reader.h"
#include "serve/batcher.h"
#include "serve/controller.h"
#include "serve/http.h"
#include "serve/metrics.h"
#include "serve/streams.h"
#include "serve/upload.h"

namespace adafocus::serve {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

// A fixed set of threads working through a queue (the decoding pool).
class Workers {
 public:
  explicit Workers(int threads) {
    for (int i = 0; i < std::max(1, threads); ++i)
      threads_.emplace_back([this] {
        while (true) {
          std::function<void()> task;
          {
            std::unique_lock<std::mutex> lock(mutex_);
            wake_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
            if (tasks_.empty()) return;
            task = std::move(tasks_.front());
            tasks_.pop_front();
          }
          task();
        }
      });
  }
  ~Workers() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
  }
  void post(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      tasks_.push_back(std::move(task));
    }
    wake_.notify_one();
  }

 private:
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> tasks_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

// Everything a request needs: the model, its budgets, the pools, the controller, the metrics.
class App {
 public:
  App(const ServeOptions& options) : options_(options) {
    model_ = methods::load_model(options.checkpoint, options.preset, options.overrides, options.device);
    const Config& c = model_.config;
    method_name_ = c.get_string("model.method");
    data_ = infer::prediction_options(model_);
    flops_ = infer::method_flops(*model_.method, c.get_int("data.segments"), c.get_int("data.focus_segments"),
                                 c.get_int("data.input_size"));
    make_levels();
    if (!options.api_key_file.empty()) {
      api_key_ = read_file(options.api_key_file);
      api_key_.erase(api_key_.find_last_not_of(" \n\r\t") + 1);
      if (api_key_.empty()) throw Error("the API key file is empty", options.api_key_file);
    }
    declare_metrics();
    ControllerOptions co;
    co.slo_seconds = options.slo_ms / 1e3;
    co.min_level = min_level_;
    co.decoders = options.decode_threads;
    controller_ = std::make_unique<BudgetController>(levels_, co);
    BatcherOptions bo;
    bo.max_batch = options.max_batch;
    bo.max_delay = std::chrono::microseconds(static_cast<int64_t>(options.max_delay_ms * 1e3));
    bo.device = options.device;
    bo.precision = options.precision;
    bo.exit_gflops = flops_.exits;
    batcher_ =
        std::make_unique<Batcher>(model_, bo, [this](int64_t n, double g, double s, const std::vector<int64_t>& exits) {
          controller_->observe_batch(n, g, s);
          metrics_.observe("adafocus_batch_size", {}, static_cast<double>(n));
          for (int64_t e : exits) metrics_.add("adafocus_exits_total", {{"exit", std::to_string(e)}});
          metrics_.add("adafocus_gflops_total", {}, g);
          metrics_.add("adafocus_videos_total", {}, static_cast<double>(n));
        });
    decoders_ = std::make_unique<Workers>(options.decode_threads);
    streams_ = std::make_unique<Streams>(
        StreamsOptions{options.media_root, options.max_streams, options.max_frames, options.max_pixels},
        [this](data::Sample sample, double budget, StreamAnswer answer) {
          return submit_stream(std::move(sample), budget, std::move(answer));
        },
        [this](double budget) { level_for(budget, "budget"); }, data_);
  }

  ~App() {
    streams_.reset();
    decoders_.reset();
    batcher_.reset();
  }

  // Timed runs at the dearest and the cheapest level, so that the controller's cost model starts from measurements.
  void warm_up() {
    const Config& c = model_.config;
    const int64_t s = c.get_int("data.input_size"), focus = c.get_int("data.focus_segments");
    const methods::Clips clips{
        torch::zeros({options_.max_batch, c.get_int("data.segments"), 3, s, s}, options_.device),
        focus > 0 ? torch::zeros({options_.max_batch, focus, 3, s, s}, options_.device) : torch::Tensor()};
    infer::ExitRule first{infer::Criterion::Entropy, std::vector<double>(flops_.exits.size(), -1e30)};  // all at exit 0
    torch::NoGradGuard no_grad;
    infer::PrecisionGuard precision(options_.precision);
    for (int round = 0; round < 3; ++round)
      for (const bool cheapest : {false, true}) {
        const std::vector<const infer::ExitRule*> rules(static_cast<size_t>(options_.max_batch),
                                                        cheapest ? &first : nullptr);
        const auto start = Clock::now();
        infer::run_adaptive(*model_.method, clips, rules, false);
        const double gflops =
            static_cast<double>(options_.max_batch) * (cheapest ? flops_.exits.front() : flops_.exits.back());
        if (round > 0) controller_->observe_batch(options_.max_batch, gflops, seconds_since(start));
      }
    ready_ = true;
  }

  void handle(HttpRequest request, Respond respond) {
    const auto arrived = Clock::now();
    const std::string endpoint = endpoint_of(request);
    Respond counted = [this, respond = std::move(respond), endpoint, arrived](HttpResponse r) {
      metrics_.add("adafocus_requests_total", {{"endpoint", endpoint}, {"status", std::to_string(r.status)}});
      if (!r.next_chunk) metrics_.observe("adafocus_request_seconds", {{"endpoint", endpoint}}, seconds_since(arrived));
      respond(std::move(r));
    };
    try {
      route(request, counted);
    } catch (const HttpError& r) {
      counted(error_response(r));
    } catch (const Error& e) {
      counted(error_response({400, e.what()}));
    } catch (const std::exception& e) {
      counted(error_response({500, std::string("internal error: ") + e.what()}));
    }
  }

  /// Stops taking new work; returns once every request admitted is answered and the streams have ended.
  void drain() {
    draining_ = true;
    streams_->stop_all();
    std::unique_lock<std::mutex> lock(flight_mutex_);
    flight_done_.wait_for(lock, std::chrono::seconds(60), [this] { return in_flight_ == 0; });
  }

 private:
  void make_levels() {
    const int64_t exits = model_.method->exits();
    infer::ExitTable table;
    bool calibrated = false;
    if (exits > 1 && (!options_.thresholds.empty() || !model_.exits_json.empty())) {
      table = options_.thresholds.empty()
                  ? infer::ExitTable::from_json(model_.exits_json, options_.checkpoint + " (its thresholds)")
                  : infer::ExitTable::from_json(read_file(options_.thresholds), options_.thresholds);
      calibrated = !table.budgets.empty();
    }
    if (calibrated) {
      // Choice: the levels are the settings for_budget() can pick - the calibrated budgets and the sweep's points on
      // the accuracy/GFLOPs front, each more accurate than every cheaper one - and, below them, everyone leaving at
      // the first exit. So the dearest level within a budget is the very setting `predict --budget` takes for it,
      // and the load moves the budget in the finest steps calibrated.
      std::vector<infer::ExitSetting> settings = table.budgets;
      settings.insert(settings.end(), table.sweep.begin(), table.sweep.end());
      std::stable_sort(settings.begin(), settings.end(),
                       [](const auto& a, const auto& b) { return a.gflops < b.gflops; });
      const infer::ExitSetting first = table.for_budget(0);  // nothing costs 0: everyone at the first exit
      if (settings.front().gflops > first.gflops * (1 + 1e-9)) add_level(first, table.criterion);
      double best = -1;
      for (const auto& s : settings)
        if (s.top1 > best) {
          add_level(s, table.criterion);
          best = s.top1;
        }
    } else {
      // One level: the model's cost, every exit run (a model without exits, or without calibrated budgets).
      levels_.push_back({flops_.report.gflops(), NAN});
      rules_.push_back(infer::ExitRule{});
    }
    calibrated_ = calibrated;
    default_level_ = options_.budget >= 0 ? level_for(options_.budget, "--budget") : levels_.size() - 1;
    min_level_ = options_.min_budget >= 0 ? level_for(options_.min_budget, "--min-budget") : 0;
  }

  void add_level(const infer::ExitSetting& s, infer::Criterion criterion) {
    levels_.push_back({s.gflops, s.top1});
    rules_.push_back(infer::ExitRule{criterion, s.thresholds});
  }

  // The level a budget asks for: the dearest not dearer than it.
  size_t level_for(double budget, const std::string& field) const {
    if (budget < levels_.front().gflops * (1 - 1e-9)) {
      if (!calibrated_)
        throw HttpError{400, fmt::format("{} {:.6g}: this model's cost is fixed at {:.6g} GFLOPs per video{}", field,
                                         budget, levels_.front().gflops,
                                         model_.method->exits() > 1 ? " (no calibrated budgets: run adafocus calibrate "
                                                                      "--embed on the checkpoint)"
                                                                    : "")};
      throw HttpError{400, fmt::format("{} {:.6g} is below the cheapest budget this model is calibrated for, {:.6g} "
                                       "GFLOPs per video (GET /v1/model lists them)",
                                       field, budget, levels_.front().gflops)};
    }
    size_t level = 0;
    while (level + 1 < levels_.size() && levels_[level + 1].gflops <= budget * (1 + 1e-9)) ++level;
    return level;
  }

  void declare_metrics() {
    using K = Metrics::Kind;
    const std::vector<double> seconds{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
    metrics_.declare("adafocus_requests_total", K::Counter, "Requests answered, by endpoint and status.");
    metrics_.declare("adafocus_request_seconds", K::Histogram, "Time from a request's arrival to its answer.", seconds);
    metrics_.declare("adafocus_stage_seconds", K::Histogram,
                     "Time of a prediction in each stage: queue (for its batch), decode, network.", seconds);
    metrics_.declare("adafocus_batch_size", K::Histogram, "Videos per batch.", {1, 2, 4, 8, 16, 32, 64});
    metrics_.declare("adafocus_exits_total", K::Counter, "Videos by the exit they left at.");
    metrics_.declare("adafocus_gflops_total", K::Counter, "GFLOPs spent on videos, as counted at their exits.");
    metrics_.declare("adafocus_videos_total", K::Counter, "Videos that went through the network.");
    metrics_.declare("adafocus_degraded_total", K::Counter, "Requests served below the budget they asked for.");
    metrics_.declare("adafocus_queue_depth", K::Gauge, "Requests admitted and not answered yet.");
    metrics_.declare("adafocus_budget_gflops", K::Gauge, "The budget in force (GFLOPs per video).");
    metrics_.declare("adafocus_streams", K::Gauge, "Live streams being classified.");
  }

  static std::string endpoint_of(const HttpRequest& r) {
    if (r.path.rfind("/v1/streams", 0) == 0) return "/v1/streams";
    for (const char* known : {"/v1/predict", "/v1/model", "/healthz", "/readyz", "/metrics"})
      if (r.path == known) return known;
    return "other";
  }

  void check_key(const HttpRequest& r) const {
    if (api_key_.empty()) return;
    auto header = [&](const std::string& name) {
      const auto it = r.headers.find(name);
      return it == r.headers.end() ? std::string() : it->second;
    };
    const std::string bearer = header("authorization"),
                      given = bearer.rfind("Bearer ", 0) == 0 ? bearer.substr(7) : header("x-api-key");
    // The comparison takes as long whatever matches, so that timing does not tell how much of a guess is right.
    bool same = given.size() == api_key_.size();
    unsigned char diff = 0;
    for (size_t i = 0; i < given.size(); ++i)
      diff |= static_cast<unsigned char>(given[i] ^ api_key_[i % api_key_.size()]);
    if (!same || diff != 0)
      throw HttpError{401,
                      "a valid API key is needed (Authorization: Bearer KEY, or X-API-Key: KEY)",
                      {{"WWW-Authenticate", "Bearer"}}};
  }

  void route(const HttpRequest& r, const Respond& respond) {
    if (r.path == "/healthz") return respond(json_response(200, {{"status", "ok"}}));
    if (r.path == "/readyz")
      return respond(json_response(ready_ && !draining_ ? 200 : 503,
                                   {{"ready", ready_.load() && !draining_}, {"draining", draining_.load()}}));
    check_key(r);
    if (r.path == "/metrics" && r.method == "GET") {
      metrics_.set("adafocus_queue_depth", {}, static_cast<double>(queue_depth()));
      metrics_.set("adafocus_budget_gflops", {}, levels_[controller_->level_in_force()].gflops);
      metrics_.set("adafocus_streams", {}, static_cast<double>(streams_->count()));
      HttpResponse out;
      out.content_type = "text/plain; version=0.0.4";
      out.body = metrics_.exposition();
      return respond(std::move(out));
    }
    if (r.path == "/v1/model" && r.method == "GET") return respond(json_response(200, model_json()));
    if (r.path == "/v1/predict") {
      if (r.method != "POST") throw HttpError{405, "POST the video to /v1/predict", {{"Allow", "POST"}}};
      return predict(r, respond);
    }
    if (r.path.rfind("/v1/streams", 0) == 0) return streams_->handle(r, respond, draining_);
    throw HttpError{404, "no such endpoint: " + r.method + " " + r.path};
  }

  json model_json() const {
    json levels = json::array();
    for (const Level& l : levels_)
      levels.push_back({{"gflops", l.gflops}, {"top1", std::isnan(l.top1) ? json() : json(l.top1)}});
    return {{"method", method_name_},
            {"checkpoint", options_.checkpoint},
            {"classes", model_.classes},
            {"exits", model_.method->exits()},
            {"exit_gflops", flops_.exits},
            {"full_gflops", flops_.report.gflops()},
            {"criterion", calibrated_ ? json(infer::criterion_name(rules_.front().criterion)) : json()},
            {"budgets", levels},
            {"default_budget", levels_[default_level_].gflops},
            {"min_budget", levels_[min_level_].gflops},
            {"budget_in_force", levels_[controller_->level_in_force()].gflops},
            {"slo_ms", options_.slo_ms}};
  }

  size_t queue_depth() const {
    std::lock_guard<std::mutex> lock(flight_mutex_);
    return in_flight_;
  }

  // Admits a request at a level (or refuses it: 503 with Retry-After); returns the admission, work accounted. An
  // upload is counted as decoding until decoded().
  Admission admit(size_t asked, bool degrade, bool upload) {
    std::lock_guard<std::mutex> lock(flight_mutex_);
    if (draining_) throw HttpError{503, "the server is shutting down", {{"Retry-After", "5"}}};
    if (static_cast<int64_t>(in_flight_) >= options_.queue)
      throw HttpError{503, fmt::format("the queue is full ({} requests; --queue)", in_flight_), {{"Retry-After", "1"}}};
    const Admission a = controller_->admit(asked, degrade, work_ahead_, upload ? decoding_ : 0, upload);
    if (!a.accepted)
      throw HttpError{503,
                      degrade
                          ? fmt::format("overloaded: even the cheapest allowed budget ({:.6g} GFLOPs) would answer in "
                                        "{:.0f} ms, over the {:.0f} ms objective",
                                        levels_[a.level].gflops, 1e3 * a.predicted, options_.slo_ms)
                          : fmt::format("overloaded: budget {:.6g} would answer in {:.0f} ms, over the {:.0f} ms "
                                        "objective, and degrade=false forbids a lower one",
                                        levels_[a.level].gflops, 1e3 * a.predicted, options_.slo_ms),
                      {{"Retry-After", fmt::format("{:.0f}", a.retry_after)}}};
    ++in_flight_;
    decoding_ += upload;
    work_ahead_ += controller_->video_seconds(a.level);
    return a;
  }

  void decoded(double seconds) {
    if (seconds >= 0) controller_->observe_decode(seconds);
    std::lock_guard<std::mutex> lock(flight_mutex_);
    --decoding_;
  }

  void finished(size_t level) {
    std::lock_guard<std::mutex> lock(flight_mutex_);
    --in_flight_;
    work_ahead_ = std::max(0.0, work_ahead_ - controller_->video_seconds(level));
    if (in_flight_ == 0) {
      work_ahead_ = 0;
      flight_done_.notify_all();
    }
  }

  void predict(const HttpRequest& r, const Respond& respond) {
    const Upload upload = parse_upload(r);
    const double budget = upload.budget.value_or(levels_[default_level_].gflops);
    const int64_t top_k = upload.top_k;
    const size_t asked = level_for(budget, "budget");
    const Admission admitted = admit(asked, upload.degrade, true);
    if (admitted.degraded) metrics_.add("adafocus_degraded_total", {});
    const auto arrived = Clock::now();
    batcher_->expect();
    decoders_->post([this, bytes = upload.video, name = upload.name, budget, top_k, admitted, arrived, respond] {
      auto once = std::make_shared<std::atomic<bool>>(false);
      auto answer = [this, once, level = admitted.level, respond](HttpResponse out) {
        if (once->exchange(true)) return;
        finished(level);
        respond(std::move(out));
      };
      auto job = std::make_shared<Job>();
      const auto decode_start = Clock::now();
      try {
        io::VideoReader reader(bytes, name);
        if (static_cast<int64_t>(reader.width()) * reader.height() > options_.max_pixels)
          throw HttpError{422,
                          fmt::format("frames of {}x{} are larger than this server takes ({} pixels; --max-pixels)",
                                      reader.width(), reader.height(), options_.max_pixels)};
        if (reader.num_frames() > options_.max_frames)
          throw HttpError{422, fmt::format("{} frames are more than this server takes ({}; --max-frames)",
                                           reader.num_frames(), options_.max_frames)};
        Rng unused(0);  // the test view draws nothing
        job->sample = data::load_clip(reader, name, data_, unused);
      } catch (const HttpError& refused) {
        decoded(-1);
        batcher_->unexpect();
        return answer(error_response(refused));
      } catch (const std::exception& e) {
        decoded(-1);
        batcher_->unexpect();
        return answer(error_response({400, std::string("cannot decode the upload: ") + e.what()}));
      }
      const double decode_ms = 1e3 * seconds_since(decode_start);
      decoded(decode_ms / 1e3);
      metrics_.observe("adafocus_stage_seconds", {{"stage", "decode"}}, decode_ms / 1e3);
      job->rule = &rules_[admitted.level];
      job->done = [this, job_ptr = job.get(), name, budget, top_k, admitted, arrived, decode_ms, answer](
                      const VideoResult* v, const std::string& error) {
        if (!v) return answer(error_response({500, "the network failed: " + error}));
        metrics_.observe("adafocus_stage_seconds", {{"stage", "queue"}}, v->queue_ms / 1e3);
        metrics_.observe("adafocus_stage_seconds", {{"stage", "network"}}, v->network_ms / 1e3);
        infer::VideoPrediction p =
            infer::video_prediction(model_, job_ptr->sample, v->logits, v->regions, v->region_frames, v->gflops);
        p.exit = v->exit;
        p.full_gflops = flops_.report.gflops();
        json out = infer::prediction_json(p, name, method_name_, static_cast<size_t>(top_k));
        out["budget"] = budget;
        out["budget_used"] = levels_[admitted.level].gflops;
        out["degraded"] = admitted.degraded;
        out["queue_ms"] = v->queue_ms;
        out["decode_ms"] = decode_ms;
        out["network_ms"] = v->network_ms;
        out["total_ms"] = 1e3 * seconds_since(arrived);
        answer(json_response(200, out));
      };
      batcher_->submit(job, true);
    });
  }

  // A stream's window: served like an upload at `budget` (degraded under load like any request).
  std::string submit_stream(data::Sample sample, double budget, StreamAnswer answer) {
    Admission admitted;
    try {
      admitted = admit(budget < 0 ? default_level_ : level_for(budget, "budget"), true, false);
    } catch (const HttpError& refused) {
      return refused.reason;  // the window is skipped; the stream says why
    }
    auto job = std::make_shared<Job>();
    job->sample = std::move(sample);
    job->rule = &rules_[admitted.level];
    job->done = [this, job_ptr = job.get(), admitted, answer](const VideoResult* v, const std::string& error) {
      finished(admitted.level);
      if (!v) return answer(nullptr, -1, error);
      infer::VideoPrediction p =
          infer::video_prediction(model_, job_ptr->sample, v->logits, v->regions, v->region_frames, v->gflops);
      p.exit = v->exit;
      answer(&p, levels_[admitted.level].gflops, "");
    };
    batcher_->submit(job);
    return "";
  }

 public:
  std::atomic<bool> ready_{false};

 private:
  const ServeOptions options_;
  methods::LoadedModel model_;
  std::string method_name_, api_key_;
  data::DatasetOptions data_;
  infer::MethodFlops flops_;
  std::vector<Level> levels_;
  std::vector<infer::ExitRule> rules_;  // per level
  bool calibrated_ = false;
  size_t default_level_ = 0, min_level_ = 0;
  Metrics metrics_;
  std::unique_ptr<BudgetController> controller_;
  std::unique_ptr<Batcher> batcher_;
  std::unique_ptr<Workers> decoders_;
  std::unique_ptr<Streams> streams_;
  std::atomic<bool> draining_{false};
  mutable std::mutex flight_mutex_;
  std::condition_variable flight_done_;
  size_t in_flight_ = 0;
  int64_t decoding_ = 0;   // uploads admitted and not decoded yet
  double work_ahead_ = 0;  // predicted network seconds of the requests admitted and not answered
};

void serve(ServeOptions options, const std::atomic<bool>& stop, const std::function<void(int)>& ready) {
  // Decoding an upload can cost more than the network (small models): by default it may use every core.
  if (options.decode_threads <= 0)
    options.decode_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  App app(options);
  HttpOptions ho;
  ho.host = options.host;
  ho.port = options.port;
  ho.max_body = static_cast<size_t>(options.max_upload_mb * (1 << 20));
  ho.read_timeout = std::chrono::milliseconds(static_cast<int64_t>(options.read_timeout_s * 1e3));
  HttpServer http(ho, [&app](HttpRequest r, Respond respond) { app.handle(std::move(r), std::move(respond)); });
  http.start();  // /healthz answers while the model warms up; /readyz once it has
  if (ready) ready(http.port());
  app.warm_up();
  while (!stop) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  http.stop_accepting();
  app.drain();
  http.wait_idle(std::chrono::seconds(10));
  http.stop();
}

}  // namespace adafocus::serve
