// update/target.h — one operation's hold on a target: symbols, memory, threads.
//
// Shared by apply and rollback: choosing a thread that can safely run dlopen, finding a
// `syscall` instruction, mapping memory near code. Internal to the engine.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "process/borrowed_thread.h"
#include "process/process_memory.h"
#include "process/ptrace_session.h"
#include "binary/stack_scan.h"
#include "binary/symbols.h"

namespace polus {

inline constexpr uint64_t kArenaSize = 64 * 1024;
inline constexpr uint64_t kArenaScratchBytes = 4096;  // int3 return trap + strings
inline constexpr uint64_t kArenaStringOffset = 64;
inline constexpr uint64_t kTrampolineSlotSize = 16;

/// One Polus operation at a time per target: polusd's rounds, polusctl commands and tests
/// all take an flock(2) on /run/polus/PID.lock (released by the kernel if we die). ptrace
/// alone does not serialize them, since the sync phase detaches between inspections.
class OperationLock {
 public:
  /// Waits until `deadline` for the lock; throws Error(kTimeout) naming the holder's kind.
  OperationLock(pid_t pid, Clock::time_point deadline);
  ~OperationLock();
  OperationLock(const OperationLock&) = delete;
  OperationLock& operator=(const OperationLock&) = delete;

 private:
  int fd_ = -1;
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
  /// Until when one step that must finish quickly (stopping threads, injected code) may take.
  static Clock::time_point step_deadline() { return Clock::now() + std::chrono::seconds(5); }

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

  /// The address of a `syscall` instruction in libc's text.
  RemoteAddr syscall_instruction();

  /// A function of the C library, e.g. "dlopen".
  RemoteAddr libc_function(const std::string& name);

  /// mmap()s `size` bytes in the target within rel32 reach of [near_start, near_end), or
  /// anywhere if near_start is 0. Throws kInternal if the target refuses.
  uint64_t map_memory(BorrowedThread& thread, uint64_t near_start, uint64_t near_end, uint64_t size, int prot);

  /// munmap() in the target; failures are logged, not thrown (cleanup path).
  void unmap_memory(BorrowedThread& thread, uint64_t address, uint64_t size);

  /// Snapshots of every (stopped) thread; stacks only when `with_stacks`.
  std::vector<ThreadSnapshot> snapshot_threads(bool with_stacks);

  /// Code that may hold a lock injected code could need (malloc & co., the dynamic
  /// loader, dl_iterate_phdr, fork): a thread stopped below it is not safe to run code in,
  /// and while any thread is stopped there, no injected code may run during a pause.
  const std::vector<AddressRange>& lock_holding_ranges();

  /// The mapping for trap and scratch strings, 0 until the engine sets it.
  uint64_t scratch_arena = 0;
  RemoteAddr trap() const { return RemoteAddr(scratch_arena); }

 private:
  const LoadedObject& libc() const;

  pid_t pid_;
  Clock::time_point deadline_;
  OperationLock lock_;
  SymbolOptions symbol_options_;
  ProcessSymbols symbols_;
  ProcMemory memory_;
  std::optional<PtraceSession> session_;
  std::optional<RemoteAddr> syscall_instruction_;
  std::vector<AddressRange> lock_holding_ranges_;
};

}  // namespace polus
