// process/divert.h — sending a stopped thread into code of ours without waiting for it.
//
// A BorrowedThread runs our code and waits for it to come back. A diverted thread does not
// come back to us: it goes on from the function it was sent into (the agent's way out of a
// sync function that never returns unwinds to a frame of its own). It is still kill-safe and
// returns the CRIU way: its own context is written below its stack as a signal frame whose
// return address is libc's __restore_rt, so if the function returns, rt_sigreturn puts the
// thread back exactly where it was, with or without Polus alive.
#pragma once

#include <sys/types.h>

#include <initializer_list>

#include "process/process_memory.h"
#include "process/ptrace_session.h"
#include "process/remote_ptr.h"
#include "process/signal_frame.h"

namespace polus {

/// Thread `tid`'s whole context (registers, XSAVE state, signal mask); it must be stopped in
/// `session`. Throws Error(kInternal) if ptrace refuses a part.
SavedContext read_thread_context(PtraceSession& session, pid_t tid);

/// Sets stopped thread `tid` to call `function(args...)` (System V ABI, up to six integer
/// arguments) when it next runs, on its own stack below its current one (red zone kept),
/// returning through `restorer` (libc's __restore_rt) to where it was. Its signal mask is
/// left as it is. Does not resume it.
void divert_thread(PtraceSession& session, ProcessMemory& memory, pid_t tid, RemoteAddr function,
                   std::initializer_list<uint64_t> args, RemoteAddr restorer);

}  // namespace polus
