// common/clock.h — the engine's clocks: deadlines on the monotonic clock, records in Unix time.
#pragma once

#include <time.h>

#include <chrono>
#include <cstdint>

namespace polus {

/// Deadlines and durations: monotonic, unaffected by the wall clock being set.
using Clock = std::chrono::steady_clock;

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
