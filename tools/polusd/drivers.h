// tools/polusd/drivers.h — the updates polusd owns: each process with a data update in flight
// (syncing) or an operation cut short gets a thread that drives it to its end in rounds.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "polus/options.h"

namespace polusd {

class Drivers {
 public:
  /// `interval`: the time between two rounds of one update; each round waits up to
  /// `round` for the update to end (holding the target's operation lock only that long).
  Drivers(std::chrono::milliseconds interval, std::chrono::milliseconds round);
  /// Asks every driver to stop at its next safe point and waits for them.
  ~Drivers();

  /// Makes sure an update of `pid` in flight is driven to its end, with `options` (the trust
  /// and agent options of the request that left it): starts a driver unless one runs.
  void adopt(pid_t pid, const polus::EngineOptions& options);

  /// Finds every process with the Polus agent loaded and adopts those whose registry shows an
  /// update syncing or an operation cut short (polusd's start: nothing is lost across a kill).
  /// Returns the pids adopted.
  std::vector<pid_t> rediscover();

  /// The pids driven now.
  std::vector<pid_t> active();

 private:
  void drive(pid_t pid, polus::EngineOptions options);

  std::chrono::milliseconds interval_;
  std::chrono::milliseconds round_;
  std::mutex mutex_;
  std::map<pid_t, std::thread> threads_;
  std::vector<pid_t> finished_;  // threads to join
};

}  // namespace polusd
