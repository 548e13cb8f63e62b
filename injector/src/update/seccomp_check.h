// update/seccomp_check.h — refusing a target whose seccomp filter would stop our system calls.
#pragma once

#include "update/target.h"

namespace polus {

/// What an apply will ask of the target's kernel, for the check below.
struct PlannedCalls {
  bool rehearsal = false;   // clone and wait4 for the copy
  bool data_update = false; // the agent's write tracking (fault handlers, mprotect, /proc reads)
};

/// For a target confined by seccomp: reads every thread's filters (each thread stopped for
/// a moment) and runs them on each system call the apply will make in the target — our
/// stubs', the dynamic loader's, the agent's. Throws Error(kUnsafeToPatch) naming the call
/// and what the filter would do (kill the process, SIGSYS, an errno), or saying that the
/// filters could not be read; the target is unchanged. Returns at once for an unconfined
/// target. `target` must be seized.
void check_seccomp_allows(TargetContext& target, const PlannedCalls& calls);

}  // namespace polus
