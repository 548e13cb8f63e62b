// polusd PID — drives one process's update in flight to its end, then exits (polusd's first
// form, before it served polusctl; kept for scripts that run it per process).
//
//   polusd PID [--interval MS] [--give-up-after S] [--agent PATH] [--config PATH] [--audit-log PATH]
//
// Watches process PID and completes its in-flight data update (an apply or rollback left
// `syncing` because a thread kept running code it retires): every interval it runs one
// round of finish_update, then exits 0 once nothing is in flight, 3 if the process is gone,
// 14 after --give-up-after, 2 for a usage error (--interval 1 to 3600000 ms, --give-up-after
// 1 to 31536000 s, PID a whole number that fits pid_t), 16 if, run as root, it cannot write the
// audit log. Between rounds it holds no ptrace attachment, so `polusctl status` and `rollback`
// work. Each round that ends the update (or fails for good) is recorded in the audit trail,
// configured as polusctl's (/etc/polus/polus.conf, $POLUS_AUDIT_LOG, --audit-log); rounds that
// leave the update syncing are not.
#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>

#include <spdlog/spdlog.h>

#include "polus/engine.h"
#include "polus/error.h"
#include "polus/stop_request.h"

namespace {

constexpr const char* kUsage =
    "usage: polusd --serve [--socket PATH] [--interval MS]\n"
    "       polusd PID [--interval MS] [--give-up-after S] [--agent PATH] [--config PATH] [--audit-log PATH]\n";

[[noreturn]] void usage_error(const std::string& message) {
  std::cerr << "polusd: " << message << "\n" << kUsage;
  std::exit(2);
}

/// A whole decimal number in [min, max]: digits only (no sign, space, fraction, hex or
/// exponent); anything else is a usage error naming `what`.
uint64_t whole_number(const std::string& what, const std::string& text, uint64_t min, uint64_t max) {
  if (text.empty() || text.size() > 18 || text.find_first_not_of("0123456789") != std::string::npos ||
      std::stoull(text) < min || std::stoull(text) > max) {
    usage_error(what + " must be a whole number from " + std::to_string(min) + " to " + std::to_string(max) +
                ", not '" + text + "'");
  }
  return std::stoull(text);
}

}  // namespace

namespace polusd {

int watch_one(int argc, char** argv) {
  if (argc < 2) usage_error("no process id");
  pid_t pid = static_cast<pid_t>(whole_number("the process id", argv[1], 1, std::numeric_limits<pid_t>::max()));
  polus::EngineOptions options;
  if (const char* agent = std::getenv("POLUS_AGENT")) options.agent_path = agent;
  options.sync_timeout = std::chrono::milliseconds(200);
  auto interval = std::chrono::milliseconds(500);
  std::chrono::seconds give_up = std::chrono::hours(24 * 365);
  std::string config = polus::kDefaultConfigFile;
  bool config_given = false;
  std::string audit_log;
  for (int i = 2; i < argc; i += 2) {
    std::string flag = argv[i];
    if (flag != "--interval" && flag != "--give-up-after" && flag != "--agent" && flag != "--config" &&
        flag != "--audit-log") {
      usage_error("unknown option " + flag);
    }
    if (i + 1 >= argc) usage_error(flag + " needs a value");
    std::string value = argv[i + 1];
    if (flag == "--interval") interval = std::chrono::milliseconds(whole_number("--interval (milliseconds)", value, 1, 3600000));
    else if (flag == "--give-up-after") give_up = std::chrono::seconds(whole_number("--give-up-after (seconds)", value, 1, 31536000));
    else if (flag == "--config") { config = value; config_given = true; }
    else if (flag == "--audit-log") audit_log = value;
    else options.agent_path = value;
  }
  try {
    if (!polus::read_config_file(config, options) && config_given) usage_error("--config: " + config + " does not exist");
  } catch (const std::invalid_argument& e) {
    usage_error(std::string("configuration: ") + e.what());
  } catch (const polus::Error& e) {
    std::cerr << "polusd: " << e.what() << "\n";
    return polus::error_exit_status(e.code());
  }
  if (const char* env = std::getenv("POLUS_AUDIT_LOG")) options.audit.file = env;
  if (!audit_log.empty()) options.audit.file = audit_log;
  options.audit.enabled = true;
  options.audit.skip_idle_rounds = true;
  auto deadline = std::chrono::steady_clock::now() + give_up;
  spdlog::info("polusd: watching process {}", pid);
  // SIGINT, SIGTERM (systemd's stop) and SIGHUP end polusd between rounds, or at the engine's
  // next safe point within one (the update stays recorded as syncing): never mid-change.
  sigset_t stop = polus::stop_signals();
  sigprocmask(SIG_BLOCK, &stop, nullptr);
  // A sync function that faulted makes the engine abandon the update (load-failed); polusd goes
  // on until that abandon is complete too, and then says so in its exit status.
  bool abandoned = false;
  while (std::chrono::steady_clock::now() < deadline) {
    if (int sig = polus::stop_requested()) {
      spdlog::info("polusd: stopped by {}; the update of process {} stays recorded", strsignal(sig), pid);
      return 0;
    }
    try {
      polus::PatchInfo info = polus::finish_update(pid, options);
      if (info.state != "syncing") {
        spdlog::info("polusd: {} of {} is {}", info.direction, info.name, info.state);
        return abandoned ? polus::error_exit_status(polus::ErrorCode::kLoadFailed) : 0;
      }
    } catch (const polus::Error& e) {
      if (e.code() == polus::ErrorCode::kNothingToRollBack) {  // nothing (more) in flight
        return abandoned ? polus::error_exit_status(polus::ErrorCode::kLoadFailed) : 0;
      }
      if (e.code() == polus::ErrorCode::kNoSuchProcess || e.code() == polus::ErrorCode::kTargetDied) return 3;
      if (e.code() == polus::ErrorCode::kAuditFailed || e.code() == polus::ErrorCode::kPermissionDenied) {
        spdlog::error("polusd: {}", e.what());  // no later round can do better
        return polus::error_exit_status(e.code());
      }
      if (e.code() == polus::ErrorCode::kLoadFailed) {
        spdlog::error("polusd: {}", e.what());  // an abandon left syncing is finished next round
        abandoned = true;
      } else {
        // Busy (another polusctl holds the process) or transient: try again next round.
        spdlog::warn("polusd: {}", e.what());
      }
    }
    // Sleep the interval, but wake for a stop signal.
    timespec wait{static_cast<time_t>(interval.count() / 1000), static_cast<long>(interval.count() % 1000) * 1000000};
    if (sigtimedwait(&stop, nullptr, &wait) > 0) {
      spdlog::info("polusd: stopped by a signal; the update of process {} stays recorded", pid);
      return 0;
    }
  }
  return 14;
}

}  // namespace polusd
