// A small HTTP/1.1 server (Boost.Beast over Asio) for `adafocus serve`. Choice: Beast rather than cpp-httplib (also in
// Debian) because its connections are asynchronous: a connection waiting for its client holds no thread, so a
// slow client (slow-loris) costs a socket, not a worker, and a deadline covers the whole request - headers and
// body - rather than each read. One I/O thread runs every connection; handlers answer through a callback, from any
// thread, so that a request waiting for the network holds nothing either.
//
// Bounds: a body declared larger than max_body is refused with 413 before it is read (a chunked one as soon as it
// exceeds it); a request not complete within read_timeout is cut off; at most max_connections connections are open.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace adafocus::serve {

struct HttpRequest {
  std::string method;                          ///< GET, POST, DELETE, ...
  std::string path;                            ///< the target without its query
  std::map<std::string, std::string> query;    ///< decoded query parameters
  std::map<std::string, std::string> headers;  ///< by lower-case name
  std::string body;
};

/// A response with a whole body, or - when next_chunk is set - a stream of chunks (chunked transfer encoding):
/// next_chunk is called on a worker thread, may wait, and returns false when the stream ends.
struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  std::function<bool(std::string& chunk)> next_chunk;
};

/// A request refused: its status (4xx, 5xx), the reason, and headers such as Retry-After. Handlers throw it.
struct HttpError {
  int status;
  std::string reason;
  std::vector<std::pair<std::string, std::string>> headers = {};
};

/// A JSON body with `status`.
HttpResponse json_response(int status, const nlohmann::json& body);
/// {"error": reason} with the refusal's status and headers.
HttpResponse error_response(const HttpError& error);

/// An answer to one request: call it exactly once, from any thread, at any time.
using Respond = std::function<void(HttpResponse)>;
using Handler = std::function<void(HttpRequest request, Respond respond)>;

struct HttpOptions {
  std::string host = "127.0.0.1";
  int port = 8080;  ///< 0: any free port (port() tells which)
  size_t max_body = 64u << 20;
  std::chrono::milliseconds read_timeout{10000};   ///< for a whole request, headers and body
  std::chrono::milliseconds write_timeout{30000};  ///< for writing a response (each chunk of a stream)
  size_t max_connections = 512;
  int stream_threads = 4;  ///< threads that wait for streamed responses' chunks
};

struct HttpState;  // the server's insides (http.cpp)

class HttpServer {
 public:
  /// Binds and listens (throws adafocus::Error naming host:port when it cannot); serves once start() runs.
  HttpServer(HttpOptions options, Handler handler);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const;
  /// Serves on a thread of its own.
  void start();
  /// No new connections; the open ones finish their requests (keep-alive ends after the current one).
  void stop_accepting();
  /// Waits until no connection is open or `timeout` passes; true when none is.
  bool wait_idle(std::chrono::milliseconds timeout);
  /// Closes everything and joins the threads.
  void stop();
  size_t open_connections() const;

 private:
  std::unique_ptr<HttpState> impl_;
};

/// One whole request in `raw`, parsed as a connection parses it (the same parser, limits and refusals: HttpError 400,
/// 413, 431); bytes after it are ignored. The fuzz target's way in.
HttpRequest parse_request(const std::string& raw, size_t max_body);

/// "a%20b" -> "a b" ('+' is a space too); invalid escapes are kept as they are.
std::string url_decode(const std::string& s);

}  // namespace adafocus::serve
