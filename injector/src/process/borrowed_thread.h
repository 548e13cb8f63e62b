// process/borrowed_thread.h — running code of ours on one of the target's threads.
//
// A BorrowedThread saves the thread's context (registers, vector state, signal mask) when it
// is made. Every call or system call it runs writes that context on the thread's stack as a
// signal frame (signal_frame.h) and returns through the scratch arena's stub, which makes
// rt_sigreturn: the kernel puts the thread back where it was, with its own registers and
// mask, whether or not Polus is still alive then. No breakpoint and no single-step flag is
// ever involved, so nothing is left behind that a vanished tracer would turn into a fatal
// SIGTRAP. Polus watches with PTRACE_SYSCALL (a syscall stop at each system call the code
// makes) and reads the result at the stub's rt_sigreturn.
//
// While our code runs, the thread blocks every signal but the synchronous faults: signals
// for it wait in the kernel (and the process's go to other threads) until rt_sigreturn puts
// its own mask back, so none is taken out of the kernel's queues and none is lost.
//
// An interrupted system call of the thread (rax = -ERESTARTSYS & co.) is made again once the
// thread is back: the frame carries the kernel's restart already applied, so the
// application's accept/read/futex/nanosleep continues as if nothing happened, without EINTR.
#pragma once

#include <sys/types.h>
#include <sys/user.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <string>

#include "polus/error.h"
#include "process/process_memory.h"
#include "process/ptrace_session.h"
#include "process/remote_ptr.h"
#include "process/scratch_arena.h"
#include "process/signal_frame.h"

namespace polus {

/// What a thread needs when the scratch arena cannot serve (before the first operation on a
/// process maps it, and to unmap it): libc's mmap and munmap, and libc's own rt_sigreturn
/// restorer (__restore_rt) to return to.
struct BootstrapEntries {
  RemoteAddr mmap;
  RemoteAddr munmap;
  RemoteAddr restorer;
};

/// What BorrowedThread::call throws when the code it ran faulted: the signal was not
/// delivered and the thread is back in its own context.
class CodeFault : public Error {
 public:
  CodeFault(const std::string& message, int signal, uint64_t pc)
      : Error(ErrorCode::kLoadFailed, message), signal_(signal), pc_(pc) {}
  int signal() const { return signal_; }
  uint64_t pc() const { return pc_; }

 private:
  int signal_;
  uint64_t pc_;
};

class BorrowedThread {
 public:
  /// `tid` must be stopped in `session`. `arena` holds the stubs injected code returns
  /// through and the argument area; `bootstrap` serves map_memory() until the arena exists.
  /// Made by TargetContext::borrow.
  BorrowedThread(PtraceSession& session, ProcessMemory& memory, pid_t tid, ScratchArena& arena,
                 std::function<BootstrapEntries()> bootstrap);
  /// The thread is back in its own context already (each call ended with rt_sigreturn);
  /// this only marks it as no longer borrowed. It stays stopped until its session lets it go.
  ~BorrowedThread();
  BorrowedThread(const BorrowedThread&) = delete;
  BorrowedThread& operator=(const BorrowedThread&) = delete;

  pid_t tid() const { return tid_; }
  const user_regs_struct& saved_regs() const { return saved_.regs; }

  /// Executes one system call in the target; returns the raw result (-errno on failure).
  /// Throws Error(kTimeout) when it does not return within step_deadline().
  int64_t syscall(long number, std::initializer_list<uint64_t> args);

  /// Executes system call `number` with `text` (NUL-terminated, copied to the arena) as its
  /// first argument and `more` after it (memfd_create's name); raw result as syscall().
  int64_t syscall_with_string(long number, const std::string& text, std::initializer_list<uint64_t> more = {});

  /// Calls `function(args...)` (System V ABI, up to 6 integer arguments). Returns rax.
  /// Throws CodeFault (an Error(kLoadFailed)) if the code faults, Error(kTimeout) if it does not return
  /// within step_deadline(); either way the thread is put back in its own context first.
  uint64_t call(RemoteAddr function, std::initializer_list<uint64_t> args);

  /// Calls `function(&block)` with a copy of `block` placed in the arena's argument area
  /// (callback and sync-function arguments).
  template <typename T>
  uint64_t call_with_block(RemoteAddr function, const T& block) {
    return call(function, {arena_.put_args(&block, sizeof block).address()});
  }

