// polus/stop_request.h — an operator's Ctrl-C, `kill` or dropped ssh session, asked politely (public API).
//
// polusctl and polusd block SIGINT, SIGTERM and SIGHUP while they work on a target, so none of
// them cuts an operation short at an arbitrary instant (though even that is survived: see
// DESIGN.md). The engine asks at its safe points — between attempts to find a safe moment,
// between stack inspections — and stops there cleanly.
#pragma once

#include <signal.h>

#include <atomic>

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

/// For a host that runs several operations at once in threads of its own (polusd): a flag per
/// thread that asks that thread's operation alone to stop, as a stop signal would; its value is
/// the signal to report (SIGINT when a client's Ctrl-C is relayed). nullptr: none.
inline std::atomic<int>*& thread_stop_flag() {
  thread_local std::atomic<int>* flag = nullptr;
  return flag;
}

/// Which stop signal is pending for this process (blocked, so it waits), or set in this
/// thread's thread_stop_flag(), or 0.
inline int stop_requested() {
  if (std::atomic<int>* flag = thread_stop_flag(); flag && flag->load() != 0) return flag->load();
  sigset_t pending;
  if (sigpending(&pending) != 0) return 0;
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) {
    if (sigismember(&pending, sig) == 1) return sig;
  }
  return 0;
}

}  // namespace polus
