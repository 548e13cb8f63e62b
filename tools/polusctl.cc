// polusctl — the operator's command line: apply, rollback, status.
//
// Exit statuses (also in tools/README.md): 0 success, 1 internal error, 2 usage,
// 3 no such process, 4 permission denied, 5 already traced, 6 symbol not found,
// 7 ambiguous symbol, 8 malformed patch, 9 patch for another build, 10 load failed,
// 11 unsafe to patch now, 12 nothing to roll back, 13 target died, 14 timeout,
// 15 interrupted, 16 audit log unavailable (root).
#include <limits.h>
#include <pwd.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "polus/stop_request.h"
#include "polus/engine.h"
#include "polus/error.h"
#include "polus/signing.h"

namespace {

constexpr const char* kUsage = R"(usage:
  polusctl apply PID PATCH.so [options]   load PATCH.so into process PID and redirect its functions
  polusctl rollback PID [options]         undo the newest patch applied to PID
  polusctl status PID [--json]            show the patches applied to PID (does not stop it)
  polusctl finish PID [options]           wait for a data update left syncing to end, and complete it
  polusctl stacks PID                     print every thread's call stack (CFI unwinding; stops PID briefly)
  polusctl keygen BASE [--comment TEXT]   make a signing key pair: BASE.key (secret) and BASE.pub
  polusctl sign --key BASE.key PATCH.so   write PATCH.so.sig, an Ed25519 signature of the patch

options:
  --json               machine-readable output on stdout
  --agent PATH         libpolus-agent.so to load (default: $POLUS_AGENT, or next to polusctl)
  --debug-file PATH    separate debug file with the symbols of a stripped target (repeatable)
  --force              apply even where the patch cannot reach all the code it replaces: copies
                       gcc made of an old function (.constprop, .isra, .part) it does not
                       replace, or callers the debug info shows the function inlined into
  --no-rehearsal       load the patch into PID directly, without trying it first in a copy of
                       the process (for huge processes: the copy pauses PID about 19 ms
                       per GiB; a crashing constructor then hits PID itself)
  --timeout MS         how long to wait for a safe moment (default 10000; 1 to 86400000)
  --sync-timeout MS    how long to wait for a data update's sync phase to end (default 10000;
                       0 to 86400000); past it the update stays syncing and `polusctl finish`
                       completes it
  --allow-owner USER   apply also trusts patch files (and directories) owned by USER, a name or
                       uid (repeatable); otherwise, run as root, only root-owned ones (SECURITY.md)
  --require-signature  apply only a patch with a valid PATCH.so.sig by a trusted key (also
                       require-signature = yes in the configuration file; cannot be turned off here)
  --trusted-keys DIR   public keys that may sign patches (default /etc/polus/trusted-keys)
  --audit-log PATH     append the audit record there (default /var/log/polus/audit.log, or
                       $POLUS_AUDIT_LOG, or audit-log in the configuration file)
  --config PATH        configuration file (default /etc/polus/polus.conf, if it exists)
  -v, --verbose        log what the engine does (to stderr)
)";

struct Args {
  std::string command;
  pid_t pid = 0;
  std::string patch;
  std::string key;      // sign: the secret key; keygen: the base path
  std::string comment;  // keygen
  bool json = false;
  bool verbose = false;
  polus::EngineOptions engine;
};

[[noreturn]] void usage_error(const std::string& message) {
  std::cerr << "polusctl: " << message << "\n" << kUsage;
  std::exit(2);
}

std::string default_agent_path() {
  if (const char* env = std::getenv("POLUS_AGENT")) return env;
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n > 0) {
    self[n] = 0;
    std::string dir(self);
    dir = dir.substr(0, dir.rfind('/'));
    for (const std::string& candidate : {dir + "/../agent/libpolus-agent.so", dir + "/../lib/libpolus-agent.so",
                                         dir + "/libpolus-agent.so"}) {
      char resolved[PATH_MAX];
      if (realpath(candidate.c_str(), resolved) && access(resolved, R_OK) == 0) return resolved;
    }
  }
  return "/usr/local/lib/libpolus-agent.so";
}

/// A user name or a numeric uid (for --allow-owner).
uid_t parse_owner(const std::string& text) {
  if (!text.empty() && text.find_first_not_of("0123456789") == std::string::npos) {
    errno = 0;
    unsigned long value = std::strtoul(text.c_str(), nullptr, 10);
    if (errno != 0 || value >= static_cast<unsigned long>(static_cast<uid_t>(-1))) usage_error("'" + text + "' is not a uid");
    return static_cast<uid_t>(value);
  }
  struct passwd pw;
  struct passwd* found = nullptr;
  char buf[4096];
  if (text.empty() || getpwnam_r(text.c_str(), &pw, buf, sizeof buf, &found) != 0 || !found) {
    usage_error("--allow-owner: no user named '" + text + "'");
  }
  return found->pw_uid;
}

