// The engine's operations as callers see them (polus/engine.h): who asks is checked first
// (update/access_policy.h), and every apply, rollback and finish, refusals included, is
// recorded in the audit trail (update/audit.h).
#include <unistd.h>

#include <functional>
#include <optional>
#include <string>

#include "polus/engine.h"
#include "polus/error.h"
#include "update/access_policy.h"
#include "update/audit.h"
#include "update/engine_internal.h"

namespace polus {

namespace {

PatchInfo audited(const EngineOptions& options, const char* action, pid_t pid, Action checked,
                  const std::function<PatchInfo(AuditEvent&)>& operation) {
  AuditTrail audit(options.audit, options.caller, action, pid);  // before anything is done
  try {
    require_access(options.caller, pid, checked);
    PatchInfo info = operation(audit.event());
    audit.succeeded(info);
    return info;
  } catch (const std::exception& e) {
    audit.failed(e);
    throw;
  }
}

}  // namespace

std::string access_refusal(const Caller& caller, pid_t pid, const std::string& action) {
  if (caller.uid == 0) return "";
  std::optional<ProcessCredentials> target = read_process_credentials(pid);
  if (!target) return "";
  const Action checked = action == "rollback" ? Action::kRollback
                         : action == "finish" ? Action::kFinish
                         : action == "status" ? Action::kStatus
                                              : Action::kApply;
  return access_refusal(caller, pid, *target, checked);
}

Caller Caller::self() { return Caller{::getuid(), ::getgid(), ::getpid()}; }

PatchInfo apply_patch(pid_t pid, const std::string& patch_path, const EngineOptions& options) {
  return audited(options, "apply", pid, Action::kApply,
                 [&](AuditEvent& audit) { return run_apply(pid, patch_path, options, audit); });
}

PatchInfo rollback_patch(pid_t pid, const EngineOptions& options) {
  return audited(options, "rollback", pid, Action::kRollback,
                 [&](AuditEvent& audit) { return run_rollback(pid, options, audit); });
}

PatchInfo rollback_patch(pid_t pid, uint64_t patch_id, const EngineOptions& options) {
  return audited(options, "rollback", pid, Action::kRollback,
                 [&](AuditEvent& audit) { return run_rollback(pid, patch_id, options, audit); });
}

PatchInfo finish_update(pid_t pid, const EngineOptions& options) {
  return audited(options, "finish", pid, Action::kFinish,
                 [&](AuditEvent& audit) { return run_finish(pid, options, audit); });
}

}  // namespace polus
