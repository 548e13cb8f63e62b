// tools/polusd/sticky.h — patches that stick: polusd applies the patches `apply --persist`
// stored for a build (tools/polusctl/store.h) to every process of that build — those running
// when polusd starts, and each new one the moment it execs, told by the kernel's process
// events connector (netlink, PROC_EVENT_EXEC), not found by polling — and each process forked
// from one of that build (PROC_EVENT_FORK: nginx's workers never exec).
#pragma once

#include <sys/types.h>

#include <map>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "drivers.h"
#include "thread_set.h"

namespace polusd {

class Sticky {
 public:
  /// Watches process starts for the patches stored in `store`; updates they leave syncing go
  /// to `drivers`. Without the connector (no CAP_NET_ADMIN, no CONFIG_PROC_EVENTS) it says so
  /// and only applies stored patches at start.
  Sticky(std::string store, Drivers& drivers);
  /// Stops watching (a stop signal is pending: the threads end at their next look).
  ~Sticky();

  /// Applies stored patches to every running process of a stored build that lacks them.
  void apply_to_running();

 private:
  void watch();
  void apply_to(pid_t pid, bool just_started);
  /// The build-id of `pid`'s executable, "" if unreadable; cached per file (watch thread only).
  std::string build_of(pid_t pid);

  std::string store_;
  Drivers& drivers_;
  int fd_ = -1;
  /// One thread per process being given its stored patches, joined as they finish (a
  /// fork-per-connection server of a stored build starts one per connection).
  ThreadSet workers_;
  std::thread watcher_;
  std::map<std::tuple<dev_t, ino_t, time_t, long>, std::string> build_ids_;
};

}  // namespace polusd
