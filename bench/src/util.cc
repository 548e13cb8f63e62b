#include "util.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <utility>

namespace bench {

namespace {

[[noreturn]] void throw_errno(const std::string& what, int err = errno) {
  throw std::runtime_error(what + ": " + std::strerror(err));
}

std::vector<char*> c_argv(std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  return argv;
}

int remaining_ms(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left < 0 ? 0 : static_cast<int>(left);
}

}  // namespace

uint64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

void sleep_ms(double ms) { std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(ms)); }

double Samples::quantile(double q) const {
  if (values_.empty()) return std::nan("");
  std::vector<double> v(values_);
  std::sort(v.begin(), v.end());
  double pos = q * static_cast<double>(v.size() - 1);
  size_t lo = static_cast<size_t>(std::floor(pos));
  size_t hi = std::min(lo + 1, v.size() - 1);
  double frac = pos - static_cast<double>(lo);
  return v[lo] + (v[hi] - v[lo]) * frac;
}

// ---- run_process -------------------------------------------------------------------------

bool ProcResult::ok() const { return !timed_out && WIFEXITED(status) && WEXITSTATUS(status) == 0; }

std::string ProcResult::describe() const {
  std::string why;
  if (timed_out) why = "timed out";
  else if (WIFEXITED(status)) why = "exit " + std::to_string(WEXITSTATUS(status));
  else if (WIFSIGNALED(status)) why = std::string("killed by ") + strsignal(WTERMSIG(status));
  else why = "wait status " + std::to_string(status);
  std::string first = err.substr(0, err.find('\n'));
  if (first.empty()) first = out.substr(0, out.find('\n'));
  return first.empty() ? why : why + ": " + first;
}

ProcResult run_process(const std::vector<std::string>& argv_in, std::chrono::milliseconds timeout) {
  std::vector<std::string> args(argv_in);
  std::vector<char*> argv = c_argv(args);
  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) != 0) throw_errno("pipe2");
  if (pipe2(err, O_CLOEXEC) != 0) throw_errno("pipe2");
  ProcResult result;
  uint64_t start = now_ns();
  pid_t pid = fork();
  if (pid < 0) throw_errno("fork");
  if (pid == 0) {
    // Async-signal-safe calls only: the driver is multithreaded.
    int null = open("/dev/null", O_RDONLY);
    if (null >= 0) dup2(null, STDIN_FILENO);
    dup2(out[1], STDOUT_FILENO);
    dup2(err[1], STDERR_FILENO);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    signal(SIGPIPE, SIG_DFL);
    execvp(argv[0], argv.data());
    _exit(127);
  }
  close(out[1]);
  close(err[1]);
  auto deadline = Clock::now() + timeout;
  pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  int open_fds = 2;
  while (open_fds > 0) {
    int left = remaining_ms(deadline);
    int rc = left == 0 ? 0 : poll(fds, 2, left);
    if (rc < 0 && errno == EINTR) continue;
    if (rc <= 0) {
      result.timed_out = true;
      kill(pid, SIGKILL);
      break;
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char chunk[8192];
      ssize_t n = read(fds[i].fd, chunk, sizeof chunk);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
        continue;
      }
      (i == 0 ? result.out : result.err).append(chunk, static_cast<size_t>(n));
    }
  }
  for (auto& f : fds) {
    if (f.fd >= 0) close(f.fd);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) throw_errno("waitpid");
  }
  result.wall_ns = now_ns() - start;
  result.status = status;
  return result;
}

// ---- Child -------------------------------------------------------------------------------

Child Child::spawn(const std::vector<std::string>& argv_in) {
  std::vector<std::string> args(argv_in);
  std::vector<char*> argv = c_argv(args);
  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC) != 0) throw_errno("pipe2");
  if (pipe2(out, O_CLOEXEC) != 0) throw_errno("pipe2");
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) throw_errno("fork");
  if (pid == 0) {
    dup2(in[0], STDIN_FILENO);
    dup2(out[1], STDOUT_FILENO);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(126);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    signal(SIGPIPE, SIG_DFL);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  Child child;
  child.pid_ = pid;
  child.in_fd_ = in[1];
  child.out_fd_ = out[0];
  child.name_ = argv_in.empty() ? "child" : argv_in[0].substr(argv_in[0].rfind('/') + 1);
  return child;
}

Child::Child(Child&& other) noexcept { *this = std::move(other); }

Child& Child::operator=(Child&& other) noexcept {
  if (this != &other) {
    if (running()) {
      try {
        stop(SIGKILL, 1s);
      } catch (...) {
      }
    }
    close_fds();
    pid_ = std::exchange(other.pid_, -1);
    in_fd_ = std::exchange(other.in_fd_, -1);
    out_fd_ = std::exchange(other.out_fd_, -1);
    reaped_ = std::exchange(other.reaped_, false);
    status_ = other.status_;
    buffer_ = std::move(other.buffer_);
    name_ = std::move(other.name_);
  }
  return *this;
}

Child::~Child() {
  if (running()) {
    try {
      stop(SIGTERM, 2s);
    } catch (...) {
    }
  }
  close_fds();
}

void Child::close_fds() {
  if (in_fd_ >= 0) close(in_fd_);
  if (out_fd_ >= 0) close(out_fd_);
  in_fd_ = out_fd_ = -1;
}

void Child::send_line(const std::string& line) {
  std::string data = line + "\n";
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(in_fd_, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno(name_ + ": write to stdin");
    done += static_cast<size_t>(n);
  }
}

