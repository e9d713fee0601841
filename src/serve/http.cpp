#include "serve/http.h"

#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cctype>
#include <condition_variable>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "core/error.h"

namespace adafocus::serve {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

struct HttpState {
  HttpState(HttpOptions o, Handler h)
      : options(std::move(o)), handler(std::move(h)), stream_pool(static_cast<size_t>(options.stream_threads)) {}

  void accept();
  void closed();  // a connection ended

  HttpOptions options;
  Handler handler;
  net::io_context io{1};
  // Keeps io.run() going while no operation is pending (requests waiting for the network, once the acceptor is
  // closed on shutdown), so that their answers can still be written.
  net::executor_work_guard<net::io_context::executor_type> work{io.get_executor()};
  tcp::acceptor acceptor{io};
  net::thread_pool stream_pool;
  std::thread io_thread;
  std::atomic<bool> accepting{true};
  std::atomic<size_t> connections{0};
  std::mutex mutex;
  std::condition_variable idle;
};

namespace {

const size_t kHeaderLimit = 16 * 1024;

// Every request is parsed under these limits: a connection's, and parse_request's.
void limit(http::request_parser<http::string_body>& parser, size_t max_body) {
  parser.header_limit(kHeaderLimit);
  parser.body_limit(max_body);
}

// What a request the parser refused gets.
HttpError refusal(beast::error_code ec, size_t max_body) {
  if (ec == http::error::header_limit) return {431, "the request's headers are too large"};
  if (ec == http::error::body_limit)
    return {413, "the upload is larger than the server's limit of " + std::to_string(max_body) +
                     " bytes (--max-upload-mb)"};
  return {400, "a malformed request: " + ec.message()};
}

HttpRequest to_request(const http::request<http::string_body>& r) {
  HttpRequest out;
  out.method = std::string(r.method_string());
  const std::string target(r.target());
  const size_t q = target.find('?');
  out.path = url_decode(target.substr(0, q));
  if (q != std::string::npos) {
    const std::string query = target.substr(q + 1);
    size_t start = 0;
    while (start <= query.size()) {
      size_t end = query.find('&', start);
      if (end == std::string::npos) end = query.size();
      const std::string item = query.substr(start, end - start);
      if (!item.empty()) {
        const size_t eq = item.find('=');
        out.query[url_decode(item.substr(0, eq))] = eq == std::string::npos ? "" : url_decode(item.substr(eq + 1));
      }
      start = end + 1;
    }
  }
  for (const auto& field : r) {
    std::string name(field.name_string());
    for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    out.headers[name] = std::string(field.value());
  }
  out.body = r.body();
  return out;
}

// One connection: requests read under a deadline, answered by the handler whenever it responds, kept alive.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, HttpState& server) : stream_(std::move(socket)), server_(server) {}
  ~Session() { server_.closed(); }