/// A whole decimal number in [min, max]: digits only (no sign, space, fraction, hex or
/// exponent), or nullopt.
std::optional<uint64_t> whole_number(const std::string& text, uint64_t min, uint64_t max) {
  if (text.empty() || text.size() > 18 || text.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
  uint64_t value = std::stoull(text);
  if (value < min || value > max) return std::nullopt;
  return value;
}

pid_t parse_pid(const std::string& text) {
  auto value = whole_number(text, 1, std::numeric_limits<pid_t>::max());
  if (!value) {
    usage_error("'" + text + "' is not a process id (a whole number from 1 to " +
                std::to_string(std::numeric_limits<pid_t>::max()) + ")");
  }
  return static_cast<pid_t>(*value);
}

constexpr uint64_t kMaxMilliseconds = 86400000;  // a day

std::chrono::milliseconds parse_ms(const std::string& option, const std::string& text, uint64_t min) {
  auto value = whole_number(text, min, kMaxMilliseconds);
  if (!value) {
    usage_error(option + " needs a whole number of milliseconds from " + std::to_string(min) + " to " +
                std::to_string(kMaxMilliseconds) + ", not '" + text + "'");
  }
  return std::chrono::milliseconds(*value);
}

/// The configuration file's settings first, then the environment's and the command line's.
void read_configuration(const std::string& path, bool given, polus::EngineOptions& engine) {
  try {
    if (!polus::read_config_file(path, engine) && given) usage_error("--config: " + path + " does not exist");
  } catch (const std::invalid_argument& e) {
    usage_error(std::string("configuration: ") + e.what());
  } catch (const polus::Error& e) {
    std::cerr << "polusctl: " << e.what() << "\n";
    std::exit(polus::error_exit_status(e.code()));
  }
  if (const char* audit = std::getenv("POLUS_AUDIT_LOG")) engine.audit.file = audit;
}

Args parse(int argc, char** argv) {
  Args args;
  std::vector<std::string> positional;
  std::string config = polus::kDefaultConfigFile;
  bool config_given = false;
  // Options that must win over the configuration file, applied after it is read.
  bool require_signature = false;
  std::optional<std::string> trusted_keys, audit_log;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "--json") args.json = true;
    else if (a == "-v" || a == "--verbose") args.verbose = true;
    else if (a == "--agent") args.engine.agent_path = value();
    else if (a == "--no-rehearsal") args.engine.rehearse = false;
    else if (a == "--force") args.engine.force = true;
    else if (a == "--debug-file") args.engine.symbols.debug_files.push_back(value());
    else if (a == "--timeout") args.engine.timeout = parse_ms(a, value(), 1);
    else if (a == "--sync-timeout") args.engine.sync_timeout = parse_ms(a, value(), 0);
    else if (a == "--allow-owner") args.engine.allowed_owners.push_back(parse_owner(value()));
    else if (a == "--require-signature") require_signature = true;
    else if (a == "--trusted-keys") trusted_keys = value();
    else if (a == "--audit-log") audit_log = value();
    else if (a == "--config") { config = value(); config_given = true; }
    else if (a == "--key") args.key = value();
    else if (a == "--comment") args.comment = value();
    else if (a == "-h" || a == "--help") { std::cout << kUsage; std::exit(0); }
    else if (!a.empty() && a[0] == '-') usage_error("unknown option " + a);
    else positional.push_back(a);
  }
  if (positional.empty()) usage_error("no command");
  args.command = positional[0];
  size_t want = args.command == "apply" ? 3 : 2;
  if (args.command != "apply" && args.command != "rollback" && args.command != "status" && args.command != "finish" &&
      args.command != "stacks" && args.command != "keygen" && args.command != "sign") {
    usage_error("unknown command '" + args.command + "'");
  }
  if (positional.size() != want) usage_error("wrong number of arguments for " + args.command);
  if (args.command == "keygen") {
    args.key = positional[1];
    return args;
  }
  if (args.command == "sign") {
    if (args.key.empty()) usage_error("sign needs --key BASE.key (made by polusctl keygen)");
    args.patch = positional[1];
    return args;
  }
  args.pid = parse_pid(positional[1]);
  if (args.command == "apply") args.patch = positional[2];
  if (args.engine.agent_path.empty()) args.engine.agent_path = default_agent_path();
  read_configuration(config, config_given, args.engine);
  if (require_signature) args.engine.signature.required = true;
  if (trusted_keys) args.engine.signature.trusted_keys = *trusted_keys;
  if (audit_log) args.engine.audit.file = *audit_log;
  args.engine.audit.enabled = true;
  return args;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string hex(uint64_t v) {
  std::ostringstream out;
  out << "0x" << std::hex << v;
  return out.str();
}

