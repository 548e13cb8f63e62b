// polus/engine.h — apply, roll back and inspect live patches of one running process.
//
// The engine is a library: polusctl calls it once per command, and polusd can host it for
// long-running updates. Every entry point either completes or throws polus::Error having
// left the target as it found it (jumps not written, patch and agent unloaded again,
// scratch memory unmapped, registers and signals restored).
//
// Where the target is stopped: only the borrowed thread is stopped while libraries load
// (the others keep serving); every thread is stopped only for the commit — writing the
// 5-byte jumps — and that pause is measured and recorded in the patch's record.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "polus/options.h"

namespace polus {

struct RedirectInfo {
  std::string old_name;
  std::string new_name;
  uint64_t old_function = 0;
  uint64_t new_function = 0;
  uint64_t patch_site = 0;
  uint64_t trampoline = 0;  // 0: direct jump
  bool stacked = false;     // the function was already patched by an older patch
};

/// A changed global (or heap object) protected while a data update syncs.
struct TrackedItemInfo {
  std::string name;        // "ab", "ab_v1", or "heap 0x..." for registered heap objects
  std::string side;        // "old" / "new"
  uint64_t address = 0;
  uint64_t size = 0;
  uint64_t sync_calls = 0; // post_sync runs caused by writes to this item
};

/// One part of the commit pause (apply only): what ran while every thread was stopped.
struct PausePart {
  std::string what;
  uint64_t ns = 0;
};

/// A thread found running a function that holds a data update open.
struct HolderInfo {
  pid_t tid = 0;
  std::string function;
};

struct PatchInfo {
  uint64_t id = 0;
  std::string name;
  std::string path;          // the file the operator named (the target loaded a sealed memfd copy of its bytes)
  std::string sha256;        // lowercase hex SHA-256 of the patch's bytes: its identity
  uint32_t applied_by_uid = 0;  // the caller who applied it
  bool already_applied = false; // apply: a patch with this SHA-256 was active already; nothing changed
  bool details_withheld = false; // status for a caller other than root: applied by someone else,
                                 // so only id, name, state and applied_by_uid are filled
  std::string state;        // "applying", "syncing", "committed", "rolling-back", "rolled-back", and in status
                            // "interrupted-apply" / "interrupted-rollback" (the next command completes it) and
                            // "faulted" (a sync function faulted: the next command abandons the update)
  std::string direction;    // of the in-flight or last data update: "apply" / "rollback"
  uint64_t applied_at_unix_ns = 0;
  uint64_t committed_at_unix_ns = 0;
  uint64_t apply_wall_ns = 0;
  uint64_t pause_ns = 0;    // the longest time every thread was stopped at once
  uint64_t inspections = 0; // stack inspections while syncing
  uint32_t unwind_fallbacks = 0;  // frames found by stack scanning (no CFI) at the last inspection
  std::vector<RedirectInfo> redirects;
  std::vector<std::string> watched;   // functions whose activity holds the data update open
  std::vector<HolderInfo> holders;    // who holds it now
  std::vector<TrackedItemInfo> items; // while syncing: the protected items and their sync counts
  std::string fault;        // a sync function of the update in flight faulted: which, where, how ("" if none)
  std::vector<PausePart> commit_pause_parts;  // apply: the commit pause, part by part, in order (not kept in the registry)
};

/// An update Polus abandoned because the patch's code faulted in the target.
struct FailureInfo {
  uint64_t patch_id = 0;
  std::string patch_name;
  std::string direction;    // of the abandoned update: "apply" / "rollback"
  int signal = 0;           // the fault's signal
  uint64_t at_unix_ns = 0;
  std::string reason;       // names the function and the fault, and says what the target was left with
};

struct ProcessStatus {
  pid_t pid = 0;
  bool agent_loaded = false;
  std::string agent_path;
  std::vector<PatchInfo> patches;  // oldest first
  bool sync_active = false;        // write tracking is on (a data update is syncing)
  uint64_t write_faults = 0;       // writes to protected pages since tracking began
  uint64_t false_sharing = 0;      // of those, writes that touched no tracked item
  uint64_t chained_faults = 0;     // faults handed to the target's own SIGSEGV handler
  std::optional<FailureInfo> last_failure;  // the last update abandoned because patch code faulted
};

/// Applies the patch at `patch_path` to process `pid`. Returns what was applied; if a patch
/// with the same content (SHA-256) is already active, returns it with already_applied set and
/// changes nothing. When a sync function of the patch faults in the target, the update is
/// abandoned (the target goes back to its old code and data) and Error(kLoadFailed) names the
/// function; status keeps the failure.
PatchInfo apply_patch(pid_t pid, const std::string& patch_path, const EngineOptions& options);

/// Rolls back the newest applied patch of `pid`. Returns what was rolled back: state
/// "rolled-back", or "syncing" when a data patch's new code is still active after
/// options.sync_timeout (finish_update completes it later). A sync function that faults during
/// the rollback abandons it (the patch stays applied): Error(kLoadFailed) names it. An update
/// found faulted is abandoned first, and reported the same way.
PatchInfo rollback_patch(pid_t pid, const EngineOptions& options);

/// Rolls back the applied patch with id `patch_id` (as status shows it), which need not be the
/// newest: refused with Error(kUnsafeToPatch) naming the later patch when one builds on it
/// (replaces a function it replaces, or one of its new functions); Error(kNothingToRollBack)
/// when no applied patch has that id. Otherwise as rollback_patch.
PatchInfo rollback_patch(pid_t pid, uint64_t patch_id, const EngineOptions& options);

/// Waits (up to options.sync_timeout) for the in-flight data update of `pid` (an apply or a
/// rollback left `syncing`) to end, and completes it. Returns the patch as it is afterwards.
/// Throws Error(kNothingToRollBack) when no update is in flight, Error(kLoadFailed) when a sync
/// function faulted and the update was abandoned (see apply_patch and rollback_patch).
PatchInfo finish_update(pid_t pid, const EngineOptions& options);

/// One thread's call stack, innermost first, as "0x... name+0xoff [object]" lines.
struct ThreadStack {
  pid_t tid = 0;
  std::vector<std::string> frames;
  std::string note;  // where CFI was missing and the stack was scanned instead
};

/// Stops `pid` briefly and unwinds every thread (the same unwinding the sync phase uses).
std::vector<ThreadStack> inspect_stacks(pid_t pid);

/// Why `caller` may not `action` ("apply", "rollback", "finish", "status") process `pid` under
/// the caller policy every operation enforces (SECURITY.md, "Who may do what"), or "" if it
/// may (or if `pid` is gone: the operation itself then says so). For a daemon deciding before
/// it starts an operation on a client's behalf; the operation checks again.
std::string access_refusal(const Caller& caller, pid_t pid, const std::string& action);

/// Reads the patch registry of `pid` without stopping it. For a `caller` other than root,
/// patches someone else applied are listed with their details withheld, and a process the
/// caller may not act on is refused (Error(kPermissionDenied)).
ProcessStatus read_status(pid_t pid, const Caller& caller = Caller::self());

/// `root` and every process descended from it (children, grandchildren, ...), root first,
/// read from /proc; empty if `root` does not exist.
std::vector<pid_t> process_tree(pid_t root);

/// Every process whose executable is the file at `path` (the same file as /proc/PID/exe:
/// device and inode), in pid order. Throws Error(kNoSuchProcess) if `path` cannot be read.
std::vector<pid_t> processes_running(const std::string& path);

/// Every process whose executable has build-id `hex` (lowercase), in pid order.
std::vector<pid_t> processes_with_build_id(const std::string& hex);

/// The processes that have the Polus agent loaded (found through /proc/*/maps; the ones this
/// process may not read are left out), in pid order.
std::vector<pid_t> patched_processes();

/// The build-id (lowercase hex) of the executable process `pid` runs, read through
/// /proc/PID/exe; "" if it has none or cannot be read.
std::string executable_build_id(pid_t pid);

/// What a patch file holds, read and validated without any target (polusctl info).
struct PatchFileInfo {
  std::string path;          // absolute
  std::string name;
  std::string description;
  std::string sha256;        // of the file's bytes
  uint64_t size_bytes = 0;
  struct Replacement {
    std::string old_name, new_name;
  };
  std::vector<Replacement> replaces;      // old function -> new function
  std::vector<std::string> adds;          // new functions that replace nothing
  struct DataChange {
    std::string old_name, new_name;
    uint64_t old_size = 0, new_size = 0;
    bool read_only = false;  // POLUS_DATA_READ_ONLY: not kept in sync
    bool heap_root = false;  // POLUS_DATA_HEAP_ROOT: nodes registered by a callback
    bool has_sync = false;   // a post_sync function converts between the two
  };
  std::vector<DataChange> syncs;          // changed globals kept in sync while the update runs
  std::vector<std::string> uses;          // target functions and data it calls or reads
  std::vector<std::string> callbacks;     // kinds: "pre-update", "post-update", ...
  struct BuildId {
    std::string object;  // "" = the main executable
    std::string hex;
  };
  std::vector<BuildId> build_ids;
  std::string trust;  // "" when apply would trust the file now, else why it would refuse it
};

/// Reads and validates the patch file at `path` (no target involved) and says what it holds,
/// and whether apply would trust it under `options.allowed_owners`. Throws
/// Error(kPatchMalformed) for a file that is not a valid patch.
PatchFileInfo describe_patch_file(const std::string& path, const EngineOptions& options);

/// What a dry run of apply found (polusctl check).
struct CheckReport {
  pid_t pid = 0;
  PatchFileInfo patch;
  struct Name {
    std::string kind;    // "function", "data", "import"
    std::string name;    // as the target names it (file.c:name for file-static symbols)
    uint64_t address = 0;
    std::string object;  // the object defining it
  };
  std::vector<Name> resolved;  // every name of the target the patch uses, resolved now
  struct BuildIdCheck {
    std::string object, wanted, found;
  };
  std::vector<BuildIdCheck> build_ids;  // all matched (a mismatch throws kBuildMismatch)
  struct Function {
    std::string old_name;
    uint64_t old_address = 0;
    std::string new_name;
    uint64_t stacked_on = 0;       // id of the older patch whose redirect it replaces, 0: fresh
    std::string must_be_inactive;  // "" or why the function must not run at the commit
    std::vector<pid_t> active_threads;  // threads with the function on their stack now
  };
  std::vector<Function> functions;
  /// A data patch's watched functions (old functions using changed data: while a thread runs
  /// one, the update keeps syncing), with the threads running them now; new_name is empty.
  std::vector<Function> watched;
  bool changes_data = false;
  bool agent_loaded = false;
  size_t patches_applied = 0;
  std::vector<pid_t> threads_not_inspected;  // running on a CPU while read (not stopped to see)
  std::vector<std::string> notes;            // what apply would wait for, what was not tried
};

/// Plans an apply of `patch_path` to `pid` exactly as apply_patch does (the patch file's
/// trust and checks, build-ids, every name, each redirect's prologue, the registry) and reads
/// where the target's threads are through /proc, but never attaches to, stops or writes to
/// the target. Throws the Error apply_patch would throw before touching the target (every
/// unresolvable name listed at once); returns the report when the apply would go ahead.
/// Not tried: the rehearsal, the trampoline slots, the load itself.
CheckReport check_patch(pid_t pid, const std::string& patch_path, const EngineOptions& options);

}  // namespace polus
