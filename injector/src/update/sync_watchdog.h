// update/sync_watchdog.h — sync functions that never return, or crash where the agent's own
// handlers cannot catch them, are sent out of their fence (agent_abi.h, the fence watch).
//
// A patch's sync function runs inside the target, on the thread whose write triggered it
// (in the agent's SIGSEGV handler) or on a thread Polus borrowed to start or end tracking. A
// loop or a wait that never ends there would hold that thread for ever, with the agent's
// sync lock or its items' locks taken: every writer of those items would hang behind it. The
// agent shows each running call in its fence watch; the watchdog reads it with the thread
// stopped, and a call seen for longer than the limit is sent into the agent's escape, which
// unwinds to the fence as for a fault: the update is then abandoned like one with a faulting
// sync function (update/abandon.h). The function's locks, if it took any of the target's (the
// patch-format contract forbids it: sync functions must be async-signal-safe), stay taken.
#pragma once

#include <sys/types.h>

#include <array>
#include <chrono>
#include <optional>

#include "common/clock.h"
#include "polus/agent_abi.h"
#include "update/registry.h"
#include "update/target.h"

namespace polus {

/// How long one sync function call may run before it counts as stuck. Sync functions copy a
/// few members (microseconds); a second is far beyond any that works, and short enough that
/// the target's writers of the items it holds are not held for long.
inline constexpr std::chrono::milliseconds kSyncFunctionLimit{1000};

class SyncWatchdog {
 public:
  /// Watches through `agent`'s fence watch (does nothing for an agent that has none). A call
  /// seen running for longer than `limit` is stuck.
  SyncWatchdog(TargetContext& target, const AgentLocation& agent, std::chrono::milliseconds limit);

  /// With every thread stopped (a Pause): sends every thread stuck in a sync function out of
  /// it. Returns how many it sent.
  int rescue_stuck();

  /// For BorrowedThread::set_rescue, on borrowed thread `tid` (stopped) running an agent
  /// entry point: if it is inside a sync function and either raised `signal` there (one the
  /// agent does not take from a borrowed thread) or has been in that call for longer than
  /// the limit (`signal` 0), sends it out and returns true.
  bool rescue(pid_t tid, int signal);

  /// For BorrowedThread::set_rescue, `tid` running: whether it has been inside one sync
  /// function call for longer than the limit (reads the watch only).
  bool stuck(pid_t tid);

  /// Whether the agent has a fence watch at all.
  bool available() const { return watch_.address() != 0 && escape_.address() != 0; }

 private:
  struct Seen {
    int32_t tid = 0;
    uint32_t calls = 0;
    Clock::time_point since{};
  };
  /// The watch as it is now (threads stopped), nullopt if unreadable.
  std::optional<polus_fence_watch> read_watch();
  /// Updates seen_ from `watch`; true if slot `k` has shown one call for longer than the limit.
  bool stuck(const polus_fence_watch& watch, uint32_t k, Clock::time_point now);
  void send_out(pid_t tid, uint64_t pc, int signal, uint64_t function);

  TargetContext& target_;
  RemotePtr<polus_fence_watch> watch_;
  RemoteAddr escape_;
  std::chrono::milliseconds limit_;
  std::array<Seen, POLUS_FENCE_WATCH_SLOTS> seen_{};
};

}  // namespace polus