std::string utc_time(uint64_t unix_ns) {
  if (unix_ns == 0) return "-";
  time_t seconds = static_cast<time_t>(unix_ns / 1000000000ull);
  tm t{};
  gmtime_r(&seconds, &t);
  char buf[32];
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &t);
  return buf;
}

std::string duration(uint64_t ns) {
  char buf[32];
  if (ns < 1000000) std::snprintf(buf, sizeof buf, "%.0f us", ns / 1e3);
  else std::snprintf(buf, sizeof buf, "%.1f ms", ns / 1e6);
  return buf;
}

std::string patch_json(const polus::PatchInfo& p) {
  std::ostringstream out;
  out << "{\"id\":" << p.id << ",\"name\":" << json_string(p.name) << ",\"path\":" << json_string(p.path)
      << ",\"sha256\":" << json_string(p.sha256) << ",\"applied_by_uid\":" << p.applied_by_uid
      << ",\"details_withheld\":" << (p.details_withheld ? "true" : "false")
      << ",\"state\":" << json_string(p.state) << ",\"direction\":" << json_string(p.direction)
      << ",\"applied_at\":" << json_string(utc_time(p.applied_at_unix_ns))
      << ",\"applied_at_unix_ns\":" << p.applied_at_unix_ns << ",\"committed_at_unix_ns\":" << p.committed_at_unix_ns
      << ",\"apply_wall_ns\":" << p.apply_wall_ns << ",\"pause_ns\":" << p.pause_ns
      << ",\"inspections\":" << p.inspections << ",\"unwind_fallbacks\":" << p.unwind_fallbacks
      << ",\"fault\":" << (p.fault.empty() ? "null" : json_string(p.fault)) << ",\"watched\":[";
  for (size_t i = 0; i < p.watched.size(); ++i) out << (i ? "," : "") << json_string(p.watched[i]);
  out << "],\"holders\":[";
  for (size_t i = 0; i < p.holders.size(); ++i) {
    out << (i ? "," : "") << "{\"tid\":" << p.holders[i].tid << ",\"function\":" << json_string(p.holders[i].function) << "}";
  }
  out << "],\"items\":[";
  for (size_t i = 0; i < p.items.size(); ++i) {
    const auto& item = p.items[i];
    out << (i ? "," : "") << "{\"name\":" << json_string(item.name) << ",\"side\":" << json_string(item.side)
        << ",\"address\":" << json_string(hex(item.address)) << ",\"size\":" << item.size
        << ",\"sync_calls\":" << item.sync_calls << "}";
  }
  out << "],\"functions\":[";
  for (size_t i = 0; i < p.redirects.size(); ++i) {
    const auto& r = p.redirects[i];
    out << (i ? "," : "") << "{\"old\":" << json_string(r.old_name) << ",\"old_address\":" << json_string(hex(r.old_function))
        << ",\"new\":" << json_string(r.new_name) << ",\"new_address\":" << json_string(hex(r.new_function))
        << ",\"patch_site\":" << json_string(hex(r.patch_site))
        << ",\"trampoline\":" << (r.trampoline ? json_string(hex(r.trampoline)) : "null")
        << ",\"stacked\":" << (r.stacked ? "true" : "false") << "}";
  }
  out << "]}";
  return out.str();
}

std::string failure_json(const std::optional<polus::FailureInfo>& f) {
  if (!f) return "null";
  std::ostringstream out;
  out << "{\"patch_id\":" << f->patch_id << ",\"patch\":" << json_string(f->patch_name)
      << ",\"direction\":" << json_string(f->direction) << ",\"signal\":" << f->signal
      << ",\"at\":" << json_string(utc_time(f->at_unix_ns)) << ",\"reason\":" << json_string(f->reason) << "}";
  return out.str();
}

/// Column widths of the human status table: as wide as the longest entry (names are never cut).
struct Widths {
  int name = 24;      // patch names
  int old_name = 0;   // replaced functions
  int new_name = 0;   // their replacements
  int item = 24;      // protected data items
};

