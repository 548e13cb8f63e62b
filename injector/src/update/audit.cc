#include "update/audit.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <mutex>

#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/syslog_sink.h>
#include <spdlog/spdlog.h>

#include "binary/symbols.h"
#include "polus/error.h"

namespace polus {

namespace {

/// Appends each record with one write(2) to a file opened O_APPEND: the kernel positions every
/// write at the end of the file atomically, so lines from concurrent polusctl and polusd
/// processes never interleave or overwrite each other.
class AppendSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  explicit AppendSink(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  ~AppendSink() override { ::close(fd_); }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    spdlog::memory_buf_t line;
    formatter_->format(msg, line);
    ssize_t n = ::write(fd_, line.data(), line.size());
    if (n != static_cast<ssize_t>(line.size())) {
      std::fprintf(stderr, "polus: could not write the audit record to %s: %s\n", path_.c_str(),
                   n < 0 ? std::strerror(errno) : "short write");
    }
  }
  void flush_() override {}

 private:
  int fd_;
  std::string path_;
};

/// The audit file opened for appending, or -1 with `why` set.
int open_audit_file(const std::string& path, std::string& why) {
  const std::string directory = path.substr(0, path.rfind('/'));
  if (!directory.empty() && ::geteuid() == 0) ::mkdir(directory.c_str(), 0750);  // exists already: harmless
  // O_NOFOLLOW: a symlink planted in its place does not redirect root's appends elsewhere.
  int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK | O_CLOEXEC, 0640);
  if (fd < 0) {
    why = std::strerror(errno);
    return -1;
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    why = "not a regular file";
    return -1;
  }
  return fd;
}

std::string utc_now() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  tm t{};
  gmtime_r(&ts.tv_sec, &t);
  char buf[64];
  size_t n = strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &t);
  std::snprintf(buf + n, sizeof buf - n, ".%06ldZ", ts.tv_nsec / 1000);
  return buf;
}

std::string executable_of(pid_t pid) {
  char buf[PATH_MAX];
  std::string link = "/proc/" + std::to_string(pid) + "/exe";
  ssize_t n = ::readlink(link.c_str(), buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
}

}  // namespace

std::string json_quote(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(static_cast<unsigned char>(c)));
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

AuditTrail::AuditTrail(const AuditOptions& options, const Caller& caller, const char* action, pid_t pid)
    : options_(options), caller_(caller), started_(Clock::now()) {
  event_.action = action;
  event_.target_pid = pid;
  if (!options_.enabled) return;
  event_.executable = executable_of(pid);
  try {
    event_.build_id = read_build_id("/proc/" + std::to_string(pid) + "/exe");
  } catch (const std::exception&) {
    // A process that is gone or unreadable: the operation itself will say so.
  }
  std::vector<spdlog::sink_ptr> sinks;
  if (!options_.file.empty()) {
    std::string why;
    int fd = open_audit_file(options_.file, why);
    if (fd >= 0) {
      sinks.push_back(std::make_shared<AppendSink>(fd, options_.file));
    } else if (::geteuid() == 0) {
      const std::string message =
          "cannot open the audit log " + options_.file + " for appending: " + why +
          ". Run as root, Polus records every operation there first, so nothing was done; fix it, or name another "
          "file with --audit-log or audit-log in " + kDefaultConfigFile;
      if (options_.syslog) ::syslog(LOG_AUTHPRIV | LOG_ERR, "polus-audit: %s refused for process %d: %s", action, pid, message.c_str());
      throw Error(ErrorCode::kAuditFailed, message);
    } else {
      spdlog::warn("cannot open the audit log {} ({}); this {} is recorded in syslog only", options_.file, why, action);
    }
  }
  if (options_.syslog) {
    sinks.push_back(std::make_shared<spdlog::sinks::syslog_sink_mt>("polus-audit", LOG_PID, LOG_AUTHPRIV, false));
  }
  logger_ = std::make_shared<spdlog::logger>("polus-audit", sinks.begin(), sinks.end());
  logger_->set_pattern("%v");
  logger_->set_level(spdlog::level::info);
}

AuditTrail::~AuditTrail() = default;

void AuditTrail::succeeded(const PatchInfo& info) {
  if (event_.patch_name.empty()) event_.patch_name = info.name;
  if (event_.sha256.empty()) event_.sha256 = info.sha256;
  if (event_.patch_path.empty()) event_.patch_path = info.path;
  if (options_.skip_idle_rounds && event_.action == "finish" && info.state == "syncing") return;
  write(info.already_applied ? "already-applied" : "ok", 0, info.state, info.already_applied ? "already applied" : "",
        false);
}

void AuditTrail::failed(const std::exception& error) {
  const Error* e = dynamic_cast<const Error*>(&error);
  const ErrorCode code = e ? e->code() : ErrorCode::kInternal;
  if (options_.skip_idle_rounds && event_.action == "finish" &&
      (code == ErrorCode::kTimeout || code == ErrorCode::kNothingToRollBack)) {
    return;  // another operation held the target, or nothing was in flight
  }
  write(error_code_name(code), error_exit_status(code), "", error.what(), true);
}

void AuditTrail::write(const std::string& result, int exit_status, const std::string& state, const std::string& message,
                       bool warning) {
  if (!logger_) return;
  char duration[32];
  std::snprintf(duration, sizeof duration, "%.3f", static_cast<double>(elapsed_ns(started_)) / 1e6);
  std::string line = "{\"time\":" + json_quote(utc_now()) + ",\"action\":" + json_quote(event_.action) +
                     ",\"result\":" + json_quote(result) + ",\"exit_status\":" + std::to_string(exit_status) +
                     ",\"caller_uid\":" + std::to_string(caller_.uid) + ",\"caller_pid\":" + std::to_string(caller_.pid) +
                     ",\"target_pid\":" + std::to_string(event_.target_pid) +
                     ",\"executable\":" + json_quote(event_.executable) + ",\"build_id\":" + json_quote(event_.build_id) +
                     ",\"patch\":" + json_quote(event_.patch_name) + ",\"patch_path\":" + json_quote(event_.patch_path) +
                     ",\"sha256\":" + json_quote(event_.sha256) + ",\"signed_by\":" + json_quote(event_.signed_by) +
                     ",\"state\":" + json_quote(state) + ",\"duration_ms\":" + duration +
                     ",\"message\":" + json_quote(message) + "}";
  // As an argument, not as the format string: the JSON's braces are not placeholders.
  if (warning) logger_->warn("{}", line);
  else logger_->info("{}", line);
  logger_->flush();
}

}  // namespace polus
