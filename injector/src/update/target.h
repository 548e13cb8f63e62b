// update/target.h — one operation's hold on a target: symbols, memory, threads.
//
// Shared by apply, rollback, finish and status: choosing a thread that can safely run
// dlopen and lending it out (borrow), the scratch arena, the one retry-until-free loop
// around a pause (pause_when_free).
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "process/borrowed_thread.h"
#include "process/pause.h"
#include "process/process_memory.h"
#include "process/ptrace_session.h"
#include "process/scratch_arena.h"
#include "binary/frame_check.h"
#include "binary/stack_scan.h"
#include "binary/symbols.h"
#include "binary/unwinder.h"
#include "update/operation_lock.h"

namespace polus {

/// One attempt after another to find a moment when every thread is stopped somewhere
/// harmless, and to act in that same pause (see TargetContext::pause_when_free).
struct PauseRequest {
  /// Before each attempt: gets hold of the target (it may have been released between
  /// attempts) and returns a thread that stays stopped between attempts, 0 for none.
  std::function<pid_t()> prepare = [] { return pid_t{0}; };
  /// With every thread stopped: why now is not the moment, or "" to go ahead.
  std::function<std::string()> why_busy = [] { return std::string(); };
  /// With every thread stopped, once why_busy said "": the work of the pause.
  std::function<void(const Pause&)> act;
  /// Let go of the target between attempts (while write tracking is on, a held thread would
  /// stop at every tracked write until we looked).
  bool release_between_attempts = false;
  /// The start of the message when the deadline passes: "cannot commit now".
  std::string giving_up = "cannot pause the target";
};

class TargetContext {
 public:
  /// Reads the target's symbols (no ptrace yet). Throws kNoSuchProcess.
  TargetContext(pid_t pid, const SymbolOptions& options, Clock::time_point deadline);

  pid_t pid() const { return pid_; }
  const ProcessSymbols& symbols() const { return symbols_; }
  ProcessMemory& memory() { return memory_; }
  PtraceSession& session() { return *session_; }
  /// Until when the operation may wait for a safe moment (thread to borrow, commit).
  Clock::time_point deadline() const { return deadline_; }
  /// Gives cleanup after a failure its own time, whatever the operation's deadline was.
  void extend_deadline(Clock::duration extra) { deadline_ = std::max(deadline_, Clock::now() + extra); }

  /// From now on a stop request (Ctrl-C) no longer ends waits: cleanup that puts the target
  /// back must run to its end, and the request that caused it is often still pending.
  void ignore_stop_requests() { honour_stop_requests_ = false; }
  /// Reads the target's symbols again (after the agent or a patch was loaded into it).
  void reload_symbols();

  /// Seizes every thread (they keep running). Does nothing if already attached.
  void seize();

  /// Detaches from every thread (stopped ones resume). While a data update syncs, each
  /// tracked write raises SIGSEGV and SIGTRAP in the target; attached, every one of those
  /// would stop the writer until we looked (ptrace(2), signal-delivery-stop), so between
  /// inspections we let go.
  void release() { session_.reset(); }
  bool attached() const { return session_.has_value(); }

  /// Stops one thread that is provably not inside malloc & co., the dynamic loader or
  /// dl_iterate_phdr (pc and live stack checked), so it may call dlopen without deadlock.
  /// Other threads keep running. Retries until the deadline, then throws kTimeout.
  pid_t stop_thread_safe_to_borrow();

  /// Lends stopped thread `tid` out to run our code (RAII: its registers come back when the
  /// BorrowedThread ends). Calls return to the arena's trap.
  BorrowedThread borrow(pid_t tid);

  /// stop_thread_safe_to_borrow(), lets go of every other thread, then borrow()s it. The
  /// others run untraced while our code runs (a Pause attaches them again): a traced thread
  /// stops at each signal it is sent until we look, and two of the same standard signal
  /// pending meanwhile are merged into one by the kernel.
  BorrowedThread borrow_safe_thread();

  /// Stops every thread and asks request.why_busy; when nothing is in the way runs
  /// request.act in that same pause and returns its length in ns; otherwise lets the threads
  /// go (all but the one prepare() keeps), waits a millisecond and tries again. At the
  /// deadline throws Error(kUnsafeToPatch): "<giving_up>: <reason>; ... target unchanged".
  uint64_t pause_when_free(const PauseRequest& request);

  /// libc's mmap, munmap and __restore_rt (found by its code: it is not exported), for
  /// borrowed threads when the scratch arena cannot serve. Throws kLoadFailed if absent.
  const BootstrapEntries& bootstrap_entries();

  /// A function of the C library, e.g. "dlopen".
  RemoteAddr libc_function(const std::string& name);

  /// Snapshots of every (stopped) thread; stacks only when `with_stacks`.
  std::vector<ThreadSnapshot> snapshot_threads(bool with_stacks);

  /// Code that may hold a lock injected code could need (malloc & co., the dynamic
  /// loader, dl_iterate_phdr, fork): a thread stopped below it is not safe to run code in,
  /// and while any thread is stopped there, no injected code may run during a pause.
  const std::vector<AddressRange>& lock_holding_ranges();

  /// Whether stopped thread `thread` (snapshot with its stack) is inside one of `ranges` —
  /// lock_holding_ranges() unless given — decided from its CFI frames (binary/frame_check.h):
  /// a stale return address left in a dead stack slot does not count, a word the unwind
  /// cannot account for does (as uncertain). Unwinding reuses one CFI cache per operation.
  std::optional<RangeHit> lock_holder(const ThreadSnapshot& thread);
  std::optional<RangeHit> lock_holder(const ThreadSnapshot& thread, const std::vector<AddressRange>& ranges);

  /// "thread N is inside malloc (frame #2 of its stack is malloc+0x4d (0x...))", or "thread N
  /// may be inside fork (its stack holds ...)" for an uncertain hit: for messages.
  static std::string describe_hit(pid_t tid, const RangeHit& hit);

  /// Polus's memory in the target: the trap and arguments of injected calls, trampoline slots.
  ScratchArena& arena() { return arena_; }

 private:
  const LoadedObject& libc() const;
  /// Adds to `ranges` the functions of `object` that ranges[first...] jump to (tail calls),
  /// and those they jump to, each under the name of the range it was reached from.
  void add_tail_call_targets(std::vector<AddressRange>& ranges, size_t first, const LoadedObject& object);

  pid_t pid_;
  Clock::time_point deadline_;
  OperationLock lock_;
  SymbolOptions symbol_options_;
  ProcessSymbols symbols_;
  ProcMemory memory_;
  ScratchArena arena_{memory_};
  std::optional<PtraceSession> session_;
  std::optional<BootstrapEntries> bootstrap_;
  bool honour_stop_requests_ = true;
  std::vector<AddressRange> lock_holding_ranges_;
  std::unique_ptr<Unwinder> unwinder_;  // made on first use; its CFI cache lasts the operation
};

}  // namespace polus