Widths widths_of(const std::vector<polus::PatchInfo>& patches) {
  Widths w;
  auto at_least = [](int& width, const std::string& text) { width = std::max(width, static_cast<int>(text.size())); };
  for (const auto& p : patches) {
    at_least(w.name, p.name);
    for (const auto& r : p.redirects) {
      at_least(w.old_name, r.old_name);
      at_least(w.new_name, r.new_name);
    }
    for (const auto& item : p.items) at_least(w.item, item.name);
  }
  return w;
}

void print_patch_human(const polus::PatchInfo& p, const Widths& w) {
  if (p.details_withheld) {
    std::printf("%-4llu %-*s %-12s %-12s %-21s (applied by uid %u; details withheld)\n",
                static_cast<unsigned long long>(p.id), w.name, p.name.c_str(), "-", p.state.c_str(),
                utc_time(p.applied_at_unix_ns).c_str(), p.applied_by_uid);
    return;
  }
  std::printf("%-4llu %-*s %-12s %-12s %-21s %10s %10s\n", static_cast<unsigned long long>(p.id), w.name, p.name.c_str(),
              p.sha256.substr(0, 12).c_str(), p.state.c_str(), utc_time(p.applied_at_unix_ns).c_str(),
              duration(p.apply_wall_ns).c_str(), duration(p.pause_ns).c_str());
  for (const auto& r : p.redirects) {
    std::printf("       %-*s %-14s -> %-*s %-14s%s\n", w.old_name, r.old_name.c_str(), hex(r.old_function).c_str(),
                w.new_name, r.new_name.c_str(), hex(r.new_function).c_str(),
                r.trampoline ? (" (via trampoline " + hex(r.trampoline) + ")").c_str() : "");
  }
  if (!p.fault.empty()) std::printf("       FAULTED: %s\n", p.fault.c_str());
  if (p.state != "syncing") return;
  std::printf("       data update (%s) syncing: %llu inspections%s\n", p.direction.c_str(),
              static_cast<unsigned long long>(p.inspections),
              p.unwind_fallbacks ? (", " + std::to_string(p.unwind_fallbacks) + " frames found by stack scan (no CFI)").c_str() : "");
  for (const auto& item : p.items) {
    std::printf("       protected %-4s %-*s %s (%llu bytes): %llu sync calls\n", item.side.c_str(), w.item, item.name.c_str(),
                hex(item.address).c_str(), static_cast<unsigned long long>(item.size),
                static_cast<unsigned long long>(item.sync_calls));
  }
  if (p.holders.empty()) std::printf("       no thread runs a watched function at the last inspection\n");
  for (const auto& h : p.holders) {
    std::printf("       held by thread %d in %s\n", h.tid, h.function.c_str());
  }
}

void print_header(const Widths& w) {
  std::printf("%-4s %-*s %-12s %-12s %-21s %10s %10s\n", "ID", w.name, "NAME", "SHA256", "STATE", "APPLIED (UTC)", "APPLY",
              "PAUSE");
}

int print_stacks(pid_t pid) {
  auto stacks = polus::inspect_stacks(pid);
  for (const auto& thread : stacks) {
    std::printf("thread %d%s\n", thread.tid, thread.note.empty() ? "" : (" (" + thread.note + ")").c_str());
    for (const auto& frame : thread.frames) std::printf("  %s\n", frame.c_str());
  }
  return 0;
}

int keygen(const Args& args) {
  std::string comment = args.comment;
  if (comment.empty()) {
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    comment = "uid " + std::to_string(getuid()) + "@" + host;
  }
  polus::SigningKey key = polus::generate_signing_key(args.key, comment);
  std::printf("key %s: secret key %s (keep it where patches are built, not where they are applied), public key %s "
              "(install it in the trusted-keys directory, e.g. /etc/polus/trusted-keys/)\n",
              key.key_id.c_str(), key.secret_path.c_str(), key.public_path.c_str());
  return 0;
}

int sign(const Args& args) {
  std::string key_id = polus::sign_patch(args.key, args.patch);
  std::printf("signed %s with key %s: %s.sig\n", args.patch.c_str(), key_id.c_str(), args.patch.c_str());
  return 0;
}

