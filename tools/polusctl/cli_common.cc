// What every polusctl command unit shares (cli.h): option parsing and checking, the agent's
// default path, and running a request with its errors mapped to exit statuses.
#include <limits.h>
#include <pwd.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <limits>

#include "cli.h"
#include "commands.h"

namespace polusctl {

namespace {

constexpr uint64_t kMaxMilliseconds = 86400000;  // a day

}  // namespace

bool whole_number(const std::string& text, uint64_t min, uint64_t max, uint64_t& value) {
  if (text.empty() || text.size() > 18 || text.find_first_not_of("0123456789") != std::string::npos) return false;
  value = std::stoull(text);
  return value >= min && value <= max;
}

pid_t parse_pid(const std::string& text) {
  uint64_t value = 0;
  if (!whole_number(text, 1, std::numeric_limits<pid_t>::max(), value)) {
    throw UsageError("'" + text + "' is not a process id (a whole number from 1 to " +
                     std::to_string(std::numeric_limits<pid_t>::max()) + ")");
  }
  return static_cast<pid_t>(value);
}

uid_t parse_owner(const std::string& text) {
  if (!text.empty() && text.find_first_not_of("0123456789") == std::string::npos) {
    errno = 0;
    unsigned long value = std::strtoul(text.c_str(), nullptr, 10);
    if (errno != 0 || value >= static_cast<unsigned long>(static_cast<uid_t>(-1))) throw UsageError("'" + text + "' is not a uid");
    return static_cast<uid_t>(value);
  }
  struct passwd pw;
  struct passwd* found = nullptr;
  char buf[4096];
  if (text.empty() || getpwnam_r(text.c_str(), &pw, buf, sizeof buf, &found) != 0 || !found) {
    throw UsageError("--allow-owner: no user named '" + text + "'");
  }
  return found->pw_uid;
}

std::chrono::milliseconds parse_ms(const std::string& option, const std::string& text, uint64_t min) {
  uint64_t value = 0;
  if (!whole_number(text, min, kMaxMilliseconds, value)) {
    throw UsageError(option + " needs a whole number of milliseconds from " + std::to_string(min) + " to " +
                     std::to_string(kMaxMilliseconds) + ", not '" + text + "'");
  }
  return std::chrono::milliseconds(value);
}

double timestamp_us() {
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  return static_cast<double>(now.tv_sec) * 1e6 + static_cast<double>(now.tv_nsec) / 1e3;
}

std::string default_store_path() {
  if (const char* env = std::getenv("POLUS_STORE"); env && *env) return env;
  if (geteuid() == 0) return "/var/lib/polus";
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "/tmp") + "/.local/state/polus";
}

std::string default_socket_path() {
  if (const char* env = std::getenv("POLUS_SOCKET"); env && *env) return env;
  if (geteuid() == 0) return "/run/polus/polusd.sock";
  if (const char* runtime = std::getenv("XDG_RUNTIME_DIR"); runtime && *runtime) return std::string(runtime) + "/polus/polusd.sock";
  return "/tmp/polus-" + std::to_string(geteuid()) + "/polusd.sock";
}

std::string beside_this_program(const std::vector<std::string>& candidates, const std::string& otherwise) {
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return otherwise;
  self[n] = 0;
  const std::string dir = std::string(self).substr(0, std::string(self).rfind('/'));
  for (const std::string& candidate : candidates) {
    char resolved[PATH_MAX];
    if (realpath((dir + "/" + candidate).c_str(), resolved) && access(resolved, R_OK) == 0) return resolved;
  }
  return otherwise;
}

std::string default_agent_path() {
  if (const char* env = std::getenv("POLUS_AGENT")) return env;
  // The build tree (tools/ beside agent/), then an install at any prefix (sbin/ and
  // lib/polus/ as cmake --install lays them out).
  return beside_this_program({"../agent/libpolus-agent.so", POLUS_AGENT_FROM_SBIN, "../lib/polus/libpolus-agent.so",
                              "libpolus-agent.so"},
                             POLUS_INSTALLED_AGENT);
}

