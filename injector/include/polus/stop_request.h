// polus/stop_request.h — an operator's Ctrl-C, `kill` or dropped ssh session, asked politely (public API).
//
// polusctl and polusd block SIGINT, SIGTERM and SIGHUP while they work on a target, so none of
// them cuts an operation short at an arbitrary instant (though even that is survived: see
// DESIGN.md). The engine asks at its safe points — between attempts to find a safe moment,
// between stack inspections — and stops there cleanly.
#pragma once

#include <signal.h>

namespace polus {

/// The signals that ask Polus to stop (blocked by the tools while they work).
inline sigset_t stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  return set;
}

/// Which stop signal is pending for this process (blocked, so it waits), or 0.
inline int stop_requested() {
  sigset_t pending;
  if (sigpending(&pending) != 0) return 0;
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) {
    if (sigismember(&pending, sig) == 1) return sig;
  }
  return 0;
}

}  // namespace polus
