#include "greeter.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <sstream>
#include <stdexcept>

namespace bench {

// ---- Greeter -------------------------------------------------------------------------------

Greeter Greeter::start(const std::string& binary, int port, int workers) {
  Greeter g;
  g.child_ = Child::spawn({binary, "--port", std::to_string(port), "--workers", std::to_string(workers)});
  std::string line = g.child_.read_line(5s);
  if (std::sscanf(line.c_str(), "PORT %d", &g.port_) != 1 || g.port_ <= 0) {
    throw std::runtime_error(binary + ": expected 'PORT <n>', got '" + line + "'");
  }
  return g;
}

std::string Greeter::request(const std::string& line) const {
  Connection c(port_, 5s);
  return c.request(line);
}

std::map<std::string, long> Greeter::stats() const {
  std::map<std::string, long> result;
  std::istringstream in(request("STATS"));
  std::string token;
  while (in >> token) {
    auto eq = token.find('=');
    if (eq != std::string::npos) result[token.substr(0, eq)] = std::atol(token.c_str() + eq + 1);
  }
  return result;
}

// ---- Connection ----------------------------------------------------------------------------

Connection::Connection(int port, std::chrono::milliseconds timeout) {
  fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
  timeval tv{static_cast<time_t>(timeout.count() / 1000), static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
  setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  int one = 1;
  setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);  // never anywhere but 127.0.0.1
  int rc;
  do {
    rc = connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    int err = errno;
    close(fd_);
    fd_ = -1;
    throw std::runtime_error("connect 127.0.0.1:" + std::to_string(port) + ": " + std::strerror(err));
  }
}

Connection::~Connection() {
  if (fd_ >= 0) close(fd_);
}

std::string Connection::request(const std::string& line) {
  std::string data = line + "\n";
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = send(fd_, data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw std::runtime_error(std::string("send: ") + std::strerror(errno));
    done += static_cast<size_t>(n);
  }
  for (;;) {
    if (auto nl = buffer_.find('\n'); nl != std::string::npos) {
      std::string reply = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      return reply;
    }
    char chunk[2048];
    ssize_t n = recv(fd_, chunk, sizeof chunk, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw std::runtime_error(std::string("recv: ") + std::strerror(errno));
    if (n == 0) throw std::runtime_error("server closed the connection");
    buffer_.append(chunk, static_cast<size_t>(n));
  }
}

int reply_version(const std::string& reply) {
  if (reply.rfind("Hello, ", 0) == 0) return 0;
  if (reply.rfind("Hi there, ", 0) == 0) return 1;
  return -1;
}

// ---- LoadClient ----------------------------------------------------------------------------

LoadClient::LoadClient(int port, int clients)
    : port_(port), clients_(clients), per_(std::make_unique<PerThread[]>(static_cast<size_t>(clients))) {}

LoadClient::~LoadClient() { stop(); }

void LoadClient::start() {
  stopping_ = false;
  for (int i = 0; i < clients_; ++i) threads_.emplace_back([this, i] { run(i); });
}

void LoadClient::stop() {
  stopping_ = true;
  for (auto& t : threads_) t.join();
  threads_.clear();
}

LoadClient::Counts LoadClient::counts() const {
  Counts c;
  for (int i = 0; i < clients_; ++i) {
    const PerThread& p = per_[static_cast<size_t>(i)];
    c.v0 += p.v0.load(std::memory_order_relaxed);
    c.v1 += p.v1.load(std::memory_order_relaxed);
    c.other += p.other.load(std::memory_order_relaxed);
    c.failures += p.failures.load(std::memory_order_relaxed);
  }
  return c;
}

void LoadClient::run(int index) {
  PerThread& mine = per_[static_cast<size_t>(index)];
  const std::string line = "HELLO load" + std::to_string(index);
  std::unique_ptr<Connection> conn;
  while (!stopping_) {
    try {
      if (!conn) conn = std::make_unique<Connection>(port_, 2s);
      std::string reply = conn->request(line);
      switch (reply_version(reply)) {
        case 0: mine.v0.fetch_add(1, std::memory_order_relaxed); break;
        case 1: mine.v1.fetch_add(1, std::memory_order_relaxed); break;
        default: mine.other.fetch_add(1, std::memory_order_relaxed); break;
      }
    } catch (const std::exception&) {
      conn.reset();
      mine.failures.fetch_add(1, std::memory_order_relaxed);
      if (!stopping_) sleep_ms(10);
    }
  }
}

// ---- Prober --------------------------------------------------------------------------------

Prober::Prober(int port, std::chrono::microseconds interval) : port_(port), interval_(interval) {
  samples_.reserve(1 << 16);
}

Prober::~Prober() { stop(); }

void Prober::start() {
  stopping_ = false;
  thread_ = std::thread([this] { run(); });
}

void Prober::stop() {
  stopping_ = true;
  if (thread_.joinable()) thread_.join();
}

void Prober::run() {
  std::unique_ptr<Connection> conn;
  auto next = Clock::now();
  while (!stopping_) {
    uint64_t sent = now_ns();
    try {
      if (!conn) conn = std::make_unique<Connection>(port_, 10s);
      std::string reply = conn->request("HELLO probe");
      uint64_t done = now_ns();
      std::lock_guard lock(mutex_);
      samples_.push_back({sent, done, reply_version(reply)});
    } catch (const std::exception&) {
      conn.reset();
      failures_++;
      {
        std::lock_guard lock(mutex_);
        samples_.push_back({sent, now_ns(), -2});
      }
      std::this_thread::sleep_for(100us);
      continue;
    }
    next += interval_;
    auto now = Clock::now();
    if (next < now) next = now;
    std::this_thread::sleep_until(next);
  }
}

double Prober::longest_wait_ns(uint64_t from_ns, uint64_t to_ns) const {
  std::lock_guard lock(mutex_);
  double longest = std::nan("");
  for (const Sample& s : samples_) {
    if (s.done_ns < from_ns || s.sent_ns > to_ns || s.version < 0) continue;
    double wait = static_cast<double>(s.done_ns - s.sent_ns);
    if (std::isnan(longest) || wait > longest) longest = wait;
  }
  return longest;
}

uint64_t Prober::first_success_after(uint64_t after_ns) const {
  std::lock_guard lock(mutex_);
  for (const Sample& s : samples_) {
    if (s.sent_ns >= after_ns && s.version >= 0) return s.done_ns;
  }
  return 0;
}

uint64_t Prober::first_failure_after(uint64_t after_ns) const {
  std::lock_guard lock(mutex_);
  for (const Sample& s : samples_) {
    if (s.sent_ns >= after_ns && s.version == -2) return s.done_ns;
  }
  return 0;
}

size_t Prober::replies() const {
  std::lock_guard lock(mutex_);
  size_t n = 0;
  for (const Sample& s : samples_) n += s.version >= 0;
  return n;
}

std::pair<size_t, size_t> Prober::versions_after(uint64_t after_ns) const {
  std::lock_guard lock(mutex_);
  std::pair<size_t, size_t> n{0, 0};
  for (const Sample& s : samples_) {
    if (s.sent_ns < after_ns) continue;
    if (s.version == 0) n.first++;
    if (s.version == 1) n.second++;
  }
  return n;
}

}  // namespace bench