int run(const Args& args) {
  if (args.command == "keygen") return keygen(args);
  if (args.command == "sign") return sign(args);
  if (args.command == "stacks") return print_stacks(args.pid);
  if (args.command == "status") {
    polus::ProcessStatus status = polus::read_status(args.pid);
    if (args.json) {
      std::cout << "{\"pid\":" << status.pid << ",\"agent_loaded\":" << (status.agent_loaded ? "true" : "false")
                << ",\"sync_active\":" << (status.sync_active ? "true" : "false") << ",\"write_faults\":" << status.write_faults
                << ",\"false_sharing\":" << status.false_sharing << ",\"chained_faults\":" << status.chained_faults
                << ",\"last_failure\":" << failure_json(status.last_failure) << ",\"patches\":[";
      for (size_t i = 0; i < status.patches.size(); ++i) std::cout << (i ? "," : "") << patch_json(status.patches[i]);
      std::cout << "]}\n";
      return 0;
    }
    if (status.last_failure) {
      const polus::FailureInfo& f = *status.last_failure;
      std::printf("last abandoned update: %s of patch %s (id %llu) at %s: %s\n", f.direction.c_str(), f.patch_name.c_str(),
                  static_cast<unsigned long long>(f.patch_id), utc_time(f.at_unix_ns).c_str(), f.reason.c_str());
    }
    if (!status.agent_loaded || status.patches.empty()) {
      std::printf("process %d: no patches applied\n", args.pid);
      return 0;
    }
    std::printf("process %d: %zu patch(es) applied\n", args.pid, status.patches.size());
    if (status.sync_active) {
      std::printf("write tracking on: %llu write faults, %llu false sharing, %llu passed to the target's handler\n",
                  static_cast<unsigned long long>(status.write_faults), static_cast<unsigned long long>(status.false_sharing),
                  static_cast<unsigned long long>(status.chained_faults));
    }
    Widths widths = widths_of(status.patches);
    print_header(widths);
    for (const auto& p : status.patches) print_patch_human(p, widths);
    return 0;
  }
  // Ctrl-C, kill and a dropped ssh session wait until the engine reaches a point where it can
  // stop cleanly (it asks at every such point): they never cut a change to the target short.
  sigset_t stop = polus::stop_signals();
  sigprocmask(SIG_BLOCK, &stop, nullptr);
  polus::PatchInfo info = args.command == "apply"      ? polus::apply_patch(args.pid, args.patch, args.engine)
                         : args.command == "rollback" ? polus::rollback_patch(args.pid, args.engine)
                                                      : polus::finish_update(args.pid, args.engine);
  if (args.json) {
    std::cout << "{\"result\":\"ok\",\"action\":" << json_string(args.command)
              << ",\"already_applied\":" << (info.already_applied ? "true" : "false") << ",\"patch\":" << patch_json(info)
              << "}\n";
  } else if (info.already_applied) {
    std::printf("%s is already applied to process %d (id %llu, sha256 %s, %s); nothing changed\n", info.name.c_str(),
                args.pid, static_cast<unsigned long long>(info.id), info.sha256.substr(0, 12).c_str(), info.state.c_str());
  } else if (args.command == "apply") {
    std::printf("applied %s to process %d: %zu function(s) redirected in %s, target paused %s\n", info.name.c_str(),
                args.pid, info.redirects.size(), duration(info.apply_wall_ns).c_str(), duration(info.pause_ns).c_str());
    print_header(widths_of({info}));
    print_patch_human(info, widths_of({info}));
  } else if (info.state == "rolled-back") {
    std::printf("rolled back %s in process %d in %s, target paused %s\n", info.name.c_str(), args.pid,
                duration(info.apply_wall_ns).c_str(), duration(info.pause_ns).c_str());
  } else {
    print_header(widths_of({info}));
    print_patch_human(info, widths_of({info}));
  }
  if (int sig = polus::stop_requested()) {
    std::fprintf(stderr, "polusctl %s: stopped by %s once the target was in a recorded state\n", args.command.c_str(),
                 strsignal(sig));
  }
  if (info.state == "syncing" && !args.json) {
    std::printf("the %s of %s is still syncing (threads above still run code it retires); it completes with "
                "`polusctl finish %d`\n", info.direction.c_str(), info.name.c_str(), args.pid);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args = parse(argc, argv);
  auto logger = spdlog::stderr_color_mt("polus");
  spdlog::set_default_logger(logger);
  spdlog::set_level(args.verbose ? spdlog::level::debug : spdlog::level::warn);
  try {
    return run(args);
  } catch (const polus::Error& e) {
    if (args.json) {
      std::cout << "{\"result\":\"error\",\"error\":" << json_string(polus::error_code_name(e.code()))
                << ",\"message\":" << json_string(e.what()) << "}\n";
    }
    std::cerr << "polusctl " << args.command << ": " << e.what() << "\n";
    return polus::error_exit_status(e.code());
  } catch (const std::exception& e) {
    std::cerr << "polusctl " << args.command << ": internal error: " << e.what() << "\n";
    return 1;
  }
}
