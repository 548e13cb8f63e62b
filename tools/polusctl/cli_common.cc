// What every polusctl command unit shares (cli.h): option parsing and checking, the agent's
// default path, and running a request with its errors mapped to exit statuses.
#include <limits.h>
#include <pwd.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <limits>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "cli.h"
#include "commands.h"
#include "render.h"

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

std::string default_socket_path() {
  if (const char* env = std::getenv("POLUS_SOCKET"); env && *env) return env;
  if (geteuid() == 0) return "/run/polus/polusd.sock";
  if (const char* runtime = std::getenv("XDG_RUNTIME_DIR"); runtime && *runtime) return std::string(runtime) + "/polus/polusd.sock";
  return "/tmp/polus-" + std::to_string(geteuid()) + "/polusd.sock";
}

std::string default_agent_path() {
  if (const char* env = std::getenv("POLUS_AGENT")) return env;
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n > 0) {
    self[n] = 0;
    std::string dir(self);
    dir = dir.substr(0, dir.rfind('/'));
    // The build tree (tools/ beside agent/), then an install at any prefix (sbin/ and
    // lib/polus/ as cmake --install lays them out).
    for (const std::string& candidate : {dir + "/../agent/libpolus-agent.so", dir + "/" POLUS_AGENT_FROM_SBIN,
                                         dir + "/../lib/polus/libpolus-agent.so", dir + "/libpolus-agent.so"}) {
      char resolved[PATH_MAX];
      if (realpath(candidate.c_str(), resolved) && access(resolved, R_OK) == 0) return resolved;
    }
  }
  return POLUS_INSTALLED_AGENT;
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
    if (sub->get_name() == "apply") {
      sub->add_option("--commit", args.commit,
                      "how a code patch's jumps are written: `pause` stops every thread at once; `trap` writes an int3 "
                      "first and checks the threads one at a time, so no thread waits for the others (code-only patches "
                      "that replace no function twice); `auto` (default) uses trap from " +
                          std::to_string(polus::kTrapCommitThreads) + " threads on")
          ->type_name("SCHEME")
          ->check(CLI::IsMember({"auto", "pause", "trap"}));
    }
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
  if (!args.commit.empty() && args.commit != "auto") e["commit"] = args.commit;
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

polus::EngineOptions engine_options(const Json& request) {
  polus::EngineOptions options;
  // Who asks: set by polusd from SO_PEERCRED (it overwrites whatever a client sent); in
  // polusctl's own process, polusctl itself (Caller::self(), the default).
  if (request.contains("caller")) {
    const Json& c = request["caller"];
    options.caller = polus::Caller{c.at("uid").get<uid_t>(), c.at("gid").get<gid_t>(), c.at("pid").get<pid_t>()};
  }
  if (!request.contains("engine")) return options;
  const Json& e = request["engine"];
  // A client of polusd with fewer rights than polusd cannot point it at files of its choosing.
  const bool chooses_files = !request.contains("caller") || options.caller.uid == 0 || options.caller.uid == geteuid();
  const std::string config = chooses_files ? e.value("config", std::string()) : std::string();
  try {
    if (!polus::read_config_file(config.empty() ? polus::kDefaultConfigFile : config, options) && !config.empty()) {
      throw UsageError("--config: " + config + " does not exist");
    }
  } catch (const std::invalid_argument& err) {
    throw UsageError(std::string("configuration: ") + err.what());
  }
  if (const char* audit = std::getenv("POLUS_AUDIT_LOG")) options.audit.file = audit;
  options.audit.enabled = true;
  if (e.value("require_signature", false)) options.signature.required = true;
  if (chooses_files && e.contains("trusted_keys")) options.signature.trusted_keys = e["trusted_keys"].get<std::string>();
  if (chooses_files && e.contains("audit_log")) options.audit.file = e["audit_log"].get<std::string>();
  options.agent_path = e.value("agent", std::string());
  options.rehearse = e.value("rehearse", true);
  options.force = e.value("force", false);
  const std::string commit = e.value("commit", std::string("auto"));
  options.commit = commit == "pause" ? polus::CommitScheme::kPause : commit == "trap" ? polus::CommitScheme::kTrap : polus::CommitScheme::kAuto;
  for (const auto& f : e.value("debug_files", Json::array())) options.symbols.debug_files.push_back(f.get<std::string>());
  for (const auto& o : e.value("allowed_owners", Json::array())) options.allowed_owners.push_back(o.get<uid_t>());
  if (e.contains("timeout_ms")) options.timeout = std::chrono::milliseconds(e["timeout_ms"].get<uint64_t>());
  if (e.contains("sync_timeout_ms")) options.sync_timeout = std::chrono::milliseconds(e["sync_timeout_ms"].get<uint64_t>());
  if (request.value("progress", false)) {
    auto last = std::make_shared<std::chrono::steady_clock::time_point>();
    options.on_sync_progress = [last](const polus::SyncProgress& p) {
      const auto now = std::chrono::steady_clock::now();
      if (now - *last < std::chrono::milliseconds(250)) return;
      *last = now;
      if (progress_sink()) progress_sink()(progress_line(p));
    };
  }
  return options;
}

namespace {
bool progress_shown = false;
}

std::function<void(const std::string& line)>& progress_sink() {
  thread_local std::function<void(const std::string&)> sink = [](const std::string& line) {
    // \r and erase-line: the terminal shows the newest line only.
    std::string text = "\r\033[K" + line;
    (void)!::write(STDERR_FILENO, text.data(), text.size());
    progress_shown = true;
  };
  return sink;
}

void end_progress_line() {
  if (!progress_shown) return;
  (void)!::write(STDERR_FILENO, "\r\033[K", 4);
  progress_shown = false;
}

void add_output_flags(CLI::App* sub, bool& json, bool& verbose) {
  sub->add_flag("--json", json, "machine-readable output on stdout");
  sub->add_flag("-v,--verbose", verbose, "log what the engine does (to stderr)");
}

Output run_request(const Json& request) {
  Output out;
  const std::string command = request.value("command", std::string());
  const bool json = request.value("json", false);
  spdlog::set_level(request.value("verbose", false) ? spdlog::level::debug : spdlog::level::warn);
  try {
    for (const CommandUnit& unit : command_units()) {
      if (command == unit.name) {
        unit.run(request, out);
        return out;
      }
    }
    throw UsageError("unknown command '" + command + "'");
  } catch (const polus::Error& e) {
    if (json) {
      out.out += Json{{"result", "error"}, {"error", polus::error_code_name(e.code())}, {"message", e.what()}}.dump() + "\n";
    }
    out.err += "polusctl " + command + ": " + e.what() + "\n";
    out.status = polus::error_exit_status(e.code());
  } catch (const UsageError& e) {
    out.err += "polusctl " + command + ": " + e.what() + "\n";
    out.status = 2;
  } catch (const std::exception& e) {
    out.err += "polusctl " + command + ": internal error: " + e.what() + "\n";
    out.status = 1;
  }
  return out;
}

}  // namespace polusctl
