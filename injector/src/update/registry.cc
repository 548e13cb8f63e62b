#include "update/registry.h"

#include <algorithm>
#include <cstddef>

#include <string>

#include "polus/error.h"
#include "common/format.h"
#include "binary/symbols.h"
#include "update/patch_trust.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>

namespace polus {

bool is_agent_mapping(const std::string& path) {
  // Loaded from a memfd named kAgentFileName (update/patch_memfd.h), or by an older Polus
  // from its file.
  // read_process_maps drops the " (deleted)" the kernel appends to a memfd's name.
  const std::string memfd = std::string("/memfd:") + kAgentFileName;
  return path == memfd || path == memfd + " (deleted)" || basename_of(path) == kAgentFileName;
}

namespace {

/// The registry's address in the agent's writable mappings among `maps`: the first 8-byte
/// aligned POLUS_AGENT_MAGIC there. 0 if none.
uint64_t find_registry(ProcessMemory& memory, const std::vector<MappedRegion>& maps) {
  for (const MappedRegion& region : maps) {
    if (!region.writable || !region.readable || !is_agent_mapping(region.path)) continue;
    std::vector<uint64_t> words((region.end - region.start) / 8);
    try {
      memory.read_bytes(RemoteAddr(region.start), words.data(), words.size() * 8);
    } catch (const Error&) {
      continue;
    }
    for (size_t i = 0; i < words.size(); ++i) {
      if (words[i] == POLUS_AGENT_MAGIC) return region.start + i * 8;
    }
  }
  return 0;
}

}  // namespace

AgentLocation agent_at_registry(ProcessMemory& memory, uint64_t registry, const std::string& path) {
  AgentLocation agent;
  agent.path = path;
  agent.registry = RemotePtr<polus_agent_registry>(registry);
  // Only a registry of our version has the entries where we look (read_registry refuses the
  // others, naming both versions).
  if (memory.read(RemotePtr<uint32_t>(registry + offsetof(polus_agent_registry, abi_version))) != POLUS_AGENT_ABI_VERSION) {
    return agent;
  }
  const polus_agent_entries e =
      memory.read(RemotePtr<polus_agent_entries>(registry + offsetof(polus_agent_registry, entries)));
  if (e.self != registry || !e.load_patch || !e.unload_patch) {
    throw Error(ErrorCode::kInternal, "the Polus agent's registry at " + hex(registry) + " in the target (" + path +
                                          ") does not describe itself (corrupt, or not a Polus agent)");
  }
  agent.load_patch = RemoteAddr(e.load_patch);
  agent.unload_patch = RemoteAddr(e.unload_patch);
  agent.sync_reserve = RemoteAddr(e.sync_reserve);
  agent.sync_prepare = RemoteAddr(e.sync_prepare);
  agent.sync_begin = RemoteAddr(e.sync_begin);
  agent.sync_end = RemoteAddr(e.sync_end);
  agent.run_callback = RemoteAddr(e.run_callback);
  if (e.fence_watch && e.escape_fence) {
    agent.fence_watch = RemotePtr<polus_fence_watch>(e.fence_watch);
    agent.escape_fence = RemoteAddr(e.escape_fence);
  }
  return agent;
}

std::optional<AgentLocation> locate_agent(ProcessMemory& memory, const std::vector<MappedRegion>& maps) {
  const uint64_t registry = find_registry(memory, maps);
  if (!registry) return std::nullopt;
  std::string path;
  for (const MappedRegion& region : maps) {
    if (region.contains(registry)) path = region.path;
  }
  return agent_at_registry(memory, registry, path);
}

std::optional<AgentLocation> locate_agent(pid_t pid, const std::vector<MappedRegion>& maps) {
  if (std::none_of(maps.begin(), maps.end(), [](const MappedRegion& r) { return is_agent_mapping(r.path); })) {
    return std::nullopt;  // without opening its memory
  }
  ProcMemory memory(pid);
  return locate_agent(memory, maps);
}

AgentImage read_agent_image(const std::string& path, const std::vector<uid_t>& allowed_owners) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    throw Error(ErrorCode::kLoadFailed, "cannot read the Polus agent " + path + ": " + std::strerror(errno) +
                                            "; install Polus, or name the agent with --agent");
  }
  TrustOptions trust;
  trust.allowed_owners = allowed_owners;
  trust.kind = "Polus agent";
  TrustedFile file = open_trusted_patch(path, trust);
  AgentImage image;
  image.path = file.path();
  image.bytes = std::make_shared<const std::vector<uint8_t>>(file.read_all());
  return image;
}

