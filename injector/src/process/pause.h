// process/pause.h — every thread of the target stopped at once, for as short as possible.
//
// A Pause is the only moment the whole target stands still: jumps are written, write
// tracking starts, stacks are inspected. It stops every thread with PTRACE_INTERRUPT
// (threads born meanwhile too) and, whatever happens inside, lets them go again when it ends
// (RAII), measuring how long the target stood still.
#pragma once

#include <sys/types.h>

#include <cstdint>

#include "common/clock.h"
#include "process/ptrace_session.h"

namespace polus {

class Pause {
 public:
  /// Stops every thread of `session`. Throws like PtraceSession::stop_all.
  explicit Pause(PtraceSession& session);
  /// Lets every held thread go, unless end() did already.
  ~Pause();
  Pause(const Pause&) = delete;
  Pause& operator=(const Pause&) = delete;

  /// Lets every held thread but `keep` (0: none) run again; returns how long the pause
  /// lasted in nanoseconds. `keep` stays stopped for its borrower.
  uint64_t end(pid_t keep = 0);

  /// Nanoseconds since the pause began (the stopping included).
  uint64_t elapsed() const { return elapsed_ns(started_); }

 private:
  PtraceSession& session_;
  Clock::time_point started_;
  bool ended_ = false;
};

}  // namespace polus
