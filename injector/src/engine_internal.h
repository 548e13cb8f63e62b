// engine_internal.h — pieces apply, rollback and finish share (internal to the engine).
#pragma once

#include <time.h>

#include <chrono>
#include <cstdint>
#include <string>

#include "polus/engine.h"
#include "polus/registry.h"
#include "polus/target.h"

namespace polus {

inline uint64_t unix_now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

inline uint64_t elapsed_ns(Clock::time_point since) {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - since).count());
}

/// The operator's view of a patch record (item details are added by status only).
PatchInfo info_from_record(const PatchRecordView& record);

/// The agent, its registry and the load bias of a loaded patch, read from the target.
uint64_t patch_load_bias(ProcessMemory& memory, const polus_patch_record& header);

/// After a rollback has taken every jump out: unloads the patch when no thread runs its code
/// (checked now, with every thread stopped), frees its record and drops it from the registry.
void retire_patch(TargetContext& target, const AgentLocation& agent, const PatchRecordView& record);

}  // namespace polus
