// update/registry.h — finding and reading the agent's patch registry inside a target.
//
// Reading needs no ptrace: /proc/PID/mem is readable by a process allowed to trace the
// target, so `polusctl status` never stops the target.
#pragma once

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "polus/agent_abi.h"
#include "process/process_maps.h"
#include "process/process_memory.h"
#include "process/remote_ptr.h"
#include "process/scratch_arena.h"

namespace polus {

inline constexpr const char* kAgentFileName = "libpolus-agent.so";

/// Where libpolus-agent.so and its entry points are in one target.
struct AgentLocation {
  std::string path;
  uint64_t load_bias = 0;
  RemotePtr<polus_agent_registry> registry;
  RemoteAddr load_patch;
  RemoteAddr unload_patch;
  RemoteAddr sync_reserve;  // uint64_t polus_agent_sync_reserve(uint32_t capacity)
  RemoteAddr sync_prepare;  // int polus_agent_sync_prepare(void), 0 if the agent has none
  RemoteAddr sync_begin;    // int polus_agent_sync_begin(void)
  RemoteAddr sync_end;      // int polus_agent_sync_end(void)
  RemoteAddr run_callback;  // int64_t polus_agent_run_callback(fn, args), 0 if the agent has none
  RemotePtr<polus_fence_watch> fence_watch;  // the sync functions running (update/sync_watchdog.h), 0 if none
  RemoteAddr escape_fence;                   // void polus_agent_escape_fence(pc, signal), 0 if none
};

/// Writes the injector-owned parts of the registry (patch list, ids, arenas) — never the
/// parts the agent updates on its own while threads run (sync counters).
void write_registry_bookkeeping(ProcessMemory& memory, const AgentLocation& agent, const polus_agent_registry& registry);

/// The agent's tracked items (read by status while a data update syncs).
std::vector<polus_tracked_item> read_tracked_items(ProcessMemory& memory, const polus_sync_state& sync);

/// Whether a mapping of `path` (as /proc/PID/maps names it) is the agent's: its memfd, or the
/// file an older Polus loaded it from.
bool is_agent_mapping(const std::string& path);

/// Finds the agent in the target's maps (its registry, by its magic in the agent's writable
/// mapping, and the entry points the registry lists); nullopt if it was never loaded there.
/// Needs no file of the agent: it may have come from a memfd, in another mount namespace.
/// Throws Error(kInternal) on a registry that does not describe itself.
std::optional<AgentLocation> locate_agent(pid_t pid, const std::vector<MappedRegion>& maps);
std::optional<AgentLocation> locate_agent(ProcessMemory& memory, const std::vector<MappedRegion>& maps);

/// The agent whose registry is at `registry` (mapped from `path`). For a registry of another
/// ABI version only the registry is set (read_registry then says which version it is).
AgentLocation agent_at_registry(ProcessMemory& memory, uint64_t registry, const std::string& path);

/// The Polus agent's file, checked like a patch file (update/patch_trust.h) and read once: the
/// bytes a target loads, through a sealed memfd (update/patch_memfd.h).
struct AgentImage {
  std::string path;
  std::shared_ptr<const std::vector<uint8_t>> bytes;
};

/// Reads the agent at `path`. Throws Error(kLoadFailed) when it cannot be read,
/// Error(kPermissionDenied) when someone untrusted could have written it (`allowed_owners`
/// as for patch files).
AgentImage read_agent_image(const std::string& path, const std::vector<uid_t>& allowed_owners);

/// One applied patch as recorded in the target.
struct PatchRecordView {
  RemotePtr<polus_patch_record> address;
  polus_patch_record header{};
  std::vector<polus_redirect_record> redirects;
  std::vector<polus_watched_function> watched;
  std::vector<polus_holder> holders;

  RemoteAddr redirects_at() const { return RemoteAddr(address.address() + sizeof(polus_patch_record)); }
  RemoteAddr watched_at() const {
    return RemoteAddr(redirects_at().address() + header.redirect_count * sizeof(polus_redirect_record));
  }
  RemoteAddr holders_at() const {
    return RemoteAddr(watched_at().address() + header.watch_count * sizeof(polus_watched_function));
  }
  /// Bytes a record with these counts needs, rounded up to whole pages.
  static uint64_t bytes_for(uint32_t redirects, uint32_t watched) {
    uint64_t bytes = sizeof(polus_patch_record) + redirects * sizeof(polus_redirect_record) +
                     watched * sizeof(polus_watched_function) + POLUS_MAX_HOLDERS * sizeof(polus_holder);
    return (bytes + 4095) & ~4095ull;
  }
};

struct RegistrySnapshot {
  polus_agent_registry registry{};
  std::vector<PatchRecordView> patches;  // oldest first
};

/// Reads the registry and every patch record. Throws Error(kInternal) on a registry of an
/// unknown ABI version or a corrupt record.
RegistrySnapshot read_registry(ProcessMemory& memory, const AgentLocation& agent);

/// Writes only the state of a record: the one word that says, at any instant, how far an
/// operation got (the intent before the first byte changes, the outcome right after the last).
void write_record_state(ProcessMemory& memory, const PatchRecordView& record, uint32_t state);

/// Marks `record` syncing in `direction`, watching `watched` (the code the update retires):
/// the list first, then the header that counts it in one write, so a record cut short is
/// either as it was or wholly the new state. Updates `record` to match.
void write_syncing_record(ProcessMemory& memory, PatchRecordView& record, uint32_t direction,
                          const std::vector<polus_watched_function>& watched);

/// Takes a record out of the registry's list of patches (the record's memory stays).
void unlist_patch(ProcessMemory& memory, const AgentLocation& agent, uint64_t record_address);

/// Hands the arenas the registry records to `arena`, with every trampoline slot a recorded
/// patch uses marked as taken.
void adopt_arenas(ScratchArena& arena, const RegistrySnapshot& registry);

/// A fixed-size char array filled from a string (truncated, always NUL-terminated).
template <size_t N>
void copy_name(char (&dst)[N], const std::string& src) {
  size_t n = std::min(src.size(), N - 1);
  for (size_t i = 0; i < n; ++i) dst[i] = src[i];
  for (size_t i = n; i < N; ++i) dst[i] = 0;
}

/// The record's content hash as lowercase hex.
std::string record_sha256(const polus_patch_record& header);

/// Stores `hex` (64 lowercase hex digits, a PatchDescription's content_sha256) in the record.
void set_record_sha256(polus_patch_record& header, const std::string& hex);

/// Human name of a polus_patch_state value.
const char* patch_state_name(uint32_t state);

}  // namespace polus
