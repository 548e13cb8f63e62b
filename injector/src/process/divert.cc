#include "process/divert.h"

#include <elf.h>
#include <sys/ptrace.h>
#include <sys/uio.h>

#include <string>

#include "polus/error.h"

namespace polus {

SavedContext read_thread_context(PtraceSession& session, pid_t tid) {
  SavedContext context;
  context.regs = session.get_regs(tid);
  // The FPU/SSE/AVX/AVX-512 state too: dlopen and libc's string functions clobber vector
  // registers the interrupted code may still be using (NT_X86_XSTATE covers all of it).
  context.xstate.resize(16384);
  iovec io{context.xstate.data(), context.xstate.size()};
  if (::ptrace(PTRACE_GETREGSET, tid, reinterpret_cast<void*>(NT_X86_XSTATE), &io) != 0) {
    throw_errno("reading the vector registers of thread " + std::to_string(tid), errno);
  }
  context.xstate.resize(io.iov_len);
  std::optional<uint64_t> mask = session.signal_mask(tid);
  if (!mask) throw_errno("reading the signal mask of thread " + std::to_string(tid), errno);
  context.signal_mask = *mask;
  return context;
}

void divert_thread(PtraceSession& session, ProcessMemory& memory, pid_t tid, RemoteAddr function,
                   std::initializer_list<uint64_t> args, RemoteAddr restorer) {
  const SavedContext context = read_thread_context(session, tid);
  const SignalFrame frame = write_signal_frame(memory, context, context.regs.rsp, restorer.address());
  // The restart an interrupted system call would get is in the frame (signal_frame.h); the
  // diverted run itself must not restart it: orig_rax -1.
  user_regs_struct regs = restarted_regs(context.regs);
  regs.rsp = frame.frame;  // its pretcode slot: the function's return address
  regs.eflags &= ~(0x100ull | 0x400ull);
  regs.rax = 0;
  unsigned long long* slots[] = {&regs.rdi, &regs.rsi, &regs.rdx, &regs.rcx, &regs.r8, &regs.r9};
  size_t i = 0;
  for (uint64_t arg : args) *slots[i++] = arg;
  regs.rip = function.address();
  session.set_regs(tid, regs);
}

}  // namespace polus
