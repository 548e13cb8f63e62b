#include "process/borrowed_thread.h"

#include <elf.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>

#include <cstring>

#include <sstream>
#include <string>

#include <spdlog/spdlog.h>

#include "polus/error.h"
#include "common/format.h"
#include "process/process_maps.h"

namespace polus {

BorrowedThread::BorrowedThread(PtraceSession& session, ProcessMemory& memory, pid_t tid,
                               RemoteAddr syscall_instruction, ScratchArena& arena)
    : session_(session), memory_(memory), tid_(tid), syscall_instruction_(syscall_instruction), arena_(arena) {
  saved_ = session_.get_regs(tid_);
  // The FPU/SSE/AVX/AVX-512 state too: dlopen and libc's string functions clobber vector
  // registers the interrupted code may still be using (NT_X86_XSTATE covers all of it).
  saved_xstate_.resize(16384);
  iovec io{saved_xstate_.data(), saved_xstate_.size()};
  if (::ptrace(PTRACE_GETREGSET, tid_, reinterpret_cast<void*>(NT_X86_XSTATE), &io) == 0) {
    saved_xstate_.resize(io.iov_len);
  } else {
    saved_xstate_.clear();
    spdlog::warn("cannot save the vector registers of thread {}", tid_);
  }
  session_.set_borrowed(tid_, true);
}

BorrowedThread::~BorrowedThread() {
  try {
    if (session_.has_thread(tid_)) {
      // A call that timed out leaves the thread running our code: stop it before restoring.
      if (session_.thread(tid_).stop == StopKind::kNone) {
        session_.stop_thread(tid_, Clock::now() + std::chrono::seconds(5));
      }
      session_.set_regs(tid_, saved_);
      if (!saved_xstate_.empty()) {
        iovec io{saved_xstate_.data(), saved_xstate_.size()};
        if (::ptrace(PTRACE_SETREGSET, tid_, reinterpret_cast<void*>(NT_X86_XSTATE), &io) != 0) {
          spdlog::error("could not restore the vector registers of thread {}", tid_);
        }
      }
      session_.set_borrowed(tid_, false);
    }
  } catch (const std::exception& e) {
    spdlog::error("could not restore the registers of thread {}: {}", tid_, e.what());
  }
}

user_regs_struct BorrowedThread::prepared_regs() const {
  user_regs_struct regs = saved_;
  // -1: "not in a system call", so no restart fix-up is applied to our registers.
  regs.orig_rax = static_cast<unsigned long long>(-1);
  // Leave the red zone (128 bytes below rsp) and some slack untouched; keep 16-byte alignment.
  regs.rsp = ((saved_.rsp - 512) & ~0xfull);
  regs.eflags &= ~(0x100ull | 0x400ull);  // no trap flag; direction flag clear, as the ABI requires
  return regs;
}

int64_t BorrowedThread::syscall(long number, std::initializer_list<uint64_t> args) {
  const Clock::time_point deadline = step_deadline();
  user_regs_struct regs = prepared_regs();
  unsigned long long* slots[] = {&regs.rdi, &regs.rsi, &regs.rdx, &regs.r10, &regs.r8, &regs.r9};
  size_t i = 0;
  for (uint64_t arg : args) *slots[i++] = arg;
  regs.rax = static_cast<unsigned long long>(number);
  regs.rip = syscall_instruction_.address();
  session_.set_regs(tid_, regs);
  // One single-step executes the syscall instruction; the trap comes right after it.
  for (;;) {
    int sig = session_.run_borrowed_until_trap(tid_, /*single_step=*/true, deadline);
    user_regs_struct after = session_.get_regs(tid_);
    if (sig == SIGTRAP && after.rip == syscall_instruction_.address() + 2) {
      return static_cast<int64_t>(after.rax);
    }
    if (sig != SIGTRAP) {
      throw Error(ErrorCode::kInternal, "remote system call " + std::to_string(number) + " faulted with signal " +
                                            std::to_string(sig));
    }
  }
}

uint64_t BorrowedThread::call(RemoteAddr function, std::initializer_list<uint64_t> args) {
  const Clock::time_point deadline = step_deadline();
  const RemoteAddr return_trap = arena_.trap();
  user_regs_struct regs = prepared_regs();
  unsigned long long* slots[] = {&regs.rdi, &regs.rsi, &regs.rdx, &regs.rcx, &regs.r8, &regs.r9};
  size_t i = 0;
  for (uint64_t arg : args) *slots[i++] = arg;
  // At a function's first instruction, (rsp + 8) is 16-byte aligned: push the return address.
  regs.rsp -= 8;
  memory_.write(RemotePtr<uint64_t>(regs.rsp), return_trap.address());
  regs.rip = function.address();
  regs.rax = 0;  // variadic callees read al as the vector register count
  session_.set_regs(tid_, regs);
  int inject = 0;
  for (;;) {
    int sig = session_.run_borrowed_until_trap(tid_, /*single_step=*/false, deadline, inject);
    inject = 0;
    user_regs_struct after = session_.get_regs(tid_);
    if (sig == SIGTRAP && after.rip == return_trap.address() + 1) return after.rax;
    if (pass_faults_ && (sig == SIGSEGV || sig == SIGTRAP || sig == SIGBUS)) {
      inject = sig;  // the agent's write tracking at work
      continue;
    }
    if (sig != SIGTRAP) {
      // The injected code crashed. Put the thread back as it was and report; the signal is
      // not delivered, so the target survives (the callee may have left a lock held).
      session_.set_regs(tid_, saved_);
      throw Error(ErrorCode::kLoadFailed, "code run in the target faulted (signal " + std::to_string(sig) +
                                              " at " + hex(after.rip) +
                                              "); the target was left running. Check the patch's constructors");
    }
    spdlog::debug("ignoring a foreign SIGTRAP at {} in borrowed thread {}", hex(after.rip), tid_);
  }
}

uint64_t BorrowedThread::call_with_string(RemoteAddr function, const std::string& text,
                                          std::initializer_list<uint64_t> more) {
  uint64_t args[6] = {arena_.put_string(text).address()};
  size_t n = 1;
  for (uint64_t arg : more) args[n++] = arg;
  return call(function, {args[0], args[1], args[2], args[3], args[4], args[5]});
}

uint64_t BorrowedThread::map_memory(uint64_t near_start, uint64_t near_end, uint64_t size, int prot) {
  uint64_t hint = 0;
  int flags = MAP_PRIVATE | MAP_ANONYMOUS;
  if (near_start != 0) {
    auto found = find_free_range_near(read_process_maps(session_.pid()), near_start, near_end, size);
    if (!found) {
      throw Error(ErrorCode::kUnsafeToPatch, "no free address range within 2 GiB of the code at " + hex(near_start) +
                                                 " for a jump trampoline");
    }
    hint = *found;
    flags |= MAP_FIXED_NOREPLACE;
  }
  int64_t result = syscall(SYS_mmap, {hint, size, static_cast<uint64_t>(prot), static_cast<uint64_t>(flags),
                                      static_cast<uint64_t>(-1), 0});
  if (result < 0 && result > -4096) {
    throw Error(ErrorCode::kInternal, "mmap in the target failed: " + std::string(std::strerror(static_cast<int>(-result))));
  }
  return static_cast<uint64_t>(result);
}

void BorrowedThread::unmap_memory(uint64_t address, uint64_t size) noexcept {
  try {
    int64_t result = syscall(SYS_munmap, {address, size});
    if (result != 0) spdlog::warn("munmap({}, {}) in the target failed: {}", hex(address), size, result);
  } catch (const std::exception& e) {
    spdlog::warn("munmap in the target failed: {}", e.what());
  }
}

}  // namespace polus
