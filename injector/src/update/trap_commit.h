// update/trap_commit.h — writing a code patch's jumps without stopping every thread at once.
//
// The commit of a code patch used to stop every thread (a Pause) while it checked them and
// wrote the jumps; stopping 250 threads one after the other costs tens of milliseconds, during
// which every one of them stands still. A trap commit writes each jump the way the kernel
// changes live kernel code (text_poke_bp, arch/x86/kernel/alternative.c): int3, the rest, the
// first byte, with every processor serialised between the steps:
//
//   1. each site gets an entry in the registry (struct polus_trap_site) and the agent's SIGTRAP
//      handler is put in place for good (polus_agent_arm_traps, during the load); SIGTRAP is
//      unblocked in every thread, one at a time (a trap on a thread that blocks it would kill
//      the process);
//   2. an int3 over each jump's first byte. A thread that reaches the site now traps, and the
//      agent sends it to the version being replaced: nothing changes for the application yet,
//      and no thread can newly enter the bytes behind the int3;
//   3. every thread is checked one at a time (stopped, looked at, let go): none may be inside
//      those bytes (pc or stack word) nor on a trampoline slot this commit writes. A busy
//      thread is looked at again until the deadline; then the int3s are taken out and the
//      target is as it was;
//   4. the switch (registry.trap_switched_patch): from now on the traps send threads to the
//      new functions; then trampoline slots and the jumps' last four bytes; every thread
//      stopped once more, one at a time (serialised); the first bytes (e9); the record written
//      `committed`; the entries cleared.
//
// Serialising: text_poke_bp makes every CPU execute a serialising instruction between the steps
// (an IPI; in user space membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)). Here each
// thread goes through a ptrace-stop after the write instead: it enters the kernel and leaves it
// before it runs any more of its code — the guarantee the pause has always relied on. membarrier
// was tried first: its registration, needed once per process, waits for an RCU grace period
// (synchronize_rcu), which on a loaded 2-CPU machine held the borrowed thread in
// uninterruptible sleep beyond the 5 s limit of an injected call (the apply failed and the
// thread could not be put back until it woke).
//
// No thread is ever held while all others are: each is stopped for the time it takes to look
// at it. Killed at any instant, the target runs on: a leftover int3 has its entry, which the
// agent's handler keeps following, and the next command's recovery undoes the apply (the record
// says `applying` until every jump is whole).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "polus/engine.h"
#include "update/plan.h"
#include "update/registry.h"
#include "update/target.h"

namespace polus {

/// One redirect as the trap commit writes it.
struct TrapJump {
  const PlannedRedirect* plan = nullptr;  // busy_reason() and the record's jump writes
  uint64_t before = 0;  // where a thread at the int3 goes until the switch (the version replaced)
};

/// What a trap commit cost.
struct TrapCommitCost {
  uint64_t total_ns = 0;         // from the first check to the entries cleared
  uint64_t longest_hold_ns = 0;     // the longest time one thread was held: from asking it to stop to its resume
  uint64_t longest_stopped_ns = 0;  // the same from its stop seen (a lower bound: it ran, or waited
                                    // for a CPU, until it stopped)
  uint32_t threads_checked = 0;  // threads looked at (each pass counts)
  uint32_t rechecks = 0;         // threads looked at again because they were in the way
  std::vector<PausePart> parts;  // the commit, step by step
};

/// Thrown before any byte changed when the target cannot take a trap commit (the agent refused,
/// no room for the sites): the caller commits with a pause.
class TrapsUnavailable : public Error {
 public:
  explicit TrapsUnavailable(const std::string& message) : Error(ErrorCode::kInternal, message) {}
};

/// Whether `agent` can take `count` more trap sites now, and why not ("" if it can).
std::string trap_sites_unavailable(const AgentLocation& agent, const polus_agent_registry& registry, size_t count);

/// Puts the agent's SIGTRAP handler in place for good (polus_agent_arm_traps), on `thread` (the
/// load's). Throws TrapsUnavailable when it cannot.
void arm_trap_sites(BorrowedThread& thread, const AgentLocation& agent);

/// Runs a trap commit of `jumps` for patch `patch_id` (its record listed as `applying`, the
/// agent armed). `armer`, if not 0, is a thread the caller holds stopped (the load's borrower):
/// it is let go first. `on_switch` runs at the switch (from then on the patch must stay
/// loaded whatever happens), `on_written` right after the last jump byte (the record becomes
/// `committed` there). Throws Error(kUnsafeToPatch / kInterrupted) with the target's
/// code as it was when no moment came; TrapsUnavailable before any byte changed.
TrapCommitCost trap_commit(TargetContext& target, const AgentLocation& agent, uint64_t patch_id, pid_t armer,
                           const std::vector<TrapJump>& jumps, const std::function<void()>& on_switch,
                           const std::function<void()>& on_written);

/// Clears registry entries of trap sites that no longer hold an int3 (left by an operation cut
/// short after its last byte was written, or after it put the original bytes back).
void clear_stale_trap_sites(ProcessMemory& memory, const AgentLocation& agent);

}  // namespace polus
