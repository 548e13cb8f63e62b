// polus/registry.h — finding and reading the agent's patch registry inside a target.
//
// Reading needs no ptrace: /proc/PID/mem is readable by a process allowed to trace the
// target, so `polusctl status` never stops the target.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "polus/agent_abi.h"
#include "polus/process_maps.h"
#include "polus/process_memory.h"
#include "polus/remote_ptr.h"

namespace polus {

inline constexpr const char* kAgentFileName = "libpolus-agent.so";

/// Where libpolus-agent.so and its entry points are in one target.
struct AgentLocation {
  std::string path;
  uint64_t load_bias = 0;
  RemotePtr<polus_agent_registry> registry;
  RemoteAddr load_patch;
  RemoteAddr unload_patch;
};

/// Finds the agent in the target's maps; nullopt if it was never loaded there.
std::optional<AgentLocation> locate_agent(pid_t pid, const std::vector<MappedRegion>& maps);

/// Computes the agent's entry points for a copy loaded at `load_bias` from `path`.
AgentLocation agent_location_at(const std::string& path, uint64_t load_bias);

/// One applied patch as recorded in the target.
struct PatchRecordView {
  RemotePtr<polus_patch_record> address;
  polus_patch_record header{};
  std::vector<polus_redirect_record> redirects;
};

struct RegistrySnapshot {
  polus_agent_registry registry{};
  std::vector<PatchRecordView> patches;  // oldest first
};

/// Reads the registry and every patch record. Throws Error(kInternal) on a registry of an
/// unknown ABI version or a corrupt record.
RegistrySnapshot read_registry(ProcessMemory& memory, const AgentLocation& agent);

/// A fixed-size char array filled from a string (truncated, always NUL-terminated).
template <size_t N>
void copy_name(char (&dst)[N], const std::string& src) {
  size_t n = std::min(src.size(), N - 1);
  for (size_t i = 0; i < n; ++i) dst[i] = src[i];
  for (size_t i = n; i < N; ++i) dst[i] = 0;
}

/// Human name of a polus_patch_state value.
const char* patch_state_name(uint32_t state);

}  // namespace polus
