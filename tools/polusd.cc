// polusd — hosts the engine for updates that outlive one polusctl call.
//
//   polusd PID [--interval MS] [--give-up-after S]
//
// Watches process PID and completes its in-flight data update (an apply or rollback left
// `syncing` because a thread kept running code it retires): every interval it runs one
// round of finish_update, then exits 0 once nothing is in flight, 3 if the process is gone.
// Between rounds it holds no ptrace attachment, so `polusctl status` and `rollback` work.
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <string>
#include <thread>

#include <spdlog/spdlog.h>

#include "polus/engine.h"
#include "polus/error.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: polusd PID [--interval MS] [--give-up-after S] [--agent PATH]\n";
    return 2;
  }
  pid_t pid = static_cast<pid_t>(std::atol(argv[1]));
  polus::EngineOptions options;
  if (const char* agent = std::getenv("POLUS_AGENT")) options.agent_path = agent;
  options.sync_timeout = std::chrono::milliseconds(200);
  auto interval = std::chrono::milliseconds(500);
  std::chrono::seconds give_up = std::chrono::hours(24 * 365);
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--interval") interval = std::chrono::milliseconds(std::atol(argv[i + 1]));
    else if (flag == "--give-up-after") give_up = std::chrono::seconds(std::atol(argv[i + 1]));
    else if (flag == "--agent") options.agent_path = argv[i + 1];
  }
  auto deadline = std::chrono::steady_clock::now() + give_up;
  spdlog::info("polusd: watching process {}", pid);
  while (std::chrono::steady_clock::now() < deadline) {
    try {
      polus::PatchInfo info = polus::finish_update(pid, options);
      if (info.state != "syncing") {
        spdlog::info("polusd: {} of {} is {}", info.direction, info.name, info.state);
        return 0;
      }
    } catch (const polus::Error& e) {
      if (e.code() == polus::ErrorCode::kNothingToRollBack) return 0;  // nothing in flight
      if (e.code() == polus::ErrorCode::kNoSuchProcess || e.code() == polus::ErrorCode::kTargetDied) return 3;
      // Busy (another polusctl holds the process) or transient: try again next round.
      spdlog::warn("polusd: {}", e.what());
    }
    std::this_thread::sleep_for(interval);
  }
  return 14;
}
