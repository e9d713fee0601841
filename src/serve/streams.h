// Live sources classified window by window: a stream (http, https, rtsp, rtmp) or a file under the media root played
// in real time is read frame after frame; every `stride` frames the last `window` frames become a clip of the
// model's test view and go to the network like an upload. Each window's answer is an event, one JSON line, which
// GET /v1/streams/ID/events delivers as it is produced. A source that breaks off is opened again after a growing
// backoff, and the events say so. `adafocus predict --stream` reads the same windows (read_windows).
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>

#include "data/dataset.h"
#include "infer/predictor.h"
#include "serve/http.h"

namespace adafocus::serve {

/// One window of a live source: its clip and where it lies in the source.
struct Window {
  int64_t index = 0;                        ///< 0, 1, ...
  int64_t first_frame = 0, last_frame = 0;  ///< frame numbers in the source, from 0
  double start = 0, end = 0;                ///< seconds from the source's start
  data::Sample sample;                      ///< the clip (test view); its frames index the window's frames
};

struct WindowOptions {
  int64_t window = 64, stride = 32;  ///< frames per window; frames between windows' starts
  bool realtime = true;              ///< a file plays at its own rate
  int64_t max_pixels = 3840 * 2160;  ///< larger frames: the source is refused
  int max_attempts = 6;              ///< reconnections after a break before giving up
  std::chrono::milliseconds io_timeout{10000};
};

/// Reads `source` until it ends or `stop` is set, calling `on_window` for each window and `on_event` for what
/// happens to the source (a break, a reconnection, the end: JSON objects with an "event" field). A network source
/// that breaks or ends is opened again after 0.5, 1, 2, ... s, up to max_attempts times; a file ends. Throws
/// adafocus::Error when the source cannot be opened at first.
void read_windows(const std::string& source, const WindowOptions& options, const data::DatasetOptions& data,
                  const std::atomic<bool>& stop, const std::function<void(Window&)>& on_window,
                  const std::function<void(const nlohmann::json&)>& on_event);

/// A window's event: where it lies in the source ("window", "first_frame", "last_frame", "start", "end") and, with a
/// prediction, "top" (the first `top_k` classes), "gflops", "exit" (with early exits) and "budget_used" (when >= 0) -
/// one JSON line of the event streams and of `predict --stream`.
nlohmann::json window_event(const Window& window, const infer::VideoPrediction* prediction, double budget_used,
                            size_t top_k);

/// Told once per submitted window: its prediction and the budget it was served at, or null and the error.
using StreamAnswer =
    std::function<void(const infer::VideoPrediction* prediction, double budget_used, const std::string& error)>;
/// Sends a window to the network at `budget`; returns "", or why the server refused it (the window is skipped).
using StreamSubmit = std::function<std::string(data::Sample sample, double budget, StreamAnswer answer)>;

struct StreamsOptions {
  std::string media_root;  ///< the folder local sources must lie in ("" : none may be read)
  int64_t max_streams = 4;
  int64_t max_frames = 108000;  ///< the largest window
  int64_t max_pixels = 3840 * 2160;
};

/// The /v1/streams endpoints.
class Streams {
 public:
  /// `check_budget` throws the refusal (HttpError) of a budget the server cannot serve.
  Streams(StreamsOptions options, StreamSubmit submit, std::function<void(double budget)> check_budget,
          data::DatasetOptions data);
  ~Streams();
  /// POST /v1/streams, GET /v1/streams, GET /v1/streams/ID/events, DELETE /v1/streams/ID.
  void handle(const HttpRequest& request, const Respond& respond, bool draining);
  /// Stops every stream and waits for their readers.
  void stop_all();
  size_t count() const;

 private:
  struct Stream;
  /// Where a source is read from: a URL (kept), or a file under the media root (its canonical path). Throws a
  /// refusal (400/403) otherwise.
  std::string checked_source(const std::string& source) const;
  void start(const HttpRequest& request, const Respond& respond, bool draining);

  const StreamsOptions options_;
  StreamSubmit submit_;
  std::function<void(double)> check_budget_;
  data::DatasetOptions data_;
  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<Stream>> streams_;
  int64_t next_id_ = 1;
};

}  // namespace adafocus::serve
