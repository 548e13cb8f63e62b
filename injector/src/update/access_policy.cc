#include "update/access_policy.h"

#include "common/users.h"
#include "polus/error.h"

namespace polus {

namespace {

std::string ids(const uid_t (&values)[4]) {
  return std::to_string(values[0]) + ", " + std::to_string(values[1]) + ", " + std::to_string(values[2]) + ", " +
         std::to_string(values[3]);
}

/// What the action does, for "only root may ..." ("apply patches") and "... it" ("roll back").
std::string on_process(Action action) {
  switch (action) {
    case Action::kApply: return "apply patches there";
    case Action::kRollback: return "roll back patches there";
    case Action::kFinish: return "finish updates there";
    case Action::kStatus: return "read what is applied there";
  }
  return "act there";
}

std::string on_patch(Action action) {
  switch (action) {
    case Action::kApply: return "undo it";  // completing an interrupted apply undoes it
    case Action::kRollback: return "roll it back";
    case Action::kFinish: return "finish its update";
    case Action::kStatus: return "see its details";
  }
  return "act on it";
}

}  // namespace

const char* action_name(Action action) {
  switch (action) {
    case Action::kApply: return "apply";
    case Action::kRollback: return "rollback";
    case Action::kFinish: return "finish";
    case Action::kStatus: return "status";
  }
  return "act";
}

bool may_touch_patch(const Caller& caller, uid_t applied_by) { return caller.uid == 0 || applied_by == caller.uid; }

std::string access_refusal(const Caller& caller, pid_t pid, const ProcessCredentials& target, Action action,
                           const std::optional<PatchConcerned>& patch) {
  if (caller.uid == 0) return "";
  const std::string process = "process " + std::to_string(pid);
  const std::string you = "you are " + describe_uid(caller.uid);
  const std::string only_root = "; only root may " + on_process(action);
  const uid_t* u = target.uid;
  if (u[0] != u[1] || u[0] != u[2] || u[0] != u[3]) {
    return process + " has changed user ids (real, effective, saved, filesystem: " + ids(target.uid) +
           "), as a setuid program does" + only_root;
  }
  if (u[0] != caller.uid) return process + " runs as " + describe_uid(u[0]) + ", and " + you + only_root;
  const gid_t* g = target.gid;
  if (g[0] != g[1] || g[0] != g[2] || g[0] != g[3]) {
    return process + " has changed group ids (real, effective, saved, filesystem: " + ids(target.gid) +
           "), as a setgid program does" + only_root;
  }
  if (g[0] != caller.gid) {
    return process + " runs with group " + std::to_string(g[0]) + ", and your group is " +
           std::to_string(caller.gid) + only_root;
  }
  if (!target.dumpable) {
    return process + " is not dumpable (it turned PR_SET_DUMPABLE off, or changed credentials)" + only_root;
  }
  if (patch && !may_touch_patch(caller, patch->applied_by)) {
    return "patch " + patch->name + " (id " + std::to_string(patch->id) + ") in " + process + " was applied by " +
           describe_uid(patch->applied_by) + ", and " + you + ": only that user or root may " + on_patch(action);
  }
  return "";
}

void require_access(const Caller& caller, pid_t pid, Action action, const std::optional<PatchConcerned>& patch) {
  if (caller.uid == 0) return;
  std::optional<ProcessCredentials> creds = read_process_credentials(pid);
  if (!creds) throw Error(ErrorCode::kNoSuchProcess, "process " + std::to_string(pid) + " does not exist");
  std::string refusal = access_refusal(caller, pid, *creds, action, patch);
  if (!refusal.empty()) throw Error(ErrorCode::kPermissionDenied, std::string(action_name(action)) + " refused: " + refusal);
}

}  // namespace polus
