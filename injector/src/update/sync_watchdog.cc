#include "update/sync_watchdog.h"

#include <signal.h>

#include <cstring>

#include <spdlog/spdlog.h>

#include "common/format.h"
#include "process/divert.h"

namespace polus {

SyncWatchdog::SyncWatchdog(TargetContext& target, const AgentLocation& agent, std::chrono::milliseconds limit)
    : target_(target), watch_(agent.fence_watch), escape_(agent.escape_fence), limit_(limit) {}

std::optional<polus_fence_watch> SyncWatchdog::read_watch() {
  if (!available()) return std::nullopt;
  try {
    polus_fence_watch watch = target_.memory().read(watch_);
    if (watch.slot_count != POLUS_FENCE_WATCH_SLOTS) return std::nullopt;  // not the layout we know
    return watch;
  } catch (const Error& e) {
    spdlog::debug("process {}: cannot read the agent's fence watch: {}", target_.pid(), e.what());
    return std::nullopt;
  }
}

bool SyncWatchdog::stuck(const polus_fence_watch& watch, uint32_t k, Clock::time_point now) {
  const polus_fence_watch_slot& slot = watch.slots[k];
  Seen& seen = seen_[k];
  if (slot.tid == 0) {
    seen = Seen{};
    return false;
  }
  if (seen.tid != slot.tid || seen.calls != slot.calls) {  // another call since we last looked
    seen = Seen{slot.tid, slot.calls, now};
    return false;
  }
  return now - seen.since >= limit_;
}

void SyncWatchdog::send_out(pid_t tid, uint64_t pc, int signal, uint64_t function) {
  const std::string what = signal ? std::string("raised ") + strsignal(signal) : "did not return within " +
                                                                                  std::to_string(limit_.count()) + " ms";
  spdlog::warn("process {}: thread {} runs sync function {} of a patch, which {} (at {}): sending the thread out of it",
               target_.pid(), tid, hex(function), what, hex(pc));
  divert_thread(target_.session(), target_.memory(), tid, escape_, {pc, static_cast<uint64_t>(signal)},
                target_.bootstrap_entries().restorer);
  for (Seen& seen : seen_) {
    if (seen.tid == tid) seen = Seen{};
  }
}

int SyncWatchdog::rescue_stuck() {
  std::optional<polus_fence_watch> watch = read_watch();
  if (!watch) return 0;
  const Clock::time_point now = Clock::now();
  int sent = 0;
  for (uint32_t k = 0; k < POLUS_FENCE_WATCH_SLOTS; ++k) {
    if (!stuck(*watch, k, now)) continue;
    const pid_t tid = watch->slots[k].tid;
    // A thread of the process, stopped in this pause (a slot inherited from the parent by a
    // fork child names a thread this process does not have).
    if (!target_.session().has_thread(tid)) continue;
    // Only from an interrupt (or group) stop. A thread held in a signal-delivery-stop gets its
    // signal when it resumes, and the handler would then run on top of the diverted context
    // (a tracked write's SIGSEGV emulated at the escape's first instruction): the next
    // inspection sends it out instead.
    const StopKind stop = target_.session().thread(tid).stop;
    if (stop != StopKind::kInterrupt && stop != StopKind::kGroupStop) continue;
    send_out(tid, target_.session().get_regs(tid).rip, 0, watch->slots[k].function);
    ++sent;
  }
  return sent;
}

bool SyncWatchdog::stuck(pid_t tid) {
  std::optional<polus_fence_watch> watch = read_watch();
  if (!watch) return false;
  const Clock::time_point now = Clock::now();
  bool found = false;
  for (uint32_t k = 0; k < POLUS_FENCE_WATCH_SLOTS; ++k) {
    if (stuck(*watch, k, now) && watch->slots[k].tid == tid) found = true;
  }
  return found;
}

bool SyncWatchdog::rescue(pid_t tid, int signal) {
  std::optional<polus_fence_watch> watch = read_watch();
  if (!watch) return false;
  const Clock::time_point now = Clock::now();
  for (uint32_t k = 0; k < POLUS_FENCE_WATCH_SLOTS; ++k) {
    const bool long_running = stuck(*watch, k, now);
    if (watch->slots[k].tid != tid || (signal == 0 && !long_running)) continue;
    send_out(tid, target_.session().get_regs(tid).rip, signal, watch->slots[k].function);
    return true;
  }
  return false;
}

}  // namespace polus
