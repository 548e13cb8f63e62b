#include "process/borrowed_thread.h"

#include <elf.h>
#include <sys/ptrace.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>

#include <algorithm>
#include <cstring>
#include <string>

#include <spdlog/spdlog.h>

#include "common/format.h"
#include "polus/error.h"
#include "process/divert.h"
#include "process/process_maps.h"

namespace polus {

namespace {

constexpr uint64_t bit(int sig) { return 1ull << (sig - 1); }

/// Synchronous faults stay deliverable while our code runs (a fault must reach us, and the
/// agent's write tracking works through SIGSEGV and SIGTRAP); everything else waits.
constexpr uint64_t kFaultSignals = bit(SIGSEGV) | bit(SIGBUS) | bit(SIGILL) | bit(SIGFPE) | bit(SIGTRAP) | bit(SIGSYS);
constexpr uint64_t kCallMask = ~kFaultSignals;

constexpr uint64_t kRestorerSyscallEnd = 9;  // __restore_rt: mov $15,%rax (7 bytes); syscall

/// The System V argument registers of a call (up to six integers).
void set_call_arguments(user_regs_struct& regs, std::initializer_list<uint64_t> args) {
  unsigned long long* slots[] = {&regs.rdi, &regs.rsi, &regs.rdx, &regs.rcx, &regs.r8, &regs.r9};
  size_t i = 0;
  for (uint64_t arg : args) *slots[i++] = arg;
}

/// A syscall stop as PTRACE_GET_SYSCALL_INFO (Linux 5.3) tells it; glibc 2.36's
/// <sys/ptrace.h> has the request but not the structure (uapi linux/ptrace.h).
struct SyscallStop {
  enum Op : uint8_t { kNone = 0, kEntry = 1, kExit = 2 } op = kNone;
  uint64_t pc = 0;      // after the `syscall` instruction
  uint64_t number = 0;  // at entry
  int64_t result = 0;   // at exit
};

SyscallStop syscall_stop(pid_t tid) {
  struct {
    uint8_t op;
    uint8_t pad[3];
    uint32_t arch;
    uint64_t instruction_pointer;
    uint64_t stack_pointer;
    union {
      struct {
        uint64_t nr;
        uint64_t args[6];
      } entry;
      struct {
        int64_t rval;
        uint8_t is_error;
      } exit;
    };
  } info{};
  if (::ptrace(PTRACE_GET_SYSCALL_INFO, tid, sizeof info, &info) <= 0) {
    throw_errno("PTRACE_GET_SYSCALL_INFO of thread " + std::to_string(tid), errno);
  }
  SyscallStop stop;
  stop.op = static_cast<SyscallStop::Op>(info.op);
  stop.pc = info.instruction_pointer;
  if (stop.op == SyscallStop::kEntry) stop.number = info.entry.nr;
  if (stop.op == SyscallStop::kExit) stop.result = info.exit.rval;
  return stop;
}

}  // namespace

BorrowedThread::BorrowedThread(PtraceSession& session, ProcessMemory& memory, pid_t tid, ScratchArena& arena,
                               std::function<BootstrapEntries()> bootstrap)
    : session_(session), memory_(memory), tid_(tid), arena_(arena), bootstrap_(std::move(bootstrap)) {
  saved_ = read_thread_context(session_, tid_);
  session_.set_borrowed(tid_, true);
}

BorrowedThread::~BorrowedThread() {
  if (session_.has_thread(tid_)) session_.set_borrowed(tid_, false);
}

user_regs_struct BorrowedThread::call_regs(const SignalFrame& frame) const {
  user_regs_struct regs = restarted_regs(saved_.regs);
  regs.rsp = frame.frame;
  regs.eflags &= ~(0x100ull | 0x400ull);  // no trap flag; direction flag clear, as the ABI requires
  regs.rax = 0;                            // variadic callees read al as the vector register count
  return regs;
}

int64_t BorrowedThread::syscall(long number, std::initializer_list<uint64_t> args) {
  SignalFrame frame = write_signal_frame(memory_, saved_, saved_.regs.rsp, arena_.return_stub().address());
  user_regs_struct regs = call_regs(frame);
  unsigned long long* slots[] = {&regs.rdi, &regs.rsi, &regs.rdx, &regs.r10, &regs.r8, &regs.r9};
  size_t i = 0;
  for (uint64_t arg : args) *slots[i++] = arg;
  regs.rax = static_cast<unsigned long long>(number);
  regs.rsp = frame.sigreturn_sp();  // the stub's rt_sigreturn finds the ucontext there
  regs.rip = arena_.syscall_stub().address();
  return static_cast<int64_t>(run(regs, frame, arena_.sigreturn_pc(), -1, "system call"));
}

pid_t BorrowedThread::clone_process(pid_t* in_target) {
  SignalFrame frame = write_signal_frame(memory_, saved_, saved_.regs.rsp, arena_.return_stub().address());
  user_regs_struct regs = call_regs(frame);
  regs.rax = SYS_clone;
  regs.rdi = 0;  // flags: a new process, exit signal 0; the child continues on this stack (a copy)
  regs.rsi = regs.rdx = regs.r10 = regs.r8 = 0;
  regs.rsp = frame.sigreturn_sp();
  regs.rip = arena_.clone_stub().address();
  int64_t result = static_cast<int64_t>(run(regs, frame, arena_.sigreturn_pc(), -1, "clone"));
  if (result <= 0) {
    throw Error(ErrorCode::kInternal, "the target could not make a copy of itself (clone: " +
                                          std::string(std::strerror(static_cast<int>(-result))) + ")");
  }
  // `result` numbers the copy in the target's pid namespace; a target in a container of its
  // own sees another number than we do. The clone event told us ours.
  if (in_target) *in_target = static_cast<pid_t>(result);
  pid_t ours = session_.last_clone_of(tid_);
  return ours > 0 ? ours : static_cast<pid_t>(result);
}

uint64_t BorrowedThread::call(RemoteAddr function, std::initializer_list<uint64_t> args) {
  SignalFrame frame = write_signal_frame(memory_, saved_, saved_.regs.rsp, arena_.return_stub().address());
  user_regs_struct regs = call_regs(frame);
  set_call_arguments(regs, args);
  regs.rip = function.address();
  return run(regs, frame, arena_.sigreturn_pc(), -1, "call");
}

uint64_t BorrowedThread::call_with_string(RemoteAddr function, const std::string& text,
                                          std::initializer_list<uint64_t> more) {
  uint64_t args[6] = {arena_.put_string(text).address()};
  size_t n = 1;
  for (uint64_t arg : more) args[n++] = arg;
  return call(function, {args[0], args[1], args[2], args[3], args[4], args[5]});
}

int64_t BorrowedThread::syscall_with_string(long number, const std::string& text, std::initializer_list<uint64_t> more) {
  uint64_t args[6] = {arena_.put_string(text).address()};
  size_t n = 1;
  for (uint64_t arg : more) args[n++] = arg;
  return syscall(number, {args[0], args[1], args[2], args[3], args[4], args[5]});
}

uint64_t BorrowedThread::run(user_regs_struct regs, const SignalFrame& frame, RemoteAddr sigreturn_pc,
                             long syscall_result_of, const char* what) {
  Clock::time_point deadline = step_deadline();
  session_.set_regs(tid_, regs);
  session_.set_signal_mask(tid_, kCallMask);
  set_frame_signal_mask(memory_, frame, saved_.signal_mask & ~session_.thread(tid_).unblock_on_return);
  uint64_t result = 0;
  bool have_result = false, awaiting_exit = false;
  int inject = 0;
  for (;;) {
    BorrowedStop stop;
    try {
      std::function<bool()> interrupt_if;
      if (stuck_) interrupt_if = [this] { return stuck_(tid_); };
      stop = session_.run_borrowed(tid_, deadline, inject, interrupt_if);
    } catch (const Error& e) {
      if (e.code() != ErrorCode::kTimeout) throw;
      std::string where;
      try {
        session_.stop_thread(tid_, step_deadline());
        where = " at " + hex(session_.get_regs(tid_).rip);
      } catch (const std::exception&) {
      }
      abandon(frame, sigreturn_pc);  // a lock it took stays taken: the call did not finish
      throw Error(ErrorCode::kTimeout, std::string(e.what()) + "; the " + what + " was" + where +
                                           " when given up, and the thread was put back as it was");
    }
    inject = 0;
    if (stop.kind == StopKind::kInterrupt) {  // stuck_ said so: stopped at a clean point
      if (rescue_(tid_, 0)) deadline = step_deadline();
      continue;
    }
    if (stop.kind == StopKind::kSyscall) {
      const SyscallStop info = syscall_stop(tid_);
      if (info.op == SyscallStop::kEntry) {
        if (info.number == SYS_rt_sigreturn && info.pc == sigreturn_pc.address()) {
          if (!have_result) result = memory_.read(RemotePtr<uint64_t>(frame.result_slot));
          rewrite_signal_frame(memory_, saved_, frame);  // the callee's stack was right below it
          // Fault signals the engine unblocked meanwhile stay unblocked (see unblock_signals).
          set_frame_signal_mask(memory_, frame, saved_.signal_mask & ~session_.thread(tid_).unblock_on_return);
          finish_sigreturn(sigreturn_pc, deadline);
          return result;
        }
        awaiting_exit = syscall_result_of >= 0 && !have_result && static_cast<long>(info.number) == syscall_result_of;
      } else if (info.op == SyscallStop::kExit && awaiting_exit) {
        result = static_cast<uint64_t>(info.result);
        have_result = true;
        awaiting_exit = false;
      }
      continue;
    }
    const int sig = stop.signal;
    if (pass_faults_ && (sig == SIGSEGV || sig == SIGTRAP || sig == SIGBUS)) {
      inject = sig;  // the agent's write tracking at work
      continue;
    }
    if (rescue_ && rescue_(tid_, sig)) continue;  // inside a sync function: the agent's fence ends it
    // The injected code crashed. The signal is not delivered (the target survives); the
    // thread goes back to its own context through the frame (the callee may have left a
    // lock held).
    uint64_t pc = session_.get_regs(tid_).rip;
    abandon(frame, sigreturn_pc);
    throw CodeFault(std::string("code run in the target by a Polus ") + what + " faulted (signal " + std::to_string(sig) +
                        " " + strsignal(sig) + " at " + hex(pc) +
                        "); the signal was not delivered and the thread was put back as it was",
                    sig, pc);
  }
}

void BorrowedThread::finish_sigreturn(RemoteAddr sigreturn_pc, Clock::time_point deadline) {
  for (;;) {
    BorrowedStop stop = session_.run_borrowed(tid_, deadline);
    if (stop.kind != StopKind::kSyscall) continue;  // a fault signal at the last moment: dropped
    if (syscall_stop(tid_).op == SyscallStop::kExit) return;
    spdlog::debug("thread {}: unexpected syscall stop after rt_sigreturn at {}", tid_, hex(sigreturn_pc.address()));
  }
}

void BorrowedThread::abandon(const SignalFrame& frame, RemoteAddr sigreturn_pc) noexcept {
  try {
    user_regs_struct regs = session_.get_regs(tid_);
    regs.rsp = frame.sigreturn_sp();
    regs.rax = SYS_rt_sigreturn;
    regs.orig_rax = static_cast<unsigned long long>(-1);
    regs.rip = sigreturn_pc.address() - 2;  // the `syscall` of the stub (or of __restore_rt)
    regs.eflags &= ~0x100ull;
    session_.set_regs(tid_, regs);
    rewrite_signal_frame(memory_, saved_, frame);  // faulting code may have written over it
    set_frame_signal_mask(memory_, frame, saved_.signal_mask & ~session_.thread(tid_).unblock_on_return);
    const Clock::time_point deadline = step_deadline();
    for (;;) {
      BorrowedStop stop = session_.run_borrowed(tid_, deadline);
      if (stop.kind != StopKind::kSyscall) continue;
      const SyscallStop info = syscall_stop(tid_);
      if (info.op == SyscallStop::kEntry && info.number == SYS_rt_sigreturn) {
        finish_sigreturn(sigreturn_pc, deadline);
        return;
      }
    }
  } catch (const std::exception& e) {
    spdlog::error("could not put thread {} back in its own context: {}", tid_, e.what());
  }
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
  const std::initializer_list<uint64_t> args = {hint, size, static_cast<uint64_t>(prot), static_cast<uint64_t>(flags),
                                                static_cast<uint64_t>(-1), 0};
  // No arena for our stubs yet: libc's mmap, returning to libc's own __restore_rt.
  int64_t result = arena_.ready() ? syscall(SYS_mmap, args) : call_via_restorer(bootstrap_().mmap, args, SYS_mmap);
  if (result < 0 && result > -4096) {
    throw Error(ErrorCode::kInternal, "mmap in the target failed: " + std::string(std::strerror(static_cast<int>(-result))));
  }
  return static_cast<uint64_t>(result);
}

int64_t BorrowedThread::call_via_restorer(RemoteAddr function, std::initializer_list<uint64_t> args, long syscall_nr) {
  const RemoteAddr restorer = bootstrap_().restorer;
  SignalFrame frame = write_signal_frame(memory_, saved_, saved_.regs.rsp, restorer.address());
  user_regs_struct regs = call_regs(frame);
  set_call_arguments(regs, args);
  regs.rip = function.address();
  return static_cast<int64_t>(
      run(regs, frame, RemoteAddr(restorer.address() + kRestorerSyscallEnd), syscall_nr, "call of libc"));
}

void BorrowedThread::unmap_memory(uint64_t address, uint64_t size) noexcept {
  try {
    // The stubs cannot unmap their own page and return through it: libc's munmap can.
    const bool own_stubs = arena_.ready() && arena_.return_stub().address() - address < size;
    int64_t result = own_stubs ? call_via_restorer(bootstrap_().munmap, {address, size}, SYS_munmap)
                               : syscall(SYS_munmap, {address, size});
    if (result != 0) spdlog::warn("munmap({}, {}) in the target failed: {}", hex(address), size, result);
  } catch (const std::exception& e) {
    spdlog::warn("munmap in the target failed: {}", e.what());
  }
}

}  // namespace polus
