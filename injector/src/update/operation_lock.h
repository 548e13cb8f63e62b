// update/operation_lock.h — one Polus operation per target process at a time, host-wide.
//
// ptrace lets one tracer in at a time, but an update's sync phase detaches between its
// inspections (the target runs untraced while it syncs), so ptrace alone does not keep a
// second operation out: polusd, finding a record left `applying` while no lock was held, would
// take it for an interrupted operation and "recover" it under the feet of the polusctl doing it.
#pragma once

#include <sys/types.h>

#include <string>

#include "common/clock.h"

namespace polus {

/// An flock(2) on /run/lock/polus/PID-STARTTIME (the start time makes a reused pid another
/// file). The kernel drops it when its holder dies, SIGKILL included, so a killed polusctl never
/// leaves a process locked. The directory is shared by every user (sticky, like /tmp), so an
/// operation by a user on its own process and one by root exclude each other; a lock file is
/// owned by root or by the target's owner, mode 0600, so no third user can open it to hold it.
class OperationLock {
 public:
  /// Waits until `deadline` for the lock; throws Error(kTimeout) naming the holder.
  OperationLock(pid_t pid, Clock::time_point deadline);
  ~OperationLock();
  /// Whether a Polus operation on `pid` holds the lock right now (a record left applying or
  /// rolling back without one was interrupted).
  static bool busy(pid_t pid);
  OperationLock(const OperationLock&) = delete;
  OperationLock& operator=(const OperationLock&) = delete;

 private:
  int fd_ = -1;
  std::string path_;
};

/// Where the locks live (/run/lock: the FHS place for lock files).
inline constexpr const char* kOperationLockDirectory = "/run/lock/polus";

}  // namespace polus
