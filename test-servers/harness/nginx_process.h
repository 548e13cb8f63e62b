// nginx_process.h — Debian's nginx as it runs in production (daemon on: a master that forks
// its workers), with its own prefix, configuration and port, for tests that patch it; and the
// small HTTP client they talk to it with. Header-only, like greeter_process.h.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace polus::testing {

/// A TCP port on 127.0.0.1 no one listens on now.
inline int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ::close(fd);
    throw std::runtime_error("no free port");
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

/// One HTTP/1.0 GET: the whole response, "" if the connection failed or nothing came within
/// 5 s. `why`, when given, receives what went wrong on an empty response (the step, errno, and
/// how long it took).
///
/// The waits are poll()s that go on after EINTR. Not SO_RCVTIMEO: a blocking socket call with
/// a timeout set is never restarted by the kernel (signal(7)), so a signal that merely woke
/// the thread — a SIGCHLD queued while the test's main thread had it blocked, handed to this
/// thread and then ignored — made read() fail with EINTR halfway through a good response.
inline std::string http_get(int port, const std::string& path, std::string* why = nullptr) {
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + std::chrono::seconds(5);
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  auto failed = [&](const char* step, int error) {
    if (why) {
      const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
      *why = std::string(step) + ": " + (error ? std::strerror(error) : "closed by the server") + " after " +
             std::to_string(ms.count()) + " ms";
    }
    ::close(fd);
    return std::string();
  };
  // Waits until `fd` is ready for `events`; false at the deadline.
  auto wait_for = [&](short events) {
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      pollfd p{fd, events, 0};
      int n = ::poll(&p, 1, static_cast<int>(left.count()));
      if (n > 0) return true;
      if (n < 0 && errno != EINTR) return false;
    }
  };
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    if (errno != EINPROGRESS) return failed("connect", errno);
    if (!wait_for(POLLOUT)) return failed("connect", ETIMEDOUT);
    int error = 0;
    socklen_t len = sizeof error;
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len);
    if (error != 0) return failed("connect", error);
  }
  const std::string request = "GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n";
  for (size_t sent = 0; sent < request.size();) {
    ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else if (errno == EAGAIN || errno == EINTR) {
      if (!wait_for(POLLOUT)) return failed("send", ETIMEDOUT);
    } else {
      return failed("send", errno);
    }
  }
  std::string response;
  char buffer[4096];
  for (;;) {
    ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n > 0) {
      response.append(buffer, static_cast<size_t>(n));
    } else if (n == 0) {
      break;
    } else if (errno == EAGAIN || errno == EINTR) {
      if (!wait_for(POLLIN)) return failed("read", ETIMEDOUT);
    } else {
      return failed("read", errno);
    }
  }
  if (response.empty()) return failed("read", 0);
  ::close(fd);
  return response;
}

/// The value of header `name` in an HTTP response, "" if absent.
inline std::string header(const std::string& response, const std::string& name) {
  auto at = response.find("\r\n" + name + ": ");
  if (at == std::string::npos) return "";
  at += name.size() + 4;
  return response.substr(at, response.find("\r\n", at) - at);
}

/// The processes whose parent is `parent`.
inline std::vector<pid_t> children_of(pid_t parent) {
  std::vector<pid_t> children;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(entry.path() / "stat");
    std::string line;
    if (!std::getline(stat, line)) continue;
    auto close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(line.substr(close + 2));
    char state;
    pid_t ppid = 0;
    rest >> state >> ppid;
    if (ppid == parent && state != 'Z') children.push_back(std::stoi(name));
  }
  return children;
}

/// Whether `pid` still runs (a zombie does not: nginx's master is no child of ours, and init
/// reaps it when it will).
inline bool alive(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return false;
  auto close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() && line[close + 2] != 'Z';
}

/// /usr/sbin/nginx in daemon mode with its own prefix, configuration and port; stopped (and
/// its directory removed) when it ends.
class NginxProcess {
 public:
  /// `binary`: /usr/sbin/nginx, or a copy of it (tests that need a build of their own).
  explicit NginxProcess(int workers = 2, std::string binary = "/usr/sbin/nginx")
      : port_(free_port()), worker_count_(workers), binary_(std::move(binary)) {
    char dir_template[] = "/tmp/polus-nginx-XXXXXX";
    if (!::mkdtemp(dir_template)) throw std::runtime_error("mkdtemp failed");
    dir_ = dir_template;
    ::chmod(dir_.c_str(), 0755);  // the workers (user nobody) read the files under it
    std::filesystem::create_directories(dir_ + "/www");
    std::filesystem::create_directories(dir_ + "/logs");
    std::ofstream(dir_ + "/www/index.html") << "hello from nginx\n";
    std::ofstream(dir_ + "/nginx.conf")
        << "daemon on;\nmaster_process on;\nworker_processes " << worker_count_ << ";\npid " << dir_ << "/nginx.pid;\n"
        << "error_log " << dir_ << "/logs/error.log;\nevents { worker_connections 256; }\n"
        << "http { access_log off; server { listen 127.0.0.1:" << port_ << "; location / { root " << dir_
        << "/www; } } }\n";
    start();
  }
  ~NginxProcess() {
    stop();
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
  NginxProcess(const NginxProcess&) = delete;
  NginxProcess& operator=(const NginxProcess&) = delete;

  /// Starts it (the constructor does): returns once its master runs all its workers.
  void start() {
    std::filesystem::remove(dir_ + "/nginx.pid");
    std::string command = binary_ + " -p " + dir_ + " -c " + dir_ + "/nginx.conf";
    if (std::system(command.c_str()) != 0) throw std::runtime_error("nginx did not start: " + command);
    for (int i = 0; i < 500 && master_ == 0; ++i) {
      std::ifstream pid_file(dir_ + "/nginx.pid");
      if (!(pid_file >> master_)) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (!wait_for_workers()) {
      stop();
      throw std::runtime_error("nginx did not start its master and " + std::to_string(worker_count_) + " workers");
    }
  }

  /// Kills the master first (a master that saw a worker die would start another), then the
  /// workers it had.
  void stop() {
    if (master_ > 0) {
      std::vector<pid_t> workers_left = workers();
      ::kill(master_, SIGKILL);
      for (pid_t pid : workers_left) ::kill(pid, SIGKILL);
      // All gone before returning: a worker still exiting holds the listening socket, and
      // the next start() would fail to bind the port.
      for (int i = 0; i < 500; ++i) {
        bool any = alive(master_);
        for (pid_t pid : workers_left) any = any || alive(pid);
        if (!any) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      master_ = 0;
    }
  }

  /// Whether the master runs as many workers as configured (waits up to 5 s for them).
  bool wait_for_workers() const {
    for (int i = 0; i < 500; ++i) {
      if (master_ && static_cast<int>(workers().size()) == worker_count_) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }

  /// The last lines of nginx's error log (what it said about workers that died).
  std::string error_log() const {
    std::ifstream in(dir_ + "/logs/error.log");
    std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return all.size() > 2000 ? all.substr(all.size() - 2000) : all;
  }

  pid_t master() const { return master_; }
  std::vector<pid_t> workers() const { return master_ ? children_of(master_) : std::vector<pid_t>{}; }
  int port() const { return port_; }

 private:
  int port_;
  int worker_count_;
  std::string binary_;
  std::string dir_;
  pid_t master_ = 0;
};

}  // namespace polus::testing
