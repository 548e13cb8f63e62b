// update/plan.h — what apply decides before it touches the target (shared with check).
//
// Everything here reads files and the target's memory (/proc/PID/mem) only: the plan of
// each redirect (prologue analysis, or the older patch's redirect it stacks on), the
// build-id checks, and whether the registry takes one more patch now.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "binary/prologue.h"
#include "binary/stack_scan.h"
#include "binary/symbols.h"
#include "update/patch_file.h"
#include "update/registry.h"
#include "update/target.h"

namespace polus {

/// One function to redirect, as planned before the target is touched.
struct PlannedRedirect {
  Symbol old_symbol;
  std::string new_name;
  uint64_t new_link_address = 0;  // in the patch file
  PrologueAnalysis analysis;      // fresh redirects only
  const polus_redirect_record* stacked_on = nullptr;  // the active redirect of an older patch
  polus_redirect_record record{};  // filled while loading
};

/// Throws Error(kBuildMismatch) unless every build-id the patch names matches the object the
/// process maps.
void check_build_ids(const PatchDescription& patch, const ProcessSymbols& symbols);

/// The newest active redirect of every already-patched function, by old function address.
std::map<uint64_t, const polus_redirect_record*> active_redirects(const RegistrySnapshot& registry);

/// Plans every redirect from the file and the target's memory, without stopping anything.
/// Throws kSymbolNotFound / kSymbolAmbiguous / kUnsafeToPatch (a function too short) /
/// kPatchMalformed (a function replaced twice).
std::vector<PlannedRedirect> plan_redirects(const PatchDescription& patch, TargetContext& target,
                                            const std::map<uint64_t, const polus_redirect_record*>& active);

/// Whether the commit writes a trampoline slot of its own for `plan` (not one it shares with
/// the patch it stacks on).
bool writes_new_slot(const PlannedRedirect& plan);

/// Why `thread` keeps us from writing the jump of `plan` now, or "" if nothing does.
std::string busy_reason(const PlannedRedirect& plan, const ThreadSnapshot& thread);

/// Throws Error(kUnsafeToPatch) if process `pid`'s registry cannot take a patch now: 256
/// patches already, or a data update still syncing (or write tracking no record owns).
void check_registry_accepts_patch(const RegistrySnapshot& registry, pid_t pid);

}  // namespace polus
