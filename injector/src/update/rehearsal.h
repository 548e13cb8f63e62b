// update/rehearsal.h — a patch's load tried first in a copy of the target.
//
// Loading runs the patch's code in the target: its constructors (inside dlopen) and its
// pre-update callbacks. A constructor that aborts, faults, exits or hangs, a file that
// passed validation but trips an ld.so assertion, a system call the target's seccomp filter
// kills: each would take the server down, or leave the dynamic loader's lock held for good.
// So the load is rehearsed first in a copy of the process, made with clone(2) at a moment
// when no thread is inside malloc or the dynamic loader (the copy has only the thread that
// made it, so a lock another thread held would never be released there). The copy serves
// nothing: it is stopped from its first instruction, runs only our calls, is killed and
// reaped, and the target sees nothing of it — no exit signal (SIGCHLD) is asked for, and
// waitpid() without __WALL never reports a child like it.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "update/patch_file.h"
#include "update/registry.h"
#include "update/target.h"

namespace polus {

/// Loads the agent (`agent_image`, unless `agent` says it is there) and `patch` into a copy of
/// the target, each from a sealed memfd (the patch's named `memfd_name`) holding the validated
/// bytes (update/patch_memfd.h),
/// and runs the patch's pre-update callbacks there (code-only patches). Throws
/// Error(kLoadFailed) saying what happened in the copy; the target itself is unchanged
/// (but for the scratch arena, which the copy needs and the caller unmaps on failure).
/// `target` must be seized. Returns what it cost.
struct RehearsalCost {
  uint64_t total_ns = 0;  // from the first borrow to the copy reaped
  uint64_t pause_ns = 0;  // every thread of the target stopped while the copy was made:
                          // grows with the target's page tables (clone copies them)
};
/// `slots`: (link-time address in the patch, value) of every `resolved` slot and import, as the
/// real load fills them before any callback runs — here with the original entries, since the
/// copy has no redirects.
RehearsalCost rehearse_load(TargetContext& target, const PatchDescription& patch, const AgentImage& agent_image,
                            const std::optional<AgentLocation>& agent, const std::string& memfd_name,
                            const std::vector<std::pair<uint64_t, uint64_t>>& slots = {});

}  // namespace polus