RegistrySnapshot read_registry(ProcessMemory& memory, const AgentLocation& agent) {
  RegistrySnapshot snapshot;
  snapshot.registry = memory.read(agent.registry);
  const polus_agent_registry& r = snapshot.registry;
  if (r.magic != POLUS_AGENT_MAGIC) {
    throw Error(ErrorCode::kInternal, "the Polus agent in the target has no valid registry (magic mismatch)");
  }
  if (r.abi_version != POLUS_AGENT_ABI_VERSION) {
    // Its records have another layout: reading them as ours would misplace every field.
    throw Error(ErrorCode::kInternal,
                "the Polus agent in the target (" + agent.path + ") keeps its registry in ABI version " +
                    std::to_string(r.abi_version) + ", and this Polus reads only version " +
                    std::to_string(POLUS_AGENT_ABI_VERSION) + (r.abi_version < POLUS_AGENT_ABI_VERSION ? " (an older Polus loaded it)" : " (a newer Polus loaded it)") +
                    "; nothing was read or changed. Use the polusctl of the Polus that loaded it (its patches can "
                    "be rolled back with that one), or restart the process");
  }
  if (r.patch_count > POLUS_MAX_PATCHES || r.arena_count > POLUS_MAX_ARENAS) {
    throw Error(ErrorCode::kInternal, "the Polus registry in the target is corrupt (counts out of range)");
  }
  for (uint32_t i = 0; i < r.patch_count; ++i) {
    PatchRecordView view;
    view.address = RemotePtr<polus_patch_record>(r.patches[i]);
    view.header = memory.read(view.address);
    if (view.header.magic != POLUS_AGENT_MAGIC || view.header.redirect_count > 100000) {
      throw Error(ErrorCode::kInternal, "patch record " + std::to_string(i) + " in the target is corrupt");
    }
    if (view.header.watch_count > 100000 || view.header.holder_count > POLUS_MAX_HOLDERS) {
      throw Error(ErrorCode::kInternal, "patch record " + std::to_string(i) + " in the target is corrupt");
    }
    view.redirects.resize(view.header.redirect_count);
    view.watched.resize(view.header.watch_count);
    view.holders.resize(view.header.holder_count);
    auto read_array = [&](RemoteAddr at, auto& vec) {
      if (!vec.empty()) memory.read_bytes(at, vec.data(), vec.size() * sizeof(vec[0]));
    };
    read_array(view.redirects_at(), view.redirects);
    read_array(view.watched_at(), view.watched);
    read_array(view.holders_at(), view.holders);
    snapshot.patches.push_back(std::move(view));
  }
  return snapshot;
}

void write_registry_bookkeeping(ProcessMemory& memory, const AgentLocation& agent, const polus_agent_registry& r) {
  auto put = [&](size_t offset, const void* from, size_t size) {
    memory.write_bytes(RemoteAddr(agent.registry.address() + offset), static_cast<const char*>(from), size);
  };
  put(offsetof(polus_agent_registry, patch_count), &r.patch_count, sizeof r.patch_count);
  put(offsetof(polus_agent_registry, next_patch_id), &r.next_patch_id, sizeof r.next_patch_id);
  put(offsetof(polus_agent_registry, patches), r.patches, sizeof r.patches);
  put(offsetof(polus_agent_registry, arenas), r.arenas, sizeof r.arenas);
  put(offsetof(polus_agent_registry, arena_count), &r.arena_count, sizeof r.arena_count);
}

std::vector<polus_tracked_item> read_tracked_items(ProcessMemory& memory, const polus_sync_state& sync) {
  std::vector<polus_tracked_item> items(std::min(sync.item_count, sync.item_capacity));
  if (!items.empty()) memory.read_bytes(RemoteAddr(sync.items), items.data(), items.size() * sizeof(polus_tracked_item));
  return items;
}

std::string record_sha256(const polus_patch_record& header) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  for (uint8_t byte : header.content_sha256) {
    out += kDigits[byte >> 4];
    out += kDigits[byte & 15];
  }
  return out;
}

void set_record_sha256(polus_patch_record& header, const std::string& hex) {
  auto nibble = [](char c) { return static_cast<uint8_t>(c <= '9' ? c - '0' : c - 'a' + 10); };
  for (size_t i = 0; i < POLUS_SHA256_BYTES; ++i) {
    header.content_sha256[i] = 2 * i + 1 < hex.size() ? static_cast<uint8_t>(nibble(hex[2 * i]) << 4 | nibble(hex[2 * i + 1])) : 0;
  }
}

const char* patch_state_name(uint32_t state) {
  switch (state) {
    case POLUS_STATE_APPLYING: return "applying";
    case POLUS_STATE_SYNCING: return "syncing";
    case POLUS_STATE_COMMITTED: return "committed";
    case POLUS_STATE_ROLLED_BACK: return "rolled-back";
    case POLUS_STATE_ROLLING_BACK: return "rolling-back";
    default: return "empty";
  }
}

void adopt_arenas(ScratchArena& arena, const RegistrySnapshot& registry) {
  std::vector<uint64_t> recorded;
  for (uint32_t i = 0; i < registry.registry.arena_count && i < POLUS_MAX_ARENAS; ++i) {
    recorded.push_back(registry.registry.arenas[i].base);
  }
  arena.adopt(recorded);
  for (const PatchRecordView& patch : registry.patches) {
    for (const polus_redirect_record& r : patch.redirects) {
      if (r.trampoline) arena.mark_used(r.trampoline);
    }
  }
}

void write_record_state(ProcessMemory& memory, const PatchRecordView& record, uint32_t state) {
  memory.write(RemotePtr<uint32_t>(record.address.address() + offsetof(polus_patch_record, state)), state);
}

void write_syncing_record(ProcessMemory& memory, PatchRecordView& record, uint32_t direction,
                          const std::vector<polus_watched_function>& watched) {
  record.header.state = POLUS_STATE_SYNCING;
  record.header.direction = direction;
  record.header.committed_at_unix_ns = 0;
  record.header.inspections = 0;
  record.watched = watched;
  record.holders.clear();
  record.header.watch_count = static_cast<uint32_t>(record.watched.size());
  record.header.holder_count = 0;
  if (!record.watched.empty()) {
    memory.write_bytes(record.watched_at(), record.watched.data(), record.watched.size() * sizeof(polus_watched_function));
  }
  memory.write(record.address, record.header);
}

void unlist_patch(ProcessMemory& memory, const AgentLocation& agent, uint64_t record_address) {
  polus_agent_registry reg = memory.read(agent.registry);
  auto end = std::remove(reg.patches, reg.patches + reg.patch_count, record_address);
  reg.patch_count = static_cast<uint32_t>(end - reg.patches);
  std::fill(end, reg.patches + POLUS_MAX_PATCHES, 0);
  write_registry_bookkeeping(memory, agent, reg);
}

}  // namespace polus
