#include "serve/streams.h"

#include <fmt/format.h>

#include <condition_variable>
#include <deque>
#include <filesystem>
#include <thread>

#include "core/error.h"
#include "io/live_reader.h"

namespace adafocus::serve {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

bool is_url(const std::string& source) { return source.find("://") != std::string::npos; }

// Sleeps up to `seconds`, waking early when `stop` is set; false when stopped.
bool pause(double seconds, const std::atomic<bool>& stop) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (!stop && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  return !stop;
}

}  // namespace

json window_event(const Window& w, const infer::VideoPrediction* p, double budget_used, size_t top_k) {
  json event{{"event", "window"},          {"window", w.index}, {"first_frame", w.first_frame},
             {"last_frame", w.last_frame}, {"start", w.start},  {"end", w.end}};
  if (!p) return event;
  json top = json::array();
  for (size_t i = 0; i < std::min(p->classes.size(), top_k); ++i)
    top.push_back({{"label", p->classes[i].first}, {"score", p->classes[i].second}});
  event["top"] = top;
  event["gflops"] = p->gflops;
  if (p->exit >= 0) event["exit"] = p->exit;
  if (budget_used >= 0) event["budget_used"] = budget_used;
  return event;
}

void read_windows(const std::string& source, const WindowOptions& o, const data::DatasetOptions& data,
                  const std::atomic<bool>& stop, const std::function<void(Window&)>& on_window,
                  const std::function<void(const json&)>& on_event) {
  auto open = [&] {
    auto reader = std::make_unique<io::LiveReader>(source, o.realtime && !is_url(source), o.io_timeout, &stop);
    if (static_cast<int64_t>(reader->width()) * reader->height() > o.max_pixels)
      throw Error(fmt::format("frames of {}x{} are larger than this server takes ({} pixels)", reader->width(),
                              reader->height(), o.max_pixels),
                  source);
    return reader;
  };
  std::unique_ptr<io::LiveReader> reader = open();
  std::deque<std::pair<io::Image, double>> frames;  // the last `window` frames and their times
  int64_t seen = 0, windows = 0;
  int attempts = 0;
  double offset = 0;  // seconds before the current connection (a source opened again restarts its clock)
  std::string broke;  // why the source stopped
  while (!stop) {
    if (!reader) {  // a stream that broke or ended: opened again after a growing pause
      if (attempts >= o.max_attempts) {
        on_event({{"event", "failed"}, {"error", broke}, {"attempts", attempts}});
        return;
      }
      const double wait = 0.5 * static_cast<double>(1 << attempts++);
      on_event({{"event", "reconnecting"}, {"error", broke}, {"attempt", attempts}, {"in_s", wait}});
      if (!pause(wait, stop)) return;
      try {
        reader = open();
        offset = frames.empty() ? offset : frames.back().second;
        on_event({{"event", "reconnected"}, {"attempt", attempts}});
      } catch (const Error& e) {
        broke = e.what();
      }
      continue;
    }
    io::Image frame;
    double seconds = 0;
    bool got = false;
    try {
      got = reader->next(frame, seconds, data.short_side);
      broke = got ? "" : "the stream ended";
    } catch (const Error& e) {
      broke = e.what();
    }
    if (stop) return;
    if (!got) {
      if (broke == "the stream ended" && !is_url(source)) return;  // a file ends
      reader.reset();
      continue;
    }
    attempts = 0;
    frames.emplace_back(std::move(frame), offset + seconds);
    if (static_cast<int64_t>(frames.size()) > o.window) frames.pop_front();
    ++seen;
    if (seen < o.window || (seen - o.window) % o.stride != 0) continue;
    std::vector<io::Image> images;
    for (const auto& f : frames) images.push_back(f.first);
    io::FrameList list(std::move(images));
    Rng unused(0);  // the test view draws nothing
    Window w;
    w.index = windows++;
    w.first_frame = seen - o.window;
    w.last_frame = seen - 1;
    w.start = frames.front().second;
    w.end = frames.back().second;
    w.sample = data::load_clip(list, fmt::format("{} window {}", source, w.index), data, unused);
    on_window(w);
  }
}

namespace {
constexpr size_t kMaxEvents = 10000;  // a stream keeps at most this many events for its subscribers
constexpr size_t kKeptFinished = 16;  // streams whose source ended, kept for their subscribers until DELETE
}  // namespace

struct Streams::Stream {
  // A stream lives from POST to DELETE; once its source has ended it keeps its events for late subscribers.
  std::string id, source;
  WindowOptions window;
  double budget = -1;
  int64_t top_k = 5;
  std::atomic<bool> stop{false};
  std::thread reader;
  std::mutex mutex;
  std::condition_variable changed;
  std::deque<std::string> events;  // JSON lines; the first `dropped` are gone
  size_t dropped = 0;
  int64_t pending = 0, windows = 0;  // windows sent and not answered; windows answered
  bool reading = true;

