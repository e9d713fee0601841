#include "serve/upload.h"

#include <cmath>
#include <map>

namespace adafocus::serve {

namespace {

// A multipart/form-data body: the file part (the video) and the other parts (fields).
struct Form {
  std::string video, filename;
  std::map<std::string, std::string> fields;
};

Form parse_multipart(const std::string& body, const std::string& content_type) {
  const size_t at = content_type.find("boundary=");
  if (at == std::string::npos) throw HttpError{400, "a multipart form without a boundary in its Content-Type"};
  std::string boundary = content_type.substr(at + 9);
  boundary = boundary.substr(0, boundary.find(';'));
  if (boundary.size() >= 2 && boundary.front() == '"' && boundary.back() == '"')
    boundary = boundary.substr(1, boundary.size() - 2);
  if (boundary.empty()) throw HttpError{400, "a multipart form with an empty boundary"};
  const std::string delimiter = "--" + boundary;
  Form form;
  size_t pos = body.find(delimiter);
  if (pos == std::string::npos) throw HttpError{400, "the multipart form has no part"};
  while (true) {
    pos += delimiter.size();
    if (body.compare(pos, 2, "--") == 0) break;  // the closing delimiter
    if (body.compare(pos, 2, "\r\n") != 0) throw HttpError{400, "a malformed multipart form"};
    pos += 2;
    const size_t headers_end = body.find("\r\n\r\n", pos);
    const size_t next = body.find("\r\n" + delimiter, pos);
    if (headers_end == std::string::npos || next == std::string::npos || headers_end > next)
      throw HttpError{400, "a malformed (or truncated) multipart form"};
    const std::string headers = body.substr(pos, headers_end - pos);
    std::string content = body.substr(headers_end + 4, next - headers_end - 4);
    auto parameter = [&](const std::string& key) -> std::string {
      const size_t k = headers.find(key + "=\"");
      if (k == std::string::npos) return "";
      const size_t start = k + key.size() + 2, end = headers.find('"', start);
      return end == std::string::npos ? "" : headers.substr(start, end - start);
    };
    const std::string name = parameter("name"), filename = parameter("filename");
    if (!filename.empty() || name == "video") {
      if (!form.filename.empty() || !form.video.empty()) throw HttpError{400, "the form holds more than one file"};
      form.video = std::move(content);
      form.filename = filename.empty() ? "upload" : filename;
    } else if (!name.empty()) {
      form.fields[name] = content;
    }
    pos = next + 2;
  }
  return form;
}

double parse_number(const std::string& field, const std::string& text) {
  try {
    size_t used = 0;
    const double v = std::stod(text, &used);
    if (used == text.size() && std::isfinite(v)) return v;
  } catch (const std::exception&) {
  }
  throw HttpError{400, "field '" + field + "' must be a number, not '" + text + "'"};
}

bool parse_bool(const std::string& field, const std::string& text) {
  if (text == "true" || text == "1" || text == "yes") return true;
  if (text == "false" || text == "0" || text == "no") return false;
  throw HttpError{400, "field '" + field + "' must be true or false, not '" + text + "'"};
}

}  // namespace

Upload parse_upload(const HttpRequest& r) {
  Upload u;
  u.video = std::make_shared<std::string>();
  std::map<std::string, std::string> fields = r.query;
  const auto type_it = r.headers.find("content-type");
  const std::string type = type_it == r.headers.end() ? "" : type_it->second;
  if (type.rfind("multipart/form-data", 0) == 0) {
    Form form = parse_multipart(r.body, type);
    *u.video = std::move(form.video);
    u.name = form.filename;
    for (auto& [k, v] : form.fields) fields[k] = v;
  } else if (type.rfind("video/", 0) == 0 || type == "application/octet-stream" || type.empty()) {
    *u.video = r.body;
  } else {
    throw HttpError{400, "not a video upload (Content-Type " + type +
                             "): send the video's bytes as video/* or "
                             "application/octet-stream, or a multipart form with a file part"};
  }
  if (u.video->empty()) throw HttpError{400, "empty upload: no video in the request"};
  for (const auto& [key, value] : fields) {
    if (key == "budget") {
      u.budget = parse_number(key, value);
    } else if (key == "top_k") {
      const double k = parse_number(key, value);
      // Choice: a bound well above any class count, so that the cast below is defined (a double past int64's
      // range is undefined behaviour to convert).
      if (k < 1 || k > 1e9) throw HttpError{400, "field 'top_k' must be at least 1 (and at most 1e9)"};
      u.top_k = static_cast<int64_t>(k);
    } else if (key == "degrade") {
      u.degrade = parse_bool(key, value);
    } else {
      throw HttpError{400, "unknown field '" + key + "' (known: budget, top_k, degrade)"};
    }
  }
  return u;
}

}  // namespace adafocus::serve
