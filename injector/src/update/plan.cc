// Planning an apply from files and the target's memory, before anything is stopped or
// changed: build-ids, every redirect's prologue, the registry's room (update/plan.h).
#include "update/plan.h"

#include <algorithm>

#include "common/format.h"
#include "polus/error.h"

namespace polus {

void check_build_ids(const PatchDescription& patch, const ProcessSymbols& symbols) {
  for (const PatchBuildId& want : patch.build_ids) {
    const LoadedObject* object = want.object.empty() ? &symbols.main_executable() : symbols.find_object(want.object);
    if (!object) {
      throw Error(ErrorCode::kBuildMismatch, "patch " + patch.name + " was made for a process that maps '" +
                                                 want.object + "', which process does not; wrong target?");
    }
    if (object->build_id_hex != want.hex) {
      throw Error(ErrorCode::kBuildMismatch,
                  "patch " + patch.name + " was made for " + (want.object.empty() ? "an executable" : want.object) +
                      " with build-id " + want.hex + ", but the process runs " + object->path + " with build-id " +
                      (object->build_id_hex.empty() ? "(none)" : object->build_id_hex) +
                      "; use the patch built for this version");
    }
  }
}

/// The newest active redirect of every already-patched function.
std::map<uint64_t, const polus_redirect_record*> active_redirects(const RegistrySnapshot& registry) {
  std::map<uint64_t, const polus_redirect_record*> active;
  for (const PatchRecordView& patch : registry.patches) {
    if (patch.header.state != POLUS_STATE_COMMITTED && patch.header.state != POLUS_STATE_SYNCING) continue;
    for (const polus_redirect_record& r : patch.redirects) active[r.old_function] = &r;
  }
  return active;
}

uint64_t next_symbol_after(const ProcessSymbols& symbols, const Symbol& symbol) {
  uint64_t next = 0;
  for (const LoadedObject& object : symbols.objects()) {
    if (object.path != symbol.object_path) continue;
    for (const Symbol& s : symbols.symbols_of(object)) {
      uint64_t a = s.address.address();
      if (a > symbol.address.address() && (next == 0 || a < next)) next = a;
    }
  }
  return next;
}

/// Plans every redirect from the file and the target's memory, without stopping anything.
std::vector<PlannedRedirect> plan_redirects(const PatchDescription& patch, TargetContext& target,
                                            const std::map<uint64_t, const polus_redirect_record*>& active) {
  std::vector<PlannedRedirect> plans;
  for (const auto& [old_index, new_index] : patch.function_replacements()) {
    PlannedRedirect plan;
    plan.old_symbol = target.symbols().resolve(patch.functions[old_index].name, SymbolKind::kFunction);
    plan.new_name = patch.functions[new_index].name;
    plan.new_link_address = patch.functions[new_index].address;
    for (const PlannedRedirect& other : plans) {
      if (other.old_symbol.address == plan.old_symbol.address) {
        throw Error(ErrorCode::kPatchMalformed, "patch " + patch.name + " replaces " + plan.old_symbol.qualified_name() +
                                                    " twice (under two names)");
      }
    }
    if (auto it = active.find(plan.old_symbol.address.address()); it != active.end()) {
      plan.stacked_on = it->second;
    } else {
      uint64_t address = plan.old_symbol.address.address();
      std::vector<uint8_t> code(plan.old_symbol.size + 16);
      code.resize(target.memory().read_bytes_fallible(RemoteAddr(address), code.data(), code.size()));
      plan.analysis = analyze_prologue(code, address, plan.old_symbol.size,
                                       next_symbol_after(target.symbols(), plan.old_symbol),
                                       plan.old_symbol.qualified_name());
    }
    plans.push_back(std::move(plan));
  }
  return plans;
}

/// Whether the commit writes a trampoline slot of its own for `plan` (not one it shares with
/// the patch it stacks on).
bool writes_new_slot(const PlannedRedirect& plan) {
  return plan.record.trampoline && !(plan.record.flags & POLUS_REDIRECT_REUSED_TRAMPOLINE);
}

/// Why a thread keeps us from writing a redirect's jump now, or "" if nothing does.
std::string busy_reason(const PlannedRedirect& plan, const ThreadSnapshot& thread) {
  const std::string name = plan.old_symbol.qualified_name();
  const std::string who = "thread " + std::to_string(thread.tid);
  if (writes_new_slot(plan)) {
    // A slot freed by a rollback can be handed out again. A thread preempted on it (it took
    // the old jump, not yet the slot's own) would otherwise continue into this patch's
    // function instead of the one it called.
    uint64_t slot = plan.record.trampoline;
    if (thread_touches(thread, {AddressRange{slot, slot + kTrampolineSlotSize, "a trampoline"}})) {
      return who + " is on the trampoline slot " + hex(slot) + " this patch reuses for " + name;
    }
  }
  if (plan.stacked_on) return "";  // only a jump target changes: any pc is fine
  const PrologueAnalysis& a = plan.analysis;
  if (std::find(a.interior_boundaries.begin(), a.interior_boundaries.end(), thread.pc) != a.interior_boundaries.end()) {
    return who + " is executing the first bytes of " + name;
  }
  if (thread_has_address(thread, a.interior_boundaries)) {
    return who + " has the first bytes of " + name + " on its stack (a return address or an interrupted pc)";
  }
  if (a.requires_inactive_function) {
    AddressRange whole{a.function, a.function + std::max<uint64_t>(a.function_size, 1), name};
    if (thread_touches(thread, {whole})) return who + " is inside " + name + " and " + a.inactive_reason;
  }
  return "";
}

void check_registry_accepts_patch(const RegistrySnapshot& registry, pid_t pid) {
  if (registry.registry.patch_count >= POLUS_MAX_PATCHES) {
    throw Error(ErrorCode::kUnsafeToPatch, "process " + std::to_string(pid) + " already carries " +
                                               std::to_string(POLUS_MAX_PATCHES) + " patches; roll some back first");
  }
  const bool any_syncing = std::any_of(registry.patches.begin(), registry.patches.end(),
                                       [](const PatchRecordView& p) { return p.header.state == POLUS_STATE_SYNCING; });
  if (registry.registry.sync.active && !any_syncing) {
    // Its table would be replaced under the agent's running fault handler.
    throw Error(ErrorCode::kUnsafeToPatch, "process " + std::to_string(pid) +
                                               " has write tracking on, but no recorded update owns it (left by "
                                               "a Polus older than this one?); the target is unchanged");
  }
  for (const PatchRecordView& p : registry.patches) {
    if (p.header.state == POLUS_STATE_SYNCING) {
      throw Error(ErrorCode::kUnsafeToPatch, "patch " + std::string(p.header.name) + " (id " +
                                                 std::to_string(p.header.id) +
                                                 ") is still syncing its data update; run `polusctl finish " +
                                                 std::to_string(pid) + "` or roll it back first");
    }
  }
}

}  // namespace polus