  void push(json event) {
    event["stream"] = id;
    {
      std::lock_guard<std::mutex> lock(mutex);
      events.push_back(event.dump(-1, ' ', false, json::error_handler_t::replace) + "\n");  // names need not be UTF-8
      if (events.size() > kMaxEvents) {
        events.pop_front();
        ++dropped;
      }
    }
    changed.notify_all();
  }
  bool finished() {  // under the lock
    return !reading && pending == 0;
  }
};

Streams::Streams(StreamsOptions options, StreamSubmit submit, std::function<void(double)> check_budget,
                 data::DatasetOptions data)
    : options_(std::move(options)),
      submit_(std::move(submit)),
      check_budget_(std::move(check_budget)),
      data_(std::move(data)) {}

Streams::~Streams() { stop_all(); }

size_t Streams::count() const {
  std::lock_guard<std::mutex> lock(mutex_);
  size_t running = 0;
  for (const auto& [id, s] : streams_) {
    std::lock_guard<std::mutex> stream_lock(s->mutex);
    running += !s->finished();
  }
  return running;
}

void Streams::stop_all() {
  std::map<std::string, std::shared_ptr<Stream>> all;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    all.swap(streams_);
  }
  for (auto& [id, s] : all) s->stop = true;
  for (auto& [id, s] : all)
    if (s->reader.joinable()) s->reader.join();
}

std::string Streams::checked_source(const std::string& source) const {
  if (source.empty()) throw HttpError{400, "field 'source' is empty"};
  if (is_url(source)) {
    const std::string scheme = source.substr(0, source.find("://"));
    for (const char* allowed : {"http", "https", "rtsp", "rtmp"})
      if (scheme == allowed) return source;
    throw HttpError{400, "source scheme '" + scheme +
                             "' is not served (http, https, rtsp, rtmp, or a file under "
                             "--media-root)"};
  }
  if (source.find(':') != std::string::npos && source.find('/') > source.find(':'))
    throw HttpError{400, "source '" + source + "' names an FFmpeg protocol, which is not served"};
  if (options_.media_root.empty())
    throw HttpError{403, "local files are not served: the server was started without --media-root"};
  const fs::path path(source);
  for (const auto& part : path)
    if (part == "..") throw HttpError{403, "source '" + source + "' leaves --media-root ('..')"};
  std::error_code ec;
  const fs::path root = fs::canonical(options_.media_root, ec);
  if (ec) throw HttpError{403, "--media-root is not a folder the server can read"};
  const fs::path full = fs::weakly_canonical(path.is_absolute() ? path : root / path, ec);
  const std::string inside = root.string() + "/";
  if (ec || full.string().rfind(inside, 0) != 0)
    throw HttpError{403, "source '" + source + "' is outside --media-root (or a link out of it)"};
  if (!fs::is_regular_file(full, ec)) throw HttpError{400, "no such file under --media-root: '" + source + "'"};
  return full.string();
}