  /// Calls `function(first, &block)` with `block` copied to the arena (a call made through a
  /// wrapper in the target, such as the agent's fenced callback runner).
  template <typename T>
  uint64_t call_with_block_after(RemoteAddr function, uint64_t first, const T& block) {
    return call(function, {first, arena_.put_args(&block, sizeof block).address()});
  }

  /// Calls `function(path, more...)` with `text` copied to the arena (dlopen, the agent's loader).
  uint64_t call_with_string(RemoteAddr function, const std::string& text, std::initializer_list<uint64_t> more = {});

  /// Makes a copy of the whole process, of which this thread is the only thread (clone with
  /// no CLONE_VM and no exit signal: the target gets no SIGCHLD and its waitpid() without
  /// __WALL never sees it). The session attaches it (PTRACE_O_TRACECLONE); a copy whose
  /// tracer is gone exits at once. Returns the copy's pid as our pid namespace numbers it, and
  /// in `in_target` as the target's does (they differ for a target in a pid namespace of its
  /// own; the target's wait4 needs its own number). Throws Error(kInternal) if refused.
  pid_t clone_process(pid_t* in_target = nullptr);

  /// mmap()s `size` bytes in the target within rel32 reach of [near_start, near_end), or
  /// anywhere if near_start is 0. Throws kUnsafeToPatch when no range is in reach, kInternal
  /// if the target refuses.
  uint64_t map_memory(uint64_t near_start, uint64_t near_end, uint64_t size, int prot);

  /// munmap() in the target; failures are logged, not thrown (cleanup path).
  void unmap_memory(uint64_t address, uint64_t size) noexcept;

  /// While the agent tracks writes, code we run (callbacks, the agent itself) may write a
  /// protected page: its SIGSEGV and the agent's SIGTRAPs must reach the agent's handlers
  /// instead of counting as a crash of our code.
  void set_pass_faults(bool pass) { pass_faults_ = pass; }
  /// The target's memory, as this thread's calls see it.
  ProcessMemory& memory() { return memory_; }

  /// Whether fault signals go to the target's handlers (set_pass_faults).
  bool passes_faults() const { return pass_faults_; }

  /// A second chance for calls that would be abandoned. Abandoning a call (rt_sigreturn back
  /// to the thread's own context) is safe for code that holds nothing; a call into the agent
  /// that runs a patch's sync function holds the agent's sync lock, and abandoning it would
  /// leave that taken for good. `stuck(tid)` is asked about every 100 ms while a call runs
  /// (the thread running: it may only read memory); once it says yes, the thread is
  /// interrupted and `rescue(tid, 0)` asked at that interrupt stop. `rescue(tid, signal)` is
  /// also asked, the thread stopped, when the code raised a signal that would abandon the call.
  /// It returns true once it has sent the thread somewhere that ends the call normally
  /// (update/sync_watchdog.h). Empty functions: none.
  void set_rescue(std::function<bool(pid_t tid, int signal)> rescue, std::function<bool(pid_t tid)> stuck) {
    rescue_ = std::move(rescue);
    stuck_ = std::move(stuck);
  }

 private:
  /// Runs the thread from `regs` (rsp on a frame written for this run) until it makes
  /// rt_sigreturn at `sigreturn_pc`, then lets that return happen. Returns the result slot,
  /// or rax at the exit of the first system call `syscall_result_of` (>= 0) made.
  uint64_t run(user_regs_struct regs, const SignalFrame& frame, RemoteAddr sigreturn_pc, long syscall_result_of,
               const char* what);
  /// After a fault or timeout: sends the thread through the frame's rt_sigreturn now.
  void abandon(const SignalFrame& frame, RemoteAddr sigreturn_pc) noexcept;
  /// Lets the pending rt_sigreturn happen and waits for its exit stop.
  void finish_sigreturn(RemoteAddr sigreturn_pc, Clock::time_point deadline);
  user_regs_struct call_regs(const SignalFrame& frame) const;
  /// Calls a libc function returning to libc's __restore_rt; the result is rax at the exit
  /// of its system call `syscall_nr`.
  int64_t call_via_restorer(RemoteAddr function, std::initializer_list<uint64_t> args, long syscall_nr);

  PtraceSession& session_;
  ProcessMemory& memory_;
  pid_t tid_;
  ScratchArena& arena_;
  std::function<BootstrapEntries()> bootstrap_;
  SavedContext saved_;
  bool pass_faults_ = false;
  std::function<bool(pid_t, int)> rescue_;
  std::function<bool(pid_t)> stuck_;
};

}  // namespace polus
