// process/signal_frame.h — a thread's own context, written on its stack as a signal frame.
//
// Code Polus runs on a borrowed thread returns through rt_sigreturn(2), as a signal handler
// does: before the call, the thread's registers, vector state and signal mask are written on
// its stack in the kernel's rt_sigframe layout (arch/x86/kernel/signal_64.c), and the call's
// return address leads to `rt_sigreturn`. The kernel then puts the thread back exactly where
// it was, whether or not Polus is still there to do it — the target survives its tracer, as
// CRIU's compel parasite does. rt_sigreturn sets orig_rax to -1, so the kernel's syscall
// restart logic no longer sees an interrupted call: the frame carries the restart already
// applied (rip back over the `syscall`, rax = the call number), which is what the kernel
// would have done on the way out of the interrupting stop.
#pragma once

#include <sys/user.h>

#include <cstdint>
#include <vector>

#include "process/process_memory.h"
#include "process/remote_ptr.h"

namespace polus {

/// The thread context a frame restores.
struct SavedContext {
  user_regs_struct regs{};
  std::vector<uint8_t> xstate;  // NT_X86_XSTATE: the XSAVE image
  uint64_t signal_mask = 0;
};

/// The registers `saved` resumes with once the kernel's restart logic has run: an interrupted
/// system call rewound to be made again (-ERESTARTSYS/-ERESTARTNOINTR/-ERESTARTNOHAND), or
/// turned into restart_syscall (-ERESTART_RESTARTBLOCK); orig_rax -1.
user_regs_struct restarted_regs(const user_regs_struct& saved);

/// Where a frame was written in the target.
struct SignalFrame {
  uint64_t frame = 0;        // &rt_sigframe (its pretcode slot): rsp at a called function's entry
  uint64_t result_slot = 0;  // where the return stub stores rax: rsp + kResultOffset at the stub
  uint64_t bottom = 0;       // lowest byte used (the called code's stack starts below)
  uint64_t below_sp = 0;     // what it was written below
  uint64_t return_address = 0;

  /// rsp when rt_sigreturn is made: the pretcode slot popped, pointing at the ucontext.
  uint64_t sigreturn_sp() const { return frame + 8; }
};

/// Offset from the ucontext (rsp at rt_sigreturn) to the result slot (the frame's siginfo).
inline constexpr uint32_t kResultOffset = 304;

/// Writes `context` below `below_sp` (red zone left alone) as an rt_sigframe whose pretcode
/// is `return_address`. Throws Error(kInternal) when the vector state is no XSAVE image.
SignalFrame write_signal_frame(ProcessMemory& memory, const SavedContext& context, uint64_t below_sp,
                               uint64_t return_address);

/// Writes `frame` again, whole, from `context`: before rt_sigreturn trusts it, since the code
/// we ran had its stack right below the frame and may have overwritten it.
void rewrite_signal_frame(ProcessMemory& memory, const SavedContext& context, const SignalFrame& frame);

/// Changes the mask a written frame restores.
void set_frame_signal_mask(ProcessMemory& memory, const SignalFrame& frame, uint64_t mask);

}  // namespace polus
