// polusd's socket and its requests (server.h).
#include "server.h"
#include "cancel_watch.h"
#include "worker_pool.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <thread>

#include <spdlog/spdlog.h>

#include "authorise.h"
#include "polus/stop_request.h"
#include "run.h"

namespace polusd {

namespace {

constexpr int kSdListenFdsStart = 3;
constexpr size_t kIdleWorkers = 4;  // connection threads kept waiting for the next request  // sd_listen_fds(3): passed sockets start at fd 3

/// The socket systemd passed (socket activation), or -1: LISTEN_PID must be ours and
/// LISTEN_FDS at least 1 (the protocol of sd_listen_fds(3), without libsystemd).
int socket_from_systemd() {
  const char* listen_pid = std::getenv("LISTEN_PID");
  const char* listen_fds = std::getenv("LISTEN_FDS");
  if (!listen_pid || !listen_fds || std::atol(listen_pid) != getpid() || std::atoi(listen_fds) < 1) return -1;
  unsetenv("LISTEN_PID");
  unsetenv("LISTEN_FDS");
  unsetenv("LISTEN_FDNAMES");
  int fd = kSdListenFdsStart;
  fcntl(fd, F_SETFD, FD_CLOEXEC);
  return fd;
}

[[noreturn]] void fail(const std::string& what) { throw std::runtime_error(what + ": " + std::strerror(errno)); }

/// Reads one line (up to 16 MiB) from `fd` into `line`; false at EOF or error.
bool read_line(int fd, std::string& buffer, std::string& line) {
  for (;;) {
    size_t newline = buffer.find('\n');
    if (newline != std::string::npos) {
      line = buffer.substr(0, newline);
      buffer.erase(0, newline + 1);
      return true;
    }
    if (buffer.size() > (16u << 20)) return false;
    char chunk[4096];
    ssize_t n = ::read(fd, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    buffer.append(chunk, static_cast<size_t>(n));
  }
}

polusctl::Output refuse(const std::string& command, const std::string& why) {
  polusctl::Output out;
  out.err = "polusctl " + command + ": " + why + " (permission denied)\n";
  out.status = polus::error_exit_status(polus::ErrorCode::kPermissionDenied);
  return out;
}

/// Serves one connection: authorise, run the request (watching for a cancel line meanwhile),
/// answer.
void serve_connection(int fd, double accepted_us, CancelWatch& cancels) {
  Caller caller;
  ucred cred{};
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    ::close(fd);
    return;
  }
  caller = Caller{cred.pid, cred.uid, cred.gid};
  std::string buffer, line;
  if (!read_line(fd, buffer, line)) {
    ::close(fd);
    return;
  }
  const double read_us = polusctl::timestamp_us();
  polusctl::Output out;
  polusctl::Json request;
  polusctl::Json timings;  // asked for by the bench (polusctl with $POLUS_TIMINGS)
  try {
    request = polusctl::Json::parse(line);
    if (request.is_object() && request.value("timings", false)) timings = {{"accepted", accepted_us}, {"read", read_us}};
  } catch (const std::exception& e) {
    out.err = std::string("polusd: unreadable request: ") + e.what() + "\n";
    out.status = 2;
  }
  const std::string command = request.is_object() ? request.value("command", std::string()) : "";
  if (out.status == 0) {
    // Every process the request selects, each checked (a selector is resolved again when the
    // command runs; a process that appears in between is checked by nobody: the policy's
    // business is who, and who does not change).
    std::vector<pid_t> targets;
    try {
      if (request.contains("targets")) targets = polusctl::resolve_targets(request["targets"]);
    } catch (const std::exception&) {
      // The command reports it.
    }
    if (targets.empty()) {
      if (std::string why = may_act(caller, 0, command); !why.empty()) out = refuse(command, why);
    }
    for (pid_t target : targets) {
      if (std::string why = may_act(caller, target, command); !why.empty()) {
        out = refuse(command, why);
        break;
      }
    }
  }
  if (out.status == 0 && out.err.empty()) {
    spdlog::info("polusd: {} for pid {} uid {}", command, caller.pid, caller.uid);
    request["daemon"] = true;
    // Who the engine acts for, from SO_PEERCRED: written over anything the client sent.
    request["caller"] = {{"uid", caller.uid}, {"gid", caller.gid}, {"pid", caller.pid}};
    // A relayed Ctrl-C ({"cancel": SIGNAL}) stops this operation alone, at its next safe point;
    // the daemon's one cancel watcher listens for it (no thread of this request's own).
    auto cancel = std::make_shared<std::atomic<int>>(0);
    if (!cancels.watch(fd, buffer, cancel)) {
      spdlog::warn("polusd: cannot watch the client of this {} for a Ctrl-C ({}); it runs to its end", command,
                   std::strerror(errno));
    }
    polus::thread_stop_flag() = cancel.get();
    // Progress goes to the client as lines before its answer; a client gone or slow to read
    // does not hold the operation up (MSG_DONTWAIT: a line that does not fit is dropped).
    polusctl::progress_sink() = [fd](const std::string& line) {
      const std::string message = polusctl::Json{{"progress", line}}.dump() + "\n";
      (void)::send(fd, message.data(), message.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    };
    if (!timings.is_null()) timings["run_begin"] = polusctl::timestamp_us();
    out = polusctl::run_request(request);
    if (!timings.is_null()) {
      timings["run_end"] = polusctl::timestamp_us();
      timings["engine_call"] = out.engine_call_us;
    }
    polusctl::progress_sink() = nullptr;
    polus::thread_stop_flag() = nullptr;
  }
  polusctl::Json reply{{"status", out.status}, {"out", out.out}, {"err", out.err}};
  if (!timings.is_null()) {
    timings["answer"] = polusctl::timestamp_us();
    reply["timings"] = timings;
  }
  std::string answer = reply.dump() + "\n";
  size_t sent = 0;
  while (sent < answer.size()) {
    ssize_t n = ::send(fd, answer.data() + sent, answer.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    sent += static_cast<size_t>(n);
  }
  cancels.forget(fd);  // (after the answer: the client is not kept waiting for it)
  ::close(fd);
}

}  // namespace

Listener::Listener(const std::string& path) : path_(path) {
  fd_ = socket_from_systemd();
  if (fd_ >= 0) {
    from_systemd_ = true;
    return;
  }
  const std::string dir = path.substr(0, path.rfind('/'));
  if (!dir.empty() && ::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) fail("cannot make " + dir);
  // One polusd per socket: the lock decides, and only its holder touches the socket's path.
  lock_fd_ = ::open((path + ".lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd_ < 0) fail("cannot open " + path + ".lock");
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      already_served_ = true;
      return;
    }
    fail("cannot lock " + path + ".lock");
  }
  std::string pid = std::to_string(getpid()) + "\n";
  if (::ftruncate(lock_fd_, 0) != 0 || ::pwrite(lock_fd_, pid.data(), pid.size(), 0) < 0) {
    spdlog::warn("polusd: cannot write its pid into {}.lock", path);
  }
  sockaddr_un address{};
  if (path.size() >= sizeof address.sun_path) {
    errno = ENAMETOOLONG;
    fail("socket path " + path);
  }
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) fail("socket");
  ::unlink(path.c_str());  // a socket left by a polusd that was killed (we hold the lock)
  mode_t old = ::umask(0077);
  int bound = ::bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address);
  ::umask(old);
  if (bound != 0) fail("cannot bind " + path);
  if (::listen(fd_, 64) != 0) fail("cannot listen on " + path);
}

Listener::~Listener() {
  if (fd_ >= 0) ::close(fd_);
  if (lock_fd_ >= 0) {
    if (!already_served_) ::unlink(path_.c_str());
    ::close(lock_fd_);
  }
}

void serve(Listener& listener, Drivers& drivers) {
  polusctl::in_flight_hook() = [&drivers](pid_t pid, const polus::EngineOptions& options) { drivers.adopt(pid, options); };
  CancelWatch cancels;
  WorkerPool workers(kIdleWorkers);
  while (!polus::stop_requested()) {
    pollfd p{listener.fd(), POLLIN, 0};
    // A bounded wait: the stop signals are blocked (they wait for us), so look at them often.
    if (::poll(&p, 1, 100) <= 0) continue;
    int fd = ::accept4(listener.fd(), nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    const double accepted = polusctl::timestamp_us();
    workers.run([fd, accepted, &cancels] { serve_connection(fd, accepted, cancels); });
  }
  workers.stop();
}

}  // namespace polusd
