// tools/polusd/authorise.h — who may ask polusd to do what: the one place polusd decides it.
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

/// Why `caller` may not run `command` ("apply", "rollback", "finish", ...) on process
/// `target_pid`, or "" if it may. With a target: the engine's caller policy (polus::
/// access_refusal: root anything; others only their own unchanged, dumpable processes).
/// Without one (0): root and the user polusd runs as only.
std::string may_act(const Caller& caller, pid_t target_pid, const std::string& command);

}  // namespace polusd