  void start() {
    net::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->read(); });
  }

 private:
  void read() {
    parser_.emplace();
    limit(*parser_, server_.options.max_body);
    stream_.expires_after(server_.options.read_timeout);  // the whole request, however slowly it trickles in
    http::async_read_header(stream_, buffer_, *parser_,
                            [self = shared_from_this()](beast::error_code ec, size_t) { self->on_header(ec); });
  }

  void on_header(beast::error_code ec) {
    if (ec == http::error::end_of_stream || ec == beast::error::timeout || ec == net::error::eof) return close();
    // A declared length over the limit is refused on the headers (the parser checks it there), the body never read.
    if (ec) return refuse(refusal(ec, server_.options.max_body));
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code e, size_t) { self->on_read(e); });
  }

  void on_read(beast::error_code ec) {
    if (ec == beast::error::timeout) return close();  // too slow: the socket is already closed
    if (ec) return refuse(refusal(ec, server_.options.max_body));
    stream_.expires_never();  // now it waits for our answer, not for the client
    const http::request<http::string_body> request = parser_->release();
    keep_alive_ = request.keep_alive();
    auto answered = std::make_shared<std::atomic<bool>>(false);
    server_.handler(to_request(request), [self = shared_from_this(), answered](HttpResponse response) {
      if (answered->exchange(true)) return;  // once
      net::post(self->stream_.get_executor(),
                [self, response = std::move(response)]() mutable { self->write(std::move(response)); });
    });
  }

  void write(HttpResponse r) {
    const bool keep = keep_alive_ && server_.accepting;
    if (r.next_chunk) return write_stream(std::move(r));
    auto response = std::make_shared<http::response<http::string_body>>(static_cast<http::status>(r.status), 11);
    response->set(http::field::server, "adafocus");
    response->set(http::field::content_type, r.content_type);
    for (const auto& [name, value] : r.headers) response->set(name, value);
    response->keep_alive(keep);
    response->body() = std::move(r.body);
    response->prepare_payload();
    stream_.expires_after(server_.options.write_timeout);
    http::async_write(stream_, *response, [self = shared_from_this(), response](beast::error_code ec, size_t) {
      if (ec || !response->keep_alive()) return self->close();
      self->read();
    });
  }

  // Headers, then a chunk per next_chunk() (waited for on the stream pool), then the last chunk; the connection
  // closes after it.
  void write_stream(HttpResponse r) {
    auto response = std::make_shared<http::response<http::empty_body>>(static_cast<http::status>(r.status), 11);
    response->set(http::field::server, "adafocus");
    response->set(http::field::content_type, r.content_type);
    for (const auto& [name, value] : r.headers) response->set(name, value);
    response->keep_alive(false);
    response->chunked(true);
    auto serializer = std::make_shared<http::response_serializer<http::empty_body>>(*response);
    next_chunk_ = std::move(r.next_chunk);
    stream_.expires_after(server_.options.write_timeout);
    http::async_write_header(stream_, *serializer,
                             [self = shared_from_this(), response, serializer](beast::error_code ec, size_t) {
                               if (ec) return self->close();
                               self->pump();
                             });
  }

  void pump() {
    net::post(server_.stream_pool, [self = shared_from_this()] {
      auto chunk = std::make_shared<std::string>();
      const bool more = self->next_chunk_(*chunk) && !chunk->empty();
      net::post(self->stream_.get_executor(), [self, chunk, more] {
        self->stream_.expires_after(self->server_.options.write_timeout);
        if (!more) {
          net::async_write(self->stream_, http::make_chunk_last(),
                           [self](beast::error_code, size_t) { self->close(); });
          return;
        }
        net::async_write(self->stream_, http::make_chunk(net::buffer(*chunk)),
                         [self, chunk](beast::error_code ec, size_t) {
                           if (ec) return self->close();  // the client went away: stop asking for chunks
                           self->pump();
                         });
      });
    });
  }

  // An error answered before the request was read in full: the connection closes after it, and what the client
  // still sends is read and dropped for a moment, so that it sees the answer rather than a reset.
  void refuse(const HttpError& error) {
    auto response = std::make_shared<http::response<http::string_body>>(static_cast<http::status>(error.status), 11);
    response->set(http::field::server, "adafocus");
    response->set(http::field::content_type, "application/json");
    response->keep_alive(false);
    response->body() = error_response(error).body;
    response->prepare_payload();
    stream_.expires_after(server_.options.write_timeout);
    http::async_write(stream_, *response, [self = shared_from_this(), response](beast::error_code ec, size_t) {
      if (ec) return self->close();
      beast::error_code ignored;
      self->stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
      self->stream_.expires_after(std::chrono::seconds(2));
      self->drain();
    });
  }

  void drain() {
    stream_.async_read_some(net::buffer(scratch_), [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return self->close();
      self->drain();
    });
  }

  void close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();
  }

  beast::tcp_stream stream_;
  HttpState& server_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  bool keep_alive_ = false;
  std::function<bool(std::string&)> next_chunk_;
  char scratch_[4096];
};

}  // namespace

