// greeter.h — the greeter test server as a benchmark subject, and our own clients for it:
// a multithreaded load client over persistent connections, and a probe client that
// timestamps one request every few hundred microseconds to see how long the server stalls.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "util.h"

namespace bench {

/// A greeter-v0 process: `greeter --port <port> --workers <workers>` (port 0: any free one).
class Greeter {
 public:
  static Greeter start(const std::string& binary, int port, int workers);
  pid_t pid() const { return child_.pid(); }
  int port() const { return port_; }
  /// One request on a fresh connection.
  std::string request(const std::string& line) const;
  /// STATS as key -> value (requests, eintr, threads, ...).
  std::map<std::string, long> stats() const;
  /// SIGTERM (or `sig`), wait, reap.
  int stop(int sig = SIGTERM) { return child_.stop(sig); }
  bool running() const { return child_.running(); }

 private:
  Child child_;
  int port_ = 0;
};

/// One persistent TCP connection to 127.0.0.1:port; every call times out after `timeout`.
class Connection {
 public:
  Connection(int port, std::chrono::milliseconds timeout);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  /// Sends line + '\n', returns the reply line; throws std::runtime_error on any failure.
  std::string request(const std::string& line);

 private:
  int fd_ = -1;
  std::string buffer_;
};

/// Which greeter wrote a HELLO reply: 0 ("Hello, ..."), 1 ("Hi there, ..."), -1 otherwise.
int reply_version(const std::string& reply);

/// `clients` threads, each sending "HELLO load<i>" over its own persistent connection as
/// fast as replies come back, counting replies by version.
class LoadClient {
 public:
  struct Counts {
    uint64_t v0 = 0, v1 = 0, other = 0, failures = 0;
    uint64_t total() const { return v0 + v1 + other; }
  };
  LoadClient(int port, int clients);
  ~LoadClient();
  void start();
  void stop();
  Counts counts() const;

 private:
  struct alignas(64) PerThread {
    std::atomic<uint64_t> v0{0}, v1{0}, other{0}, failures{0};
  };
  void run(int index);
  int port_;
  int clients_;
  std::unique_ptr<PerThread[]> per_;
  std::vector<std::thread> threads_;
  std::atomic<bool> stopping_{false};
};

/// Sends "HELLO probe" every `interval` (one persistent connection, reconnecting at once
/// after a failure) and records when each request was sent and answered.
class Prober {
 public:
  Prober(int port, std::chrono::microseconds interval);
  ~Prober();
  void start();
  void stop();
  /// The longest any request waited for its reply, among requests that were in flight at
  /// some time in [from_ns, to_ns] (now_ns() clock). NaN if there were none.
  double longest_wait_ns(uint64_t from_ns, uint64_t to_ns) const;
  /// When the first good reply to a request sent after `after_ns` arrived; 0 if none yet.
  uint64_t first_success_after(uint64_t after_ns) const;
  /// When the first failed request (connection refused, reset, closed) sent after `after_ns`
  /// failed; 0 if none.
  uint64_t first_failure_after(uint64_t after_ns) const;
  /// Completed good replies so far.
  size_t replies() const;
  uint64_t failures() const { return failures_; }
  /// Good replies by version (0, 1) received after `after_ns`.
  std::pair<size_t, size_t> versions_after(uint64_t after_ns) const;

 private:
  struct Sample {
    uint64_t sent_ns;
    uint64_t done_ns;  // reply received, or failure noticed
    int version;       // 0, 1; -1 unexpected reply; -2 failure
  };
  void run();
  int port_;
  std::chrono::microseconds interval_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> failures_{0};
  mutable std::mutex mutex_;
  std::vector<Sample> samples_;
};

}  // namespace bench
