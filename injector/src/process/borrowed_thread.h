// process/borrowed_thread.h — running code of ours on one of the target's threads.
//
// A BorrowedThread saves the thread's registers when it is made and puts them back when it
// is destroyed (RAII, like rr's AutoRemoteSyscalls), so the thread resumes exactly where
// it was. If it was interrupted inside a system call, the saved registers hold
// orig_rax = the syscall number and rax = -ERESTARTSYS (or -ERESTARTNOHAND,
// -ERESTARTNOINTR, -ERESTART_RESTARTBLOCK). While we run code we set orig_rax = -1 so the
// kernel's restart logic (arch/x86/kernel/signal.c, arch_do_signal_or_restart) leaves our
// registers alone; restoring the saved set lets that same logic rewind rip over the
// `syscall` instruction on the way out, so the application's accept/read/futex/nanosleep
// continues as if nothing happened and never sees EINTR.
#pragma once

#include <sys/types.h>
#include <sys/user.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "process/process_memory.h"
#include "process/ptrace_session.h"
#include "process/remote_ptr.h"
#include "process/scratch_arena.h"

namespace polus {

class BorrowedThread {
 public:
  /// `tid` must be stopped in `session`. `syscall_instruction` is the address of a
  /// `syscall` (0f 05) in the target's text, used for remote system calls; `arena` holds the
  /// trap injected calls return to and their arguments. Made by TargetContext::borrow.
  BorrowedThread(PtraceSession& session, ProcessMemory& memory, pid_t tid, RemoteAddr syscall_instruction,
                 ScratchArena& arena);
  ~BorrowedThread();
  BorrowedThread(const BorrowedThread&) = delete;
  BorrowedThread& operator=(const BorrowedThread&) = delete;

  pid_t tid() const { return tid_; }
  const user_regs_struct& saved_regs() const { return saved_; }

  /// Executes one system call in the target; returns the raw result (-errno on failure).
  /// Throws Error(kTimeout) when it does not return within step_deadline().
  int64_t syscall(long number, std::initializer_list<uint64_t> args);

  /// Calls `function(args...)` (System V ABI, up to 6 integer arguments) returning to the
  /// arena's trap. Returns rax. Throws Error(kLoadFailed) if the code faults (the registers
  /// are restored regardless), Error(kTimeout) if it does not return within step_deadline().
  uint64_t call(RemoteAddr function, std::initializer_list<uint64_t> args);

  /// Calls `function(&block)` with a copy of `block` placed in the arena's argument area
  /// (callback and sync-function arguments).
  template <typename T>
  uint64_t call_with_block(RemoteAddr function, const T& block) {
    return call(function, {arena_.put_args(&block, sizeof block).address()});
  }

  /// Calls `function(path)` with `text` copied to the arena (dlopen and the agent's loader).
  uint64_t call_with_string(RemoteAddr function, const std::string& text, std::initializer_list<uint64_t> more = {});

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

 private:
  user_regs_struct prepared_regs() const;
  PtraceSession& session_;
  ProcessMemory& memory_;
  pid_t tid_;
  RemoteAddr syscall_instruction_;
  ScratchArena& arena_;
  user_regs_struct saved_{};
  std::vector<uint8_t> saved_xstate_;  // NT_X86_XSTATE: x87, SSE, AVX, AVX-512 and MXCSR
  bool pass_faults_ = false;
};

}  // namespace polus
