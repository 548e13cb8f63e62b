// Planning an apply from files and the target's memory, before anything is stopped or
// changed: build-ids, every redirect's prologue, the registry's room (update/plan.h).
#include "update/plan.h"

#include <algorithm>

#include "common/format.h"
#include "polus/error.h"
#include "update/redirects.h"

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
      plan.analysis = analyze_function_entry(target.symbols(), target.memory(), plan.old_symbol);
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
  return jump_busy_reason(plan.analysis, name, thread);
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