void Streams::start(const HttpRequest& r, const Respond& respond, bool draining) {
  if (draining) throw HttpError{503, "the server is shutting down", {{"Retry-After", "5"}}};
  json spec;
  try {
    spec = json::parse(r.body);
  } catch (const json::exception& e) {
    throw HttpError{400, std::string("the body must be a JSON object: ") + e.what()};
  }
  if (!spec.is_object()) throw HttpError{400, "the body must be a JSON object"};
  auto stream = std::make_shared<Stream>();
  stream->window.max_pixels = options_.max_pixels;
  auto integer = [](const json& v, const std::string& field, int64_t low, int64_t high) {
    if (!v.is_number_integer() || v.get<int64_t>() < low || v.get<int64_t>() > high)
      throw HttpError{400, fmt::format("field '{}' must be an integer in [{}, {}]", field, low, high)};
    return v.get<int64_t>();
  };
  std::string source;
  for (const auto& [key, value] : spec.items()) {
    if (key == "source") {
      if (!value.is_string()) throw HttpError{400, "field 'source' must be a URL or a file under --media-root"};
      source = value.get<std::string>();
    } else if (key == "window") {
      stream->window.window = integer(value, key, 1, options_.max_frames);
    } else if (key == "stride") {
      stream->window.stride = integer(value, key, 1, options_.max_frames);
    } else if (key == "top_k") {
      stream->top_k = integer(value, key, 1, 1000000);
    } else if (key == "budget") {
      if (!value.is_number() || value.get<double>() <= 0)
        throw HttpError{400, "field 'budget' must be a positive number"};
      stream->budget = value.get<double>();
      check_budget_(stream->budget);
    } else {
      throw HttpError{400, "unknown field '" + key + "' (known: source, window, stride, budget, top_k)"};
    }
  }
  stream->source = checked_source(source);
  std::vector<std::shared_ptr<Stream>> ended;  // finished streams beyond the few kept, whose threads are done
  {
    std::lock_guard<std::mutex> lock(mutex_);
    int64_t running = 0;
    std::vector<std::string> finished;
    for (const auto& [id, s] : streams_) {
      std::lock_guard<std::mutex> stream_lock(s->mutex);
      if (s->finished())
        finished.push_back(id);
      else
        ++running;
    }
    if (running >= options_.max_streams)
      throw HttpError{
          503, fmt::format("{} streams are running, the most this server takes", running), {{"Retry-After", "10"}}};
    for (size_t i = 0; i + kKeptFinished < finished.size(); ++i) {  // ids ascend with age
      ended.push_back(streams_.at(finished[i]));
      streams_.erase(finished[i]);
    }
    stream->id = fmt::format("{:08}", next_id_++);
    streams_[stream->id] = stream;
  }
  for (auto& s : ended)
    if (s->reader.joinable()) s->reader.join();
  stream->reader = std::thread([this, stream] {
    try {
      read_windows(
          stream->source, stream->window, data_, stream->stop,
          [&](Window& w) {
            {
              std::lock_guard<std::mutex> lock(stream->mutex);
              ++stream->pending;
            }
            const Window place{w.index, w.first_frame, w.last_frame, w.start, w.end, {}};
            auto answer = [stream, place](const infer::VideoPrediction* p, double budget_used,
                                          const std::string& error) {
              json event = window_event(place, p, budget_used, static_cast<size_t>(stream->top_k));
              if (!p) event["error"] = error;
              stream->push(event);
              std::lock_guard<std::mutex> lock(stream->mutex);
              --stream->pending;
              ++stream->windows;
              stream->changed.notify_all();
            };
            const std::string refused = submit_(std::move(w.sample), stream->budget, answer);
            if (!refused.empty()) {
              {
                std::lock_guard<std::mutex> lock(stream->mutex);
                --stream->pending;
              }
              json event = window_event(place, nullptr, -1, 0);
              event["event"] = "skipped";
              event["reason"] = refused;
              stream->push(event);
            }
          },
          [&](const json& event) { stream->push(event); });
    } catch (const std::exception& e) {
      if (!stream->stop) stream->push({{"event", "failed"}, {"error", e.what()}});  // else: interrupted, not failed
    }
    {  // the last event comes after every window's answer
      std::unique_lock<std::mutex> lock(stream->mutex);
      stream->changed.wait(lock, [&] { return stream->pending == 0; });
    }
    stream->push({{"event", stream->stop ? "stopped" : "end"}});
    std::lock_guard<std::mutex> lock(stream->mutex);
    stream->reading = false;
    stream->changed.notify_all();
  });
  json out{{"id", stream->id},
           {"source", source},
           {"window", stream->window.window},
           {"stride", stream->window.stride},
           {"events", "/v1/streams/" + stream->id + "/events"}};
  respond(json_response(201, out));
}

void Streams::handle(const HttpRequest& r, const Respond& respond, bool draining) {
  if (r.path == "/v1/streams") {
    if (r.method == "POST") return start(r, respond, draining);
    if (r.method != "GET") throw HttpError{405, "POST to start a stream, GET to list them", {{"Allow", "GET, POST"}}};
    json list = json::array();
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& [id, s] : streams_) list.push_back({{"id", id}, {"source", s->source}});
    return respond(json_response(200, json{{"streams", list}}));
  }
  // /v1/streams/ID or /v1/streams/ID/events
  std::string rest = r.path.substr(std::string("/v1/streams/").size());
  const bool events = rest.size() > 7 && rest.compare(rest.size() - 7, 7, "/events") == 0;
  if (events) rest = rest.substr(0, rest.size() - 7);
  std::shared_ptr<Stream> stream;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = streams_.find(rest);
    if (it == streams_.end()) throw HttpError{404, "no stream '" + rest + "'"};
    stream = it->second;
  }
  if (events && r.method == "GET") {
    HttpResponse out;
    out.content_type = "application/x-ndjson";
    auto cursor = std::make_shared<size_t>(0);
    out.next_chunk = [stream, cursor](std::string& chunk) {
      std::unique_lock<std::mutex> lock(stream->mutex);
      stream->changed.wait_for(lock, std::chrono::seconds(2),
                               [&] { return *cursor < stream->dropped + stream->events.size() || stream->finished(); });
      *cursor = std::max(*cursor, stream->dropped);
      while (*cursor < stream->dropped + stream->events.size()) chunk += stream->events[(*cursor)++ - stream->dropped];
      if (!chunk.empty()) return true;
      if (stream->finished()) return false;
      chunk = "\n";  // nothing new for a while: a line that says the connection is alive
      return true;
    };
    return respond(std::move(out));
  }
  if (!events && r.method == "DELETE") {
    // Stopped, not forgotten: its reader ends at once (its events end with "stopped") and it stays listed among
    // the finished streams, so that its events can still be read.
    stream->stop = true;
    return respond(json_response(200, json{{"id", stream->id}, {"stopping", true}}));
  }
  throw HttpError{405, "GET /v1/streams/ID/events, or DELETE /v1/streams/ID"};
}

}  // namespace adafocus::serve
