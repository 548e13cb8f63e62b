#include "update/registry.h"

#include <algorithm>
#include <cstddef>

#include <string>

#include "polus/error.h"
#include "common/format.h"
#include "binary/symbols.h"

namespace polus {

namespace {
uint64_t symbol_value_or_zero(const ElfObjectFile& object, const char* name) {
  for (const Symbol& s : object.symbols) {
    if (s.name == name && s.is_global) return s.address.address();
  }
  return 0;
}

uint64_t symbol_value(const ElfObjectFile& object, const char* name) {
  if (uint64_t value = symbol_value_or_zero(object, name)) return value;
  throw Error(ErrorCode::kInternal, object.path + " lacks '" + name + "': not a Polus agent of this version");
}
}  // namespace

AgentLocation agent_location_at(const std::string& path, uint64_t load_bias) {
  ElfObjectFile object = read_elf_object(path);
  AgentLocation agent;
  agent.path = path;
  agent.load_bias = load_bias;
  agent.registry = RemotePtr<polus_agent_registry>(load_bias + symbol_value(object, POLUS_AGENT_REGISTRY_SYMBOL));
  agent.load_patch = RemoteAddr(load_bias + symbol_value(object, POLUS_AGENT_LOAD_SYMBOL));
  agent.unload_patch = RemoteAddr(load_bias + symbol_value(object, POLUS_AGENT_UNLOAD_SYMBOL));
  // Write tracking is optional: an agent without it still serves code-only patches.
  if (symbol_value_or_zero(object, POLUS_AGENT_SYNC_BEGIN_SYMBOL)) {
    agent.sync_reserve = RemoteAddr(load_bias + symbol_value(object, POLUS_AGENT_SYNC_RESERVE_SYMBOL));
    agent.sync_begin = RemoteAddr(load_bias + symbol_value(object, POLUS_AGENT_SYNC_BEGIN_SYMBOL));
    if (uint64_t prepare = symbol_value_or_zero(object, POLUS_AGENT_SYNC_PREPARE_SYMBOL)) {
      agent.sync_prepare = RemoteAddr(load_bias + prepare);
    }
    agent.sync_end = RemoteAddr(load_bias + symbol_value(object, POLUS_AGENT_SYNC_END_SYMBOL));
  }
  if (uint64_t run_callback = symbol_value_or_zero(object, POLUS_AGENT_RUN_CALLBACK_SYMBOL)) {
    agent.run_callback = RemoteAddr(load_bias + run_callback);
  }
  if (uint64_t arm_traps = symbol_value_or_zero(object, POLUS_AGENT_ARM_TRAPS_SYMBOL)) {
    agent.arm_traps = RemoteAddr(load_bias + arm_traps);
  }
  return agent;
}

std::optional<AgentLocation> locate_agent(pid_t pid, const std::vector<MappedRegion>& maps) {
  for (const MappedRegion& region : maps) {
    if (region.file_offset != 0 || basename_of(region.path) != kAgentFileName) continue;
    // The agent is linked at 0, so the mapping of file offset 0 is its load bias.
    std::string path = "/proc/" + std::to_string(pid) + "/root" + region.path;
    try {
      AgentLocation agent = agent_location_at(path, region.start);
      agent.path = region.path;
      return agent;
    } catch (const Error&) {
      return agent_location_at(region.path, region.start);
    }
  }
  return std::nullopt;
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