std::string Child::read_line(std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    if (auto nl = buffer_.find('\n'); nl != std::string::npos) {
      std::string line = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      return line;
    }
    int left = remaining_ms(deadline);
    pollfd pfd{out_fd_, POLLIN, 0};
    int rc = left == 0 ? 0 : poll(&pfd, 1, left);
    if (rc < 0 && errno == EINTR) continue;
    if (rc < 0) throw_errno("poll");
    if (rc == 0) throw std::runtime_error(name_ + ": no output line within " + std::to_string(timeout.count()) + " ms");
    char chunk[4096];
    ssize_t n = read(out_fd_, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno(name_ + ": read stdout");
    if (n == 0) throw std::runtime_error(name_ + " (pid " + std::to_string(pid_) + ") closed its stdout (exited?)");
    buffer_.append(chunk, static_cast<size_t>(n));
  }
}

int Child::wait() {
  if (reaped_) return status_;
  int status = 0;
  for (;;) {
    pid_t rc = waitpid(pid_, &status, 0);
    if (rc < 0 && errno == EINTR) continue;
    if (rc < 0) {
      status = -1;
      break;
    }
    if (WIFEXITED(status) || WIFSIGNALED(status)) break;
  }
  reaped_ = true;
  status_ = status;
  return status;
}

int Child::stop(int sig, std::chrono::milliseconds grace) {
  if (pid_ <= 0) return -1;
  if (reaped_) return status_;
  kill(pid_, sig);
  auto deadline = Clock::now() + grace;
  for (;;) {
    int status = 0;
    pid_t rc = waitpid(pid_, &status, WNOHANG);
    if (rc == pid_ && (WIFEXITED(status) || WIFSIGNALED(status))) {
      reaped_ = true;
      status_ = status;
      return status;
    }
    if (rc < 0 && errno != EINTR) {
      reaped_ = true;
      status_ = -1;
      return -1;
    }
    if (Clock::now() >= deadline) {
      kill(pid_, SIGKILL);
      return wait();
    }
    std::this_thread::sleep_for(1ms);
  }
}

// ---- /proc -------------------------------------------------------------------------------

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return "";
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

ProcMemory read_memory(pid_t pid) {
  ProcMemory m;
  std::istringstream status(read_file("/proc/" + std::to_string(pid) + "/status"));
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) m.rss_kb = std::atol(line.c_str() + 6);
    if (line.rfind("VmSize:", 0) == 0) m.vm_kb = std::atol(line.c_str() + 7);
  }
  std::istringstream maps(read_file("/proc/" + std::to_string(pid) + "/maps"));
  while (std::getline(maps, line)) {
    unsigned long long start = 0, end = 0;
    char perms[8] = {0};
    if (std::sscanf(line.c_str(), "%llx-%llx %7s", &start, &end, perms) == 3 && end > start) {
      bool none = perms[0] == '-' && perms[1] == '-' && perms[2] == '-';
      (none ? m.reserved_bytes : m.mapped_bytes) += end - start;
    }
  }
  return m;
}

uint64_t process_cpu_ns(pid_t pid) {
  uint64_t total = 0;
  std::string dir = "/proc/" + std::to_string(pid) + "/task";
  DIR* tasks = opendir(dir.c_str());
  if (!tasks) return 0;
  while (dirent* entry = readdir(tasks)) {
    if (entry->d_name[0] == '.') continue;
    std::string text = read_file(dir + "/" + entry->d_name + "/schedstat");
    total += std::strtoull(text.c_str(), nullptr, 10);
  }
  closedir(tasks);
  return total;
}

std::string load_average() {
  std::istringstream in(read_file("/proc/loadavg"));
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

bool maps_contain(pid_t pid, const std::string& needle) {
  return read_file("/proc/" + std::to_string(pid) + "/maps").find(needle) != std::string::npos;
}

// ---- text --------------------------------------------------------------------------------

std::optional<uint64_t> json_uint(const std::string& json, const std::string& key) {
  std::string pattern = "\"" + key + "\":";
  size_t at = json.find(pattern);
  if (at == std::string::npos) return std::nullopt;
  at += pattern.size();
  while (at < json.size() && json[at] == ' ') ++at;
  if (at >= json.size() || json[at] < '0' || json[at] > '9') return std::nullopt;
  return std::strtoull(json.c_str() + at, nullptr, 10);
}

std::optional<std::string> json_string(const std::string& json, const std::string& key) {
  std::string pattern = "\"" + key + "\":\"";
  size_t at = json.find(pattern);
  if (at == std::string::npos) return std::nullopt;
  at += pattern.size();
  std::string value;
  for (; at < json.size() && json[at] != '"'; ++at) {
    if (json[at] == '\\' && at + 1 < json.size()) ++at;
    value += json[at];
  }
  return value;
}

size_t count_occurrences(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + needle.size())) ++n;
  return n;
}

std::string format(const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  va_list again;
  va_copy(again, args);
  int n = std::vsnprintf(nullptr, 0, fmt, args);
  va_end(args);
  std::string out(n > 0 ? static_cast<size_t>(n) : 0, '\0');
  if (n > 0) std::vsnprintf(out.data(), out.size() + 1, fmt, again);
  va_end(again);
  return out;
}

std::string sig3(double value) {
  if (std::isnan(value)) return "n/a";
  double a = std::fabs(value);
  if (a >= 100) return format("%.0f", value);
  if (a >= 10) return format("%.1f", value);
  if (a >= 1) return format("%.2f", value);
  return format("%.3f", value);
}

std::string human_ns(double ns) {
  if (std::isnan(ns)) return "n/a";
  if (ns >= 1e9) return sig3(ns / 1e9) + " s";
  if (ns >= 1e6) return sig3(ns / 1e6) + " ms";
  if (ns >= 1e3) return sig3(ns / 1e3) + " µs";
  return sig3(ns) + " ns";
}

}  // namespace bench
