// util.h — what every benchmark section needs: time, samples, child processes, /proc.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace bench {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

/// CLOCK_MONOTONIC in nanoseconds (the same clock as Clock).
uint64_t now_ns();
void sleep_ms(double ms);

/// Repeated measurements of one quantity. Every figure in the table is a median of these.
class Samples {
 public:
  void add(double value) { values_.push_back(value); }
  bool empty() const { return values_.empty(); }
  size_t size() const { return values_.size(); }
  const std::vector<double>& values() const { return values_; }
  /// Linear-interpolated quantile, q in [0, 1]; NaN when empty.
  double quantile(double q) const;
  double median() const { return quantile(0.5); }
  double min() const { return quantile(0.0); }
  double max() const { return quantile(1.0); }

 private:
  std::vector<double> values_;
};

/// A process run to completion: its exit status, output and wall time from spawn to reap.
struct ProcResult {
  int status = -1;  // raw wait status
  bool timed_out = false;
  std::string out;
  std::string err;
  uint64_t wall_ns = 0;
  bool ok() const;
  /// "exit 3: <first line of stderr>" and the like, for error messages.
  std::string describe() const;
};

/// Runs argv[0] (an absolute path, or found in PATH) with stdin from /dev/null, capturing
/// stdout and stderr. wall_ns is measured from just before the fork to just after the reap:
/// what an operator's shell would see. Killed (SIGKILL) after `timeout`.
ProcResult run_process(const std::vector<std::string>& argv, std::chrono::milliseconds timeout = 60s);

/// A long-running child with a pipe to its stdin and one from its stdout (line protocol);
/// stderr is inherited. It gets PR_SET_PDEATHSIG(SIGKILL), so nothing outlives the driver.
class Child {
 public:
  static Child spawn(const std::vector<std::string>& argv);
  Child() = default;
  Child(Child&& other) noexcept;
  Child& operator=(Child&& other) noexcept;
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child();

  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0 && !reaped_; }
  void send_line(const std::string& line);
  /// The next line of its stdout, without '\n'; throws on EOF or timeout.
  std::string read_line(std::chrono::milliseconds timeout = 10s);
  /// Sends `sig`, waits up to `grace` for the exit (then SIGKILL) and reaps. Returns the wait status.
  int stop(int sig = SIGTERM, std::chrono::milliseconds grace = 3s);
  /// Reaps after the caller killed it; blocks.
  int wait();

 private:
  void close_fds();
  pid_t pid_ = -1;
  int in_fd_ = -1;   // its stdin
  int out_fd_ = -1;  // its stdout
  bool reaped_ = false;
  int status_ = -1;
  std::string buffer_;
  std::string name_;
};

/// Memory of a process: VmRSS and VmSize from /proc/PID/status, and the sum of the ranges in
/// /proc/PID/maps split into accessible mappings and PROT_NONE ("---p") reservations, such as
/// the 64 MiB glibc reserves for each new malloc arena. mapped + reserved = VmSize.
struct ProcMemory {
  long rss_kb = 0;
  long vm_kb = 0;
  uint64_t mapped_bytes = 0;    // readable, writable or executable
  uint64_t reserved_bytes = 0;  // PROT_NONE
};
ProcMemory read_memory(pid_t pid);

/// CPU time all threads of `pid` have run so far (sum of /proc/PID/task/*/schedstat), in ns.
uint64_t process_cpu_ns(pid_t pid);

/// The three load averages from /proc/loadavg, e.g. "0.52 0.40 0.33".
std::string load_average();

/// Whether /proc/PID/maps maps a file whose path contains `needle`.
bool maps_contain(pid_t pid, const std::string& needle);

/// The unsigned integer value of "key": in a flat JSON text (first occurrence).
std::optional<uint64_t> json_uint(const std::string& json, const std::string& key);
/// The string value of "key": (first occurrence), unescaped naively (no \u sequences).
std::optional<std::string> json_string(const std::string& json, const std::string& key);
/// How many times `needle` occurs in `text`.
size_t count_occurrences(const std::string& text, const std::string& needle);

/// printf-style std::string.
std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
/// "12.3 ms", "850 µs", "1.23 s" — three significant digits, unit chosen by size.
std::string human_ns(double ns);
/// "12.3" style: three significant digits.
std::string sig3(double value);

/// The whole content of a (small) file, or "" if unreadable.
std::string read_file(const std::string& path);

}  // namespace bench
