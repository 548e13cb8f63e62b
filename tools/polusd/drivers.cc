// The updates polusd owns (drivers.h): one thread per process, each running finish_update in
// rounds, like `polusd PID` did for one process.
#include "drivers.h"

#include "run.h"
#include "scope.h"

#include <signal.h>
#include <string.h>
#include <time.h>

#include <algorithm>

#include <spdlog/spdlog.h>

#include "polus/engine.h"
#include "polus/error.h"
#include "polus/stop_request.h"

namespace polusd {

Drivers::Drivers(std::chrono::milliseconds interval, std::chrono::milliseconds round) : interval_(interval), round_(round) {}

Drivers::~Drivers() {
  std::map<pid_t, std::thread> threads;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    threads.swap(threads_);
  }
  // They stop by themselves: a stop signal is pending for the whole process (main's loop ends
  // only then), and the engine and the rounds below ask for it.
  for (auto& [pid, thread] : threads) thread.join();
}

void Drivers::adopt(pid_t pid, const polus::EngineOptions& options) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (pid_t done : finished_) {
    auto it = threads_.find(done);
    if (it != threads_.end()) {
      it->second.join();
      threads_.erase(it);
    }
  }
  finished_.clear();
  if (threads_.count(pid)) return;
  spdlog::info("polusd: driving the update in flight in process {}", pid);
  threads_.emplace(pid, std::thread(&Drivers::drive, this, pid, options));
}

std::vector<pid_t> Drivers::rediscover() {
  std::vector<pid_t> adopted;
  for (pid_t pid : polus::patched_processes()) {
    if (!in_scope(pid)) continue;
    try {
      polus::ProcessStatus status = polus::read_status(pid);
      bool in_flight = std::any_of(status.patches.begin(), status.patches.end(), [](const polus::PatchInfo& p) {
        return p.state == "syncing" || p.state == "applying" || p.state == "rolling-back" ||
               p.state == "interrupted-apply" || p.state == "interrupted-rollback";
      });
      if (!in_flight) continue;
      // As polusctl's requests are: the configuration file, $POLUS_AUDIT_LOG, audited.
      polus::EngineOptions options = polusctl::engine_options(polusctl::Json{{"engine", polusctl::Json::object()}});
      options.agent_path = status.agent_path;
      adopt(pid, options);
      adopted.push_back(pid);
    } catch (const std::exception& e) {
      spdlog::warn("polusd: cannot read the registry of process {}: {}", pid, e.what());
    }
  }
  return adopted;
}

std::vector<pid_t> Drivers::active() {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<pid_t> pids;
  for (const auto& [pid, thread] : threads_) {
    if (std::find(finished_.begin(), finished_.end(), pid) == finished_.end()) pids.push_back(pid);
  }
  return pids;
}

void Drivers::drive(pid_t pid, polus::EngineOptions options) {
  options.sync_timeout = round_;
  options.on_sync_progress = nullptr;  // the client that asked is gone: nobody to show it to
  options.audit.skip_idle_rounds = true;  // a round that changed nothing is not an audit record
  for (;;) {
    if (polus::stop_requested()) break;  // the update stays recorded as syncing
    try {
      // Also completes or undoes an operation that was cut short (finish_update recovers first).
      polus::PatchInfo info = polus::finish_update(pid, options);
      if (info.state != "syncing") {
        spdlog::info("polusd: the {} of {} in process {} is {}", info.direction, info.name, pid, info.state);
        break;
      }
    } catch (const polus::Error& e) {
      if (e.code() == polus::ErrorCode::kNothingToRollBack) break;  // nothing (more) in flight
      if (e.code() == polus::ErrorCode::kNoSuchProcess || e.code() == polus::ErrorCode::kTargetDied) break;
      if (e.code() == polus::ErrorCode::kPermissionDenied || e.code() == polus::ErrorCode::kPatchMalformed ||
          e.code() == polus::ErrorCode::kAuditFailed) {
        spdlog::error("polusd: cannot drive the update of process {}: {}", pid, e.what());
        break;  // retrying cannot help; `polusctl finish` with the right options can
      }
      if (e.code() == polus::ErrorCode::kLoadFailed) {
        // A sync function faulted and the update was abandoned; an abandon left syncing is
        // completed by the next round.
        spdlog::error("polusd: process {}: {}", pid, e.what());
      } else {
        // Busy (a command holds the process) or transient: next round.
        spdlog::warn("polusd: process {}: {}", pid, e.what());
      }
    } catch (const std::exception& e) {
      spdlog::error("polusd: process {}: internal error: {}", pid, e.what());
      break;
    }
    // The interval, cut short by a stop signal (blocked in every thread: it stays pending).
    const auto until = std::chrono::steady_clock::now() + interval_;
    while (std::chrono::steady_clock::now() < until && !polus::stop_requested()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  std::lock_guard<std::mutex> lock(mutex_);
  finished_.push_back(pid);
}

}  // namespace polusd
