// polus/options.h — what a caller of the engine can choose (public API).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace polus {

/// Where the engine looks for debug information of the target's objects.
struct SymbolOptions {
  /// Debug files named explicitly (e.g. --debug-file), matched to objects by build-id.
  std::vector<std::string> debug_files;
  /// Roots searched for .build-id/xx/rest.debug; default {"/usr/lib/debug"}.
  std::vector<std::string> debug_roots = {"/usr/lib/debug"};
};

/// Who asks for an operation. polusctl: itself; a daemon acting for a client: the client's
/// credentials (SO_PEERCRED). A caller other than root may act only on its own processes and
/// on patches it applied itself (SECURITY.md, "Who may do what"); the audit log names it.
struct Caller {
  uid_t uid = 0;
  gid_t gid = 0;
  pid_t pid = 0;
  /// The calling process: its pid, real uid and real gid (a polusctl made setuid by mistake
  /// still acts for whoever ran it).
  static Caller self();
};

/// Signed patches: `apply` accepts only a patch with a detached Ed25519 signature PATCH.so.sig
/// made by a key in `trusted_keys` (polusctl keygen / sign; SECURITY.md, "Signed patches").
struct SignatureOptions {
  bool required = false;
  /// Directory of trusted public keys (*.pub); it and every key file must pass the same
  /// ownership and mode checks as a patch file.
  std::string trusted_keys = "/etc/polus/trusted-keys";
};

/// The audit trail: one line per apply, rollback or finish (refusals included) to syslog and
/// to an append-only file (SECURITY.md, "Audit").
struct AuditOptions {
  /// Off by default for library users; polusctl and polusd turn it on.
  bool enabled = false;
  /// Opened O_APPEND before the operation starts; "" for syslog only. Run as root, a file that
  /// cannot be opened is an error (kAuditFailed, nothing done); otherwise a warning.
  std::string file = "/var/log/polus/audit.log";
  bool syslog = true;
  /// For polusd's rounds: a finish that leaves the update syncing, or finds another operation
  /// holding the target, changed nothing and is not recorded.
  bool skip_idle_rounds = false;
};

/// Where a data update's sync phase stands, after one inspection of the target's stacks.
struct SyncProgress {
  /// A thread that still runs an old function the update waits for.
  struct Holder {
    pid_t tid = 0;
    std::string thread_name;  // its comm (/proc/PID/task/TID/comm)
    std::string function;
  };
  pid_t pid = 0;
  std::string patch;
  std::string direction;  // "apply" or "rollback"
  uint64_t elapsed_ms = 0;  // since this sync phase (or this round of it) began
  uint64_t inspections = 0;
  std::vector<Holder> holders;
};

/// Options of one engine operation (apply, rollback, finish).
struct EngineOptions {
  SymbolOptions symbols;
  /// libpolus-agent.so to load into targets that do not have it yet (absolute path).
  std::string agent_path;
  /// Try the load (agent, patch constructors, pre-update callbacks) in a copy of the target
  /// first, and refuse the patch if the copy dies, hangs or faults (update/rehearsal.h).
  bool rehearse = true;
  /// Apply even where the redirects cannot reach all the code they replace: copies gcc made
  /// of an old function (.constprop, .isra, .part) the patch does not replace, or callers the
  /// debug information shows it inlined into (update/reach_checks.h). Off: such a patch is
  /// refused, naming them.
  bool force = false;
  /// How long to wait for threads to leave the bytes being rewritten, stop, or be safe to borrow.
  std::chrono::milliseconds timeout{10000};
  /// How long apply/rollback/finish wait for a data update's sync phase to end before
  /// returning with the update still `syncing` (finish it later with finish_update).
  std::chrono::milliseconds sync_timeout{10000};
  /// Owners besides root and the caller whose patch files (and the directories holding them)
  /// apply trusts (polusctl --allow-owner); SECURITY.md has the rules a patch file must pass.
  std::vector<uid_t> allowed_owners;
  /// Who the operation is for (default: this process's real uid and gid).
  Caller caller = Caller::self();
  SignatureOptions signature;
  AuditOptions audit;
  /// Called after each inspection of a data update's sync phase that did not end it (every
  /// few milliseconds: throttle what you show). Runs on the operation's thread.
  std::function<void(const SyncProgress&)> on_sync_progress;
};

/// The machine's Polus configuration file, read by polusctl and polusd.
inline constexpr const char* kDefaultConfigFile = "/etc/polus/polus.conf";

/// Reads a configuration file of "key = value" lines ('#' starts a comment) into `options`:
///   require-signature = yes|no    (SignatureOptions::required)
///   trusted-keys = DIR            (SignatureOptions::trusted_keys)
///   audit-log = PATH | none       (AuditOptions::file; none: syslog only)
///   audit-syslog = yes|no         (AuditOptions::syslog)
/// The file must pass the patch-file trust checks (it decides what is trusted). Returns false
/// if it does not exist; throws Error(kPermissionDenied) for an untrusted file and
/// std::invalid_argument naming the line for anything it does not understand.
bool read_config_file(const std::string& path, EngineOptions& options);

}  // namespace polus
