// The trap commit (update/trap_commit.h) against a real 250-thread greeter under load: the
// jumps are written with an int3 first and the threads checked one at a time; the agent sends
// threads that hit the int3 meanwhile on. Apply and rollback with every answer checked, and
// polusctl killed with SIGKILL at random instants of such commits: the target survives, and the
// next command leaves it consistent (no int3, no entry, the original code answering).
#include <catch2/catch.hpp>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>

#include "greeter_process.h"
#include "polus/engine.h"
#include "polusctl_run.h"
#include "process/process_maps.h"
#include "process/process_memory.h"
#include "update/registry.h"

using namespace std::chrono_literals;
using polus::testing::binary_path;
using polus::testing::GreeterProcess;
using polus::testing::LoadGenerator;
using polus::testing::patch_path;

namespace {

constexpr int kWorkers = 250;

polus::EngineOptions trap_options() {
  polus::EngineOptions o;
  o.agent_path = POLUS_AGENT_PATH;
  o.timeout = 10s;
  o.commit = polus::CommitScheme::kTrap;
  o.rehearse = false;  // the copy of a 250-thread process is not what this test is about
  return o;
}

/// The agent's registry in `pid` (trap sites, hits), read as the engine does.
polus_agent_registry registry_of(pid_t pid) {
  polus::ProcMemory memory(pid);
  std::optional<polus::AgentLocation> agent = polus::locate_agent(pid, polus::read_process_maps(pid));
  REQUIRE(agent);
  return memory.read(agent->registry);
}

size_t trap_sites_in_use(const polus_agent_registry& reg) {
  size_t n = 0;
  for (const polus_trap_site& t : reg.traps) n += t.site != 0;
  return n;
}

/// Threads of `pid` still traced or in a tracing stop.
size_t held_threads(pid_t pid) {
  size_t held = 0;
  std::error_code error;
  for (const auto& task : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task", error)) {
    std::ifstream status(task.path() / "status");
    std::string line;
    while (std::getline(status, line)) {
      if (line.rfind("State:", 0) == 0 && line.find("t (tracing stop)") != std::string::npos) ++held;
      if (line.rfind("TracerPid:", 0) == 0 && line.substr(line.find_first_not_of(" \t", 10)) != "0") ++held;
    }
  }
  return held;
}

int polusctl(std::vector<std::string> args) {
  return polus::testing::wait_polusctl(polus::testing::start_polusctl(std::move(args)));
}

}  // namespace

TEST_CASE("a 250-thread greeter under load is patched with trap commits and rolled back, every answer checked",
          "[engine][live][trap]") {
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), kWorkers);
  LoadGenerator load(server.port(), 8);
  load.start();
  REQUIRE(load.wait_for_replies_per_client(10));
  for (int round = 0; round < 3; ++round) {
    polus::PatchInfo info = polus::apply_patch(server.pid(), patch_path("greeter-v0-v1.so"), trap_options());
    CHECK(info.commit_scheme == "trap");
    CHECK(info.state == "committed");
    CHECK(info.pause_ns == 0);  // no moment with every thread stopped
    CHECK(server.request("HELLO ann") == "Hi there, ann! (v1)");
    polus_agent_registry reg = registry_of(server.pid());
    CHECK(trap_sites_in_use(reg) == 0);
    const long v1_before = load.count_version(1);
    for (int waited = 0; waited < 5000 && load.count_version(1) < v1_before + 200; ++waited) std::this_thread::sleep_for(1ms);
    CHECK(load.count_version(1) >= v1_before + 200);  // the load is served by the new code
    polus::rollback_patch(server.pid(), trap_options());
    CHECK(server.request("HELLO bo") == "Hello, bo! (v0)");
  }
  // Workers call format_reply all the time, and the int3 stays in place for the whole check of
  // 250 threads: the agent must have sent some of them on (and none died of it).
  CHECK(registry_of(server.pid()).trap_hits > 0);
  load.stop();
  CHECK(load.malformed() == 0);
  CHECK(load.connection_failures() == 0);
  CHECK(server.alive());
  CHECK(held_threads(server.pid()) == 0);
}

TEST_CASE("polusctl killed at random instants of trap commits on 250 threads under load leaves a consistent target",
          "[engine][live][trap][kill]") {
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), kWorkers);
  LoadGenerator load(server.port(), 8);
  load.start();
  REQUIRE(load.wait_for_replies_per_client(10));
  const std::string pid = std::to_string(server.pid());
  const std::vector<std::string> apply = {"apply", pid, patch_path("greeter-v0-v1.so"), "--no-daemon", "--no-rehearsal",
                                          "--commit", "trap"};
  // How long an uninterrupted apply takes here: the kills are spread over it.
  auto start = std::chrono::steady_clock::now();
  REQUIRE(polusctl(apply) == 0);
  const auto apply_us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - start).count();
  REQUIRE(polusctl({"rollback", pid, "--no-daemon"}) == 0);
  std::mt19937 rng(20261130);
  int interrupted = 0;
  for (int trial = 0; trial < 8; ++trial) {
    pid_t tool = polus::testing::start_polusctl(apply);
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % static_cast<unsigned>(apply_us + 1)));
    kill(tool, SIGKILL);
    const int status = polus::testing::wait_polusctl(tool);
    interrupted += status == 128 + SIGKILL;
    INFO("trial " << trial << ", polusctl status " << status << ", apply takes " << apply_us << " us");
    std::this_thread::sleep_for(20ms);
    REQUIRE(server.alive());
    CHECK(held_threads(server.pid()) == 0);
    // Whatever was left, the answers are v0 or v1 (an int3 left sends threads on).
    std::string reply = server.request("HELLO cy");
    CHECK((reply == "Hello, cy! (v0)" || reply == "Hi there, cy! (v1)"));
    // The next commands complete or undo it, then roll back the rest.
    int rollback = 0;
    for (int k = 0; k < 4 && (rollback = polusctl({"rollback", pid, "--no-daemon"})) == 0; ++k) {
    }
    CHECK(rollback == 12);  // nothing left to roll back
    CHECK(server.request("HELLO k") == "Hello, k! (v0)");
    CHECK(polus::read_status(server.pid()).patches.empty());
    if (polus::locate_agent(server.pid(), polus::read_process_maps(server.pid()))) {
      CHECK(trap_sites_in_use(registry_of(server.pid())) == 0);
    }
  }
  CHECK(interrupted > 0);
  load.stop();
  CHECK(load.malformed() == 0);
  CHECK(load.connection_failures() == 0);
  CHECK(server.alive());
}
