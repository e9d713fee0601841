// What a POST /v1/predict asks for, read from the request alone (before any model is involved): the video's bytes
// from the body or a multipart form, and the fields budget, top_k and degrade from the query or the form. Every
// malformed request is an HttpError 400 naming what is wrong.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "serve/http.h"

namespace adafocus::serve {

struct Upload {
  std::shared_ptr<std::string> video;  ///< never empty
  std::string name = "upload";         ///< the form's file name, for messages and the answer
  std::optional<double> budget;        ///< GFLOPs; unset: the server's default
  int64_t top_k = 5;
  bool degrade = true;
};

Upload parse_upload(const HttpRequest& request);

}  // namespace adafocus::serve
