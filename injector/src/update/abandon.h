// update/abandon.h — abandoning a data update whose patch code faulted in the target.
//
// A patch's sync functions run in two places. The engine calls some itself on a borrowed
// thread (the initial copy when an apply or a rollback starts): BorrowedThread catches a fault
// there (CodeFault), the counterpart's bytes are put back and the operation stops before any
// jump is written or taken out (SyncFunctionFault). All the others run inside the agent's
// fault handler, on whatever thread wrote a tracked item, mostly while no Polus process is
// attached: the agent's fence (agent/src/sync_fence.h) catches the fault, puts the counterpart
// back, records the fault in registry.sync.fault and never runs that function again; the
// thread goes on. The engine sees the record at its next inspection (drive_sync_to_end), or
// the next command sees it first, and abandons the update here: the target goes back to where
// it was before the update began, by running the same update protocol the other way.
//
// Both ways end alike: Error(kLoadFailed) naming the function, the fault and what the target
// was left with, and registry.last_failure for `status`.
#pragma once

#include <optional>
#include <string>

#include "common/clock.h"
#include "polus/agent_abi.h"
#include "polus/engine.h"
#include "polus/error.h"
#include "update/patch_file.h"
#include "update/registry.h"
#include "update/target.h"

namespace polus {

/// A sync function faulted on a borrowed thread (initialize_counterparts), as the agent would
/// have recorded it; abandon_before_start names it.
class SyncFunctionFault : public Error {
 public:
  explicit SyncFunctionFault(const polus_sync_fault& fault)
      : Error(ErrorCode::kLoadFailed, "a sync function of the patch faulted"), fault_(fault) {}
  const polus_sync_fault& fault() const { return fault_; }

 private:
  polus_sync_fault fault_;
};

/// After initialize_counterparts threw `fault` (apply or rollback `direction`, nothing changed
/// yet but the counterpart, which it put back): keeps the failure for status and returns the
/// Error to throw, which names the function and says the target is unchanged.
Error abandon_before_start(TargetContext& target, const AgentLocation& agent, const polus_patch_record& patch,
                           uint32_t direction, const SyncFunctionFault& fault);

/// The agent's write-tracking state (registry.sync), read from the target.
polus_sync_state read_sync_state(ProcessMemory& memory, const AgentLocation& agent);

/// Whether `sync` records a sync function's fault that no abandon has taken on yet.
inline bool fault_pending(const polus_sync_state& sync) { return sync.fault.function != 0 && !sync.abandoning; }

/// "the sync function copy_to_new of patch P (old -> new, after a write to requests_count)
/// faulted: SIGSEGV at address 0x0 (pc copy_to_new+0x1c), thread 1234". Names come from
/// `symbols` (the patch loaded in the target), else addresses.
std::string describe_sync_fault(const polus_sync_fault& fault, const ProcessSymbols& symbols, const std::string& patch);

/// "SIGSEGV" for 11.
std::string signal_name(int signal);

/// Keeps the failure in the target's registry for `status` (registry.last_failure).
void write_last_failure(ProcessMemory& memory, const AgentLocation& agent, const polus_patch_record& patch,
                        uint32_t direction, int signal, const std::string& reason);

/// What the target is left with after abandon_update, and the whole story for the operator.
struct Abandoned {
  PatchInfo info;
  std::string message;
};

/// Abandons the data update of `record` (syncing, in either direction) after the agent recorded
/// a sync function's fault. In one pause: the intent (sync.abandoning, last_failure, the record
/// in the reversed direction), and the jumps taken out (an apply is abandoned: the target goes
/// back to its old code) or written again (a rollback is abandoned: the patch stays applied).
/// Then the update syncs the other way, the faulted function disabled and no patch callback
/// run, until no thread runs the code it retires (or `sync_timeout`: it stays recorded,
/// `finish` completes it); an abandoned apply unloads the patch.
Abandoned abandon_update(TargetContext& target, const AgentLocation& agent, PatchRecordView& record,
                         const PatchDescription& patch, Clock::duration sync_timeout);

}  // namespace polus