void HttpState::accept() {
  acceptor.async_accept(net::make_strand(io), [this](beast::error_code ec, tcp::socket socket) {
    if (!ec) {
      if (connections.load() >= options.max_connections) {
        beast::error_code ignored;
        socket.close(ignored);  // over the limit: refused at once
      } else {
        ++connections;
        std::make_shared<Session>(std::move(socket), *this)->start();
      }
    }
    if (accepting && acceptor.is_open()) accept();
  });
}

void HttpState::closed() {
  std::lock_guard<std::mutex> lock(mutex);
  if (--connections == 0) idle.notify_all();
}

HttpServer::HttpServer(HttpOptions options, Handler handler)
    : impl_(std::make_unique<HttpState>(std::move(options), std::move(handler))) {
  const std::string where = impl_->options.host + ":" + std::to_string(impl_->options.port);
  beast::error_code ec;
  const auto address = net::ip::make_address(impl_->options.host, ec);
  if (ec) throw Error("not an IP address: '" + impl_->options.host + "'", "--host", "use 127.0.0.1 or ::1");
  const tcp::endpoint endpoint(address, static_cast<unsigned short>(impl_->options.port));
  auto& a = impl_->acceptor;
  a.open(endpoint.protocol(), ec);
  if (!ec) a.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) a.bind(endpoint, ec);
  if (!ec) a.listen(net::socket_base::max_listen_connections, ec);
  if (ec) throw Error("cannot listen on " + where + ": " + ec.message(), "--host/--port", "choose another --port");
}

HttpServer::~HttpServer() { stop(); }

int HttpServer::port() const { return impl_->acceptor.local_endpoint().port(); }

void HttpServer::start() {
  impl_->accept();
  impl_->io_thread = std::thread([this] { impl_->io.run(); });
}

void HttpServer::stop_accepting() {
  impl_->accepting = false;
  net::post(impl_->io, [this] {
    beast::error_code ignored;
    impl_->acceptor.close(ignored);
  });
}

bool HttpServer::wait_idle(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(impl_->mutex);
  return impl_->idle.wait_for(lock, timeout, [this] { return impl_->connections.load() == 0; });
}

void HttpServer::stop() {
  if (!impl_) return;
  impl_->accepting = false;
  impl_->io.stop();
  if (impl_->io_thread.joinable()) impl_->io_thread.join();
  impl_->stream_pool.stop();
  impl_->stream_pool.join();
}

size_t HttpServer::open_connections() const { return impl_->connections.load(); }

HttpResponse json_response(int status, const nlohmann::json& body) {
  HttpResponse r;
  r.status = status;
  // Reasons and names quote what clients sent, which need not be UTF-8: replaced (U+FFFD), as JSON must be.
  r.body = body.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  return r;
}

HttpResponse error_response(const HttpError& error) {
  HttpResponse r = json_response(error.status, nlohmann::json{{"error", error.reason}});
  r.headers = error.headers;
  return r;
}

HttpRequest parse_request(const std::string& raw, size_t max_body) {
  http::request_parser<http::string_body> parser;
  limit(parser, max_body);
  parser.eager(true);
  size_t used = 0;
  while (!parser.is_done()) {
    beast::error_code ec;
    const size_t n = parser.put(net::buffer(raw.data() + used, raw.size() - used), ec);
    used += n;
    if (ec && ec != http::error::need_more) throw refusal(ec, max_body);
    if (n == 0) throw HttpError{400, "an incomplete request"};  // it takes nothing more: the rest is missing
  }
  return to_request(parser.release());
}

std::string url_decode(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out += ' ';
    } else if (s[i] == '%' && i + 2 < s.size() && std::isxdigit(static_cast<unsigned char>(s[i + 1])) &&
               std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      out += static_cast<char>(std::stoi(s.substr(i + 1, 2), nullptr, 16));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

}  // namespace adafocus::serve
