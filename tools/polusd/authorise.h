// tools/polusd/authorise.h — who may ask polusd to do what: the one place for the policy.
#pragma once

#include <sys/types.h>

#include <string>

namespace polusd {

/// The process at the other end of a connection, from SO_PEERCRED (the kernel's word, not the
/// client's).
struct Caller {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
};

/// Whether `caller` may run `command` ("apply", "rollback", "finish", ...) on process
/// `target_pid` (0 for a command without a target). The policy today: root may do everything,
/// and so may the user polusd itself runs as (an on-demand polusd of an unprivileged user
/// serves that user with that user's own rights); nobody else may do anything.
bool may_act(const Caller& caller, pid_t target_pid, const std::string& command);

}  // namespace polusd
