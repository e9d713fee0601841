// `adafocus serve`: a trained model answering videos over HTTP (loopback by default). Uploads are decoded from
// memory in a pool of their own, batched across requests exit by exit (batcher.h), and served at a budget that the
// load decides (controller.h); live sources are classified window by window (streams.h). Endpoints:
//   POST /v1/predict              the video in the body (video/* or application/octet-stream) or a multipart form
//                                 (a file part, plus fields); fields budget, top_k, degrade (query or form)
//   GET  /healthz, /readyz        alive; model loaded and warmed up
//   GET  /v1/model                method, classes, exit costs, the calibrated budgets and their accuracy
//   GET  /metrics                 Prometheus text
//   POST /v1/streams, GET /v1/streams/ID/events, DELETE /v1/streams/ID
// Every refusal is a 4xx/5xx with {"error": reason}; the server stays up.
#pragma once

#include <torch/torch.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "infer/precision.h"

namespace adafocus::serve {

struct ServeOptions {
  std::string checkpoint, preset, thresholds;  ///< the model; a preset for official checkpoints; exit thresholds
  std::vector<std::string> overrides;          ///< key=value on the model's configuration
  std::string host = "127.0.0.1";
  int port = 8080;         ///< 0: any free port
  double budget = -1;      ///< GFLOPs per video when a request names none (-1: the model's full cost)
  double min_budget = -1;  ///< the load may lower requests to this, no further (-1: the cheapest exit)
  double slo_ms = 0;       ///< latency objective per request (0: none: only the queue bound sheds)
  int64_t max_batch = 8;
  double max_delay_ms = 10;  ///< a batch waits at most this long after its oldest video for more
  int64_t queue = 64;        ///< requests admitted and not answered yet, at most
  double max_upload_mb = 64;
  int64_t max_frames = 108000;       ///< longer videos are refused (an hour at 30 fps)
  int64_t max_pixels = 3840 * 2160;  ///< larger frames are refused
  double read_timeout_s = 10;        ///< a request (headers and body) must arrive within this
  std::string media_root;            ///< the only folder stream sources may be read from (empty: no local files)
  std::string api_key_file;          ///< when set, /v1/* and /metrics need its key (Authorization: Bearer KEY)
  int decode_threads = 0;            ///< threads decoding uploads (0: one per core)
  int64_t max_streams = 4;
  torch::Device device = torch::kCPU;
  infer::Precision precision = infer::Precision::Fp32;
};

/// Loads the model, warms it up, serves until `stop` becomes true (then drains: no new connections, the requests in
/// flight answered, streams ended), and returns. `ready(port)` is called once it listens.
void serve(ServeOptions options, const std::atomic<bool>& stop, const std::function<void(int port)>& ready);

}  // namespace adafocus::serve
