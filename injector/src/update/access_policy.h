// update/access_policy.h — who may act on which process, and on which patch.
//
// ptrace already decides who can patch a process at all. Polus adds one thing the kernel
// cannot know, and states the kernel's rule itself so that a daemon running as root (which
// the kernel lets do anything) applies it for the client it serves (SO_PEERCRED):
//   - root may act on any process and any patch;
//   - any other caller only on a process whose real, effective, saved and filesystem uids
//     are all the caller's uid and whose gids are all the caller's gid (not changed by a
//     setuid or setgid program: the kernel's own ptrace rule), and that is dumpable;
//   - and never on a patch someone else applied (in practice: root, applying to a user's
//     process): rolling it back, finishing it, or reading its details in status.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>

#include "polus/options.h"
#include "process/proc_files.h"

namespace polus {

enum class Action { kApply, kRollback, kFinish, kStatus };

/// "apply", "rollback", "finish", "status".
const char* action_name(Action action);

/// The patch an action concerns: the one rolled back or finished, or a status entry.
struct PatchConcerned {
  uint64_t id = 0;
  std::string name;
  uid_t applied_by = 0;
};

/// Why `caller` may not do `action` on process `pid` (running with `target`'s credentials)
/// and on `patch`, or "" if it may. A sentence naming who and what, for the operator.
std::string access_refusal(const Caller& caller, pid_t pid, const ProcessCredentials& target, Action action,
                           const std::optional<PatchConcerned>& patch = std::nullopt);

/// Whether `caller` may see the details of, or act on, a patch `applied_by` applied.
bool may_touch_patch(const Caller& caller, uid_t applied_by);

/// access_refusal with the credentials read now; throws Error(kPermissionDenied) with its
/// sentence, or Error(kNoSuchProcess). Does nothing when the caller is root.
void require_access(const Caller& caller, pid_t pid, Action action,
                    const std::optional<PatchConcerned>& patch = std::nullopt);

}  // namespace polus
