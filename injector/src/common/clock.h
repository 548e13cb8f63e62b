// common/clock.h — the engine's clocks: deadlines on the monotonic clock, records in Unix time.
#pragma once

#include <time.h>

#include <chrono>
#include <cstdint>

namespace polus {

/// Deadlines and durations: monotonic, unaffected by the wall clock being set.
using Clock = std::chrono::steady_clock;

/// Until when one step that must finish quickly — stopping every thread, one injected call or
/// system call — may take. Longer means the target is stuck (or the step is), not busy.
inline Clock::time_point step_deadline() { return Clock::now() + std::chrono::seconds(5); }

/// Nanoseconds since `since` on the monotonic clock.
inline uint64_t elapsed_ns(Clock::time_point since) {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - since).count());
}

/// The wall-clock time for records an operator reads (applied_at, committed_at).
inline uint64_t unix_now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

}  // namespace polus
