// update/engine_internal.h — pieces apply, rollback and finish share (internal to the engine).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "common/clock.h"
#include "polus/engine.h"
#include "update/abandon.h"
#include "update/registry.h"
#include "update/target.h"

namespace polus {

struct AuditEvent;  // update/audit.h

/// The operations behind apply_patch, rollback_patch and finish_update (update/operations.cc
/// wraps them in the caller check and the audit record); each names the patch it concerns
/// in `audit` as soon as it knows it.
PatchInfo run_apply(pid_t pid, const std::string& patch_path, const EngineOptions& options, AuditEvent& audit);
PatchInfo run_rollback(pid_t pid, const EngineOptions& options, AuditEvent& audit);
/// Rolls back the applied patch with id `patch_id` (not necessarily the newest).
PatchInfo run_rollback(pid_t pid, uint64_t patch_id, const EngineOptions& options, AuditEvent& audit);
PatchInfo run_finish(pid_t pid, const EngineOptions& options, AuditEvent& audit);

/// The operator's view of a patch record (item details are added by status only).
PatchInfo info_from_record(const PatchRecordView& record);

/// The agent, its registry and the load bias of a loaded patch, read from the target.
uint64_t patch_load_bias(ProcessMemory& memory, const polus_patch_record& header);

/// Completes or undoes an operation on `target` that was cut short (a record left `applying`
/// is undone, one left `rolling-back` is completed); call it holding the operation lock.
/// Returns what it did, or nullopt when nothing was interrupted.
std::optional<PatchInfo> recover_interrupted(TargetContext& target, const EngineOptions& options);

/// Abandons the update in flight if one of its sync functions faulted while no Polus process
/// drove it (update/abandon.h); call it holding the operation lock, after recover_interrupted.
/// Returns what it did, or nullopt when no fault waits.
std::optional<Abandoned> abandon_if_faulted(TargetContext& target, const EngineOptions& options);

/// After a rollback has taken every jump out: unloads the patch when no thread runs its code
/// (checked now, with every thread stopped), frees its record and drops it from the registry.
void retire_patch(TargetContext& target, const AgentLocation& agent, const PatchRecordView& record);

}  // namespace polus
