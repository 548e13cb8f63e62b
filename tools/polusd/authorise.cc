// Who may ask polusd to do what (authorise.h): the engine's caller policy, for the client
// SO_PEERCRED names. The engine checks it again in the operation itself (the caller is passed
// on in EngineOptions::caller), so a process that changes in between is still refused.
#include "authorise.h"

#include <unistd.h>

#include "polus/engine.h"

namespace polusd {

std::string may_act(const Caller& caller, pid_t target_pid, const std::string& command) {
  if (target_pid == 0) {
    if (caller.uid == 0 || caller.uid == geteuid()) return "";
    return "polusd does not let uid " + std::to_string(caller.uid) + " " + command + " without a process";
  }
  return polus::access_refusal(polus::Caller{caller.uid, caller.gid, caller.pid}, target_pid, command);
}

}  // namespace polusd
