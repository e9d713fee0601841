// The server's request path up to the model: raw bytes through the connection's HTTP parser (its limits and
// refusals), then what POST /v1/predict reads from the request (body, multipart form, query fields). The upload's
// video is the video target's.
#include <cstdlib>

#include "core/error.h"
#include "fuzz.h"
#include "serve/http.h"
#include "serve/upload.h"

FUZZ_TARGET(http) {
  using namespace adafocus::serve;
  try {
    const HttpRequest request = parse_request(std::string(reinterpret_cast<const char*>(data), size), 1 << 20);
    error_response({400, request.path});  // the reason as JSON: any bytes
    parse_upload(request);
  } catch (const HttpError& refused) {
    if (refused.status < 400 || refused.status > 499) std::abort();  // a request's fault is a 4xx
  }
}