void add_engine_options(CLI::App* sub, EngineArgs& args, unsigned which) {
  if (which & kAgent) {
    sub->add_option("--agent", args.agent, "libpolus-agent.so to load (default: $POLUS_AGENT, next to polusctl, or "
                                           POLUS_INSTALLED_AGENT ")")->type_name("PATH");
    sub->add_flag("--no-rehearsal", args.no_rehearsal,
                  "load the patch into PID directly, without trying it first in a copy of the process (for huge or "
                  "seccomp-confined processes: a crashing constructor or a forbidden system call then hits PID itself)");
  }
  if (which & kDebugFiles) {
    sub->add_option("--debug-file", args.debug_files, "separate debug file with the symbols of a stripped target (repeatable)")
        ->type_name("PATH")->expected(1)->allow_extra_args(false)->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  }
  if (which & kAllowOwner) {
    sub->add_option("--allow-owner", args.allow_owners,
                    "also trust patch files (and directories) owned by USER, a name or uid (repeatable); otherwise, "
                    "run as root, only root-owned ones (SECURITY.md)")->type_name("USER")->expected(1)->allow_extra_args(false)->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  }
  if (which & kForce) {
    sub->add_flag("--force", args.force,
                  "apply even where the patch cannot reach all the code it replaces: copies gcc made of an old function "
                  "(.constprop, .isra, .part) it does not replace, or callers the debug info shows the function inlined into");
  }
  if (which & kSignature) {
    sub->add_flag("--require-signature", args.require_signature,
                  "apply only a patch with a valid PATCH.so.sig by a trusted key (also require-signature = yes in the "
                  "configuration file; cannot be turned off here)");
    sub->add_option("--trusted-keys", args.trusted_keys, "public keys that may sign patches (default /etc/polus/trusted-keys)")
        ->type_name("DIR");
  }
  if (which & kAudit) {
    sub->add_option("--audit-log", args.audit_log,
                    "append the audit record there (default /var/log/polus/audit.log, or $POLUS_AUDIT_LOG, or audit-log "
                    "in the configuration file)")->type_name("PATH");
    sub->add_option("--config", args.config, "configuration file (default /etc/polus/polus.conf, if it exists)")
        ->type_name("PATH");
  }
  if (which & kTimeout) {
    args.timeout_given = sub->add_option("--timeout", args.timeout_ms, "how long to wait for a safe moment (default 10000; 1 to 86400000)")
        ->type_name("MS");
  }
  if (which & kSyncTimeout) {
    args.sync_timeout_given = sub->add_option("--sync-timeout", args.sync_timeout_ms,
                    "how long to wait for a data update's sync phase to end (default 10000; 0 to 86400000); past it "
                    "the update stays syncing and is completed later (by polusd, or `polusctl finish`)")
        ->type_name("MS");
  }
}

Json engine_request(const EngineArgs& args) {
  Json e;
  e["agent"] = args.agent.empty() ? default_agent_path() : args.agent;
  e["rehearse"] = !args.no_rehearsal;
  if (args.force) e["force"] = true;
  e["debug_files"] = args.debug_files;
  e["allowed_owners"] = Json::array();
  for (const std::string& owner : args.allow_owners) e["allowed_owners"].push_back(parse_owner(owner));
  if (args.timeout_given && args.timeout_given->count()) e["timeout_ms"] = parse_ms("--timeout", args.timeout_ms, 1).count();
  if (args.sync_timeout_given && args.sync_timeout_given->count()) e["sync_timeout_ms"] = parse_ms("--sync-timeout", args.sync_timeout_ms, 0).count();
  if (args.require_signature) e["require_signature"] = true;
  if (!args.trusted_keys.empty()) e["trusted_keys"] = absolute_path(args.trusted_keys);
  if (!args.audit_log.empty()) e["audit_log"] = absolute_path(args.audit_log);
  if (!args.config.empty()) e["config"] = absolute_path(args.config);
  return e;
}

void add_output_flags(CLI::App* sub, bool& json, bool& verbose) {
  sub->add_flag("--json", json, "machine-readable output on stdout");
  sub->add_flag("-v,--verbose", verbose, "log what the engine does (to stderr)");
}

}  // namespace polusctl
