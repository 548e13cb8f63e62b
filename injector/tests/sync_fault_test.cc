// A patch's sync function that faults in the target (test-servers/patches/bad-sync-fault.c)
// must not take it down: the greeter under load stays up and keeps every request in its own
// counter, the update is abandoned (back to the old code, or, for a rollback, the patch stays
// applied), the error and `status` name the function, and a later good patch applies.
#include <catch2/catch.hpp>

#include <signal.h>

#include <chrono>
#include <fstream>
#include <string>
#include <thread>

#include "greeter_process.h"
#include "polus/engine.h"
#include "polus/error.h"
#include "polusctl_run.h"

using namespace std::chrono_literals;
using polus::testing::binary_path;
using polus::testing::GreeterProcess;
using polus::testing::LoadGenerator;
using polus::testing::patch_path;

namespace {

polus::EngineOptions options(std::chrono::milliseconds sync_timeout = 5s) {
  polus::EngineOptions o;
  o.agent_path = POLUS_AGENT_PATH;
  o.timeout = 10s;
  o.sync_timeout = sync_timeout;
  return o;
}

/// Runs `operation`, which must fail with kLoadFailed; returns the message.
template <typename F>
std::string load_failed_message(F operation) {
  try {
    operation();
  } catch (const polus::Error& e) {
    CHECK(e.code() == polus::ErrorCode::kLoadFailed);
    return e.what();
  }
  FAIL("the operation succeeded although a sync function of the patch faults");
  return "";
}

bool maps_contain(pid_t pid, const std::string& text) {
  std::ifstream maps("/proc/" + std::to_string(pid) + "/maps");
  for (std::string line; std::getline(maps, line);) {
    if (line.find(text) != std::string::npos) return true;
  }
  return false;
}

/// The load stopped: no request failed, and the greeter's own counter has every reply the
/// clients got (and `extra` of ours), plus at most one per client that stop() abandoned.
void check_every_request_counted(GreeterProcess& server, LoadGenerator& load, long extra) {
  load.stop();
  REQUIRE(server.alive());
  for (const std::string& sample : load.error_samples()) UNSCOPED_INFO("connection error: " << sample);
  for (const std::string& sample : load.malformed_samples()) UNSCOPED_INFO("malformed reply: " << sample);
  CHECK(load.failures() == 0);
  long served = server.stats()["requests"];
  CHECK(served >= load.ok() + extra);
  CHECK(served <= load.ok() + extra + load.clients());
}

/// `signal`: what the sync function raised (0: it did not return); `what`: how the reason says so.
void check_last_failure(pid_t pid, const std::string& direction, const std::string& function, int signal = SIGSEGV,
                        const std::string& what = "SIGSEGV") {
  polus::ProcessStatus status = polus::read_status(pid);
  REQUIRE(status.last_failure);
  CHECK(status.last_failure->patch_name == "bad-sync-fault");
  CHECK(status.last_failure->direction == direction);
  CHECK(status.last_failure->signal == signal);
  CHECK_THAT(status.last_failure->reason, Catch::Contains(function) && Catch::Contains(what));
}

/// A data patch whose old -> new sync function goes wrong on its third call, in the agent's
/// handler on a worker thread of the greeter under load: the apply is abandoned with `what` in
/// its message, the greeter keeps serving and counting, and a good patch applies afterwards.
void expect_abandoned_under_load(const std::string& patch, int signal, const std::string& what) {
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  LoadGenerator load(server.port(), 2);
  load.start();
  REQUIRE(load.wait_for_replies(200));
  std::string message = load_failed_message([&] { polus::apply_patch(server.pid(), patch_path(patch), options()); });
  CHECK_THAT(message, Catch::Contains("copy_to_new") && Catch::Contains(what) &&
                          Catch::Contains("back on its old code and old data"));
  REQUIRE(server.alive());
  long before = load.ok();
  REQUIRE(load.wait_for_replies(before + 200));
  CHECK(server.request("HELLO ann") == "Hello, ann! (v0)");
  CHECK(polus::read_status(server.pid()).patches.empty());
  CHECK_FALSE(maps_contain(server.pid(), patch));
  check_last_failure(server.pid(), "apply", "copy_to_new", signal, what);
  auto good = polus::apply_patch(server.pid(), patch_path("greeter-v0-v1-data.so"), options(100ms));
  CHECK(good.state == "syncing");
  CHECK(server.request("HELLO bob") == "Hi there, bob! (v1)");
  CHECK(polus::rollback_patch(server.pid(), options()).state == "rolled-back");
  check_every_request_counted(server, load, 2);
}

}  // namespace

TEST_CASE("a sync function that faults on its third call under load: the update is abandoned, the greeter "
          "keeps every request, and a good patch applies afterwards",
          "[data][live][fault]") {
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  LoadGenerator load(server.port(), 2);  // two of the four workers free for our own requests
  load.start();
  REQUIRE(load.wait_for_replies(200));

  // Call 1 is the engine's, starting the update; 2 and 3 are HELLOs' increments, in the
  // agent's handler on a worker thread; the third dereferences NULL after writing -1 into the
  // new counter.
  std::string message = load_failed_message([&] {
    polus::apply_patch(server.pid(), patch_path("bad-sync-fault.so"), options());
  });
  CHECK_THAT(message, Catch::Contains("copy_to_new") && Catch::Contains("bad-sync-fault") &&
                          Catch::Contains("SIGSEGV at address 0x0") && Catch::Contains("old -> new") &&
                          Catch::Contains("back on its old code and old data"));
  REQUIRE(server.alive());
  long before = load.ok();
  REQUIRE(load.wait_for_replies(before + 200));
  CHECK(server.request("HELLO ann") == "Hello, ann! (v0)");
  CHECK(polus::read_status(server.pid()).patches.empty());
  CHECK_FALSE(maps_contain(server.pid(), "bad-sync-fault.so"));  // unloaded
  check_last_failure(server.pid(), "apply", "copy_to_new");
  CHECK_FALSE(polus::read_status(server.pid()).sync_active);

  // The target takes the next patch as if nothing had happened.
  auto good = polus::apply_patch(server.pid(), patch_path("greeter-v0-v1-data.so"), options(100ms));
  CHECK(good.state == "syncing");
  CHECK(server.request("HELLO bob") == "Hi there, bob! (v1)");
  CHECK(polus::rollback_patch(server.pid(), options()).state == "rolled-back");
  check_every_request_counted(server, load, 2);
}

TEST_CASE("a sync function that faults when Polus runs it to start the update: polusctl names it and the "
          "target is unchanged",
          "[data][live][fault]") {
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  LoadGenerator load(server.port(), 2);  // two of the four workers free for our own requests
  load.start();
  REQUIRE(load.wait_for_replies(200));

  const std::string pid = std::to_string(server.pid());
  auto run = polus::testing::run_polusctl({"apply", pid, patch_path("bad-sync-fault-start.so")});
  CHECK(run.status == 10);  // load-failed
  CHECK_THAT(run.err, Catch::Contains("copy_to_new") && Catch::Contains("run by Polus to start the update") &&
                          Catch::Contains("the target is unchanged"));
  REQUIRE(server.alive());
  CHECK(server.request("HELLO ann") == "Hello, ann! (v0)");
  CHECK_FALSE(maps_contain(server.pid(), "bad-sync-fault-start.so"));
  check_last_failure(server.pid(), "apply", "copy_to_new");

  auto status = polus::testing::run_polusctl({"status", pid});
  CHECK(status.status == 0);
  CHECK_THAT(status.out, Catch::Contains("last abandoned update: apply of patch bad-sync-fault") &&
                             Catch::Contains("copy_to_new"));
  auto json = polus::testing::run_polusctl({"status", pid, "--json"});
  CHECK_THAT(json.out, Catch::Contains("\"last_failure\":{\"patch_id\":") && Catch::Contains("\"signal\":11"));
  check_every_request_counted(server, load, 1);
}

TEST_CASE("a sync function that faults while nothing drives the update: the target goes on, status says "
          "faulted, and finish abandons the update",
          "[data][live][fault]") {
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  // No load: the apply returns while the update syncs, before the third call.
  auto info = polus::apply_patch(server.pid(), patch_path("bad-sync-fault.so"), options(50ms));
  REQUIRE(info.state == "syncing");
  CHECK(server.request("HELLO one") == "Hi there, one! (v1)");  // call 2
  CHECK(server.request("HELLO two") == "Hi there, two! (v1)");  // call 3: faults in the agent's handler
  CHECK(server.request("HELLO three") == "Hi there, three! (v1)");
  REQUIRE(server.alive());
  polus::ProcessStatus status = polus::read_status(server.pid());
  REQUIRE(status.patches.size() == 1);
  CHECK(status.patches[0].state == "faulted");
  CHECK_THAT(status.patches[0].fault, Catch::Contains("copy_to_new") && Catch::Contains("abandons the update"));
  CHECK(status.sync_active);
  CHECK(server.stats()["requests"] == 3);  // the old counter has every write; the new one is not needed

  std::string message = load_failed_message([&] { polus::finish_update(server.pid(), options()); });
  CHECK_THAT(message, Catch::Contains("copy_to_new") && Catch::Contains("back on its old code"));
  CHECK(server.request("HELLO four") == "Hello, four! (v0)");
  CHECK(polus::read_status(server.pid()).patches.empty());
  check_last_failure(server.pid(), "apply", "copy_to_new");
  CHECK(server.stats()["requests"] == 4);
}

TEST_CASE("a sync function that faults during a rollback: the rollback is abandoned and the patch stays applied",
          "[data][live][fault]") {
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  LoadGenerator load(server.port(), 2);  // two of the four workers free for our own requests
  load.start();
  REQUIRE(load.wait_for_replies(200));
  // This patch says every worker uses both copies of the counter: its apply, and its rollback,
  // sync for good (both copies kept equal).
  REQUIRE(polus::apply_patch(server.pid(), patch_path("bad-sync-fault-rollback.so"), options(50ms)).state == "syncing");
  REQUIRE(load.wait_for_replies(load.ok() + 100));

  // The rollback takes the jumps out and syncs while old code's increments run copy_to_new,
  // whose first call then faults: the jumps go back in and the update syncs as an apply again.
  std::string message = load_failed_message([&] { polus::rollback_patch(server.pid(), options(200ms)); });
  CHECK_THAT(message, Catch::Contains("copy_to_new") && Catch::Contains("the rollback is being abandoned") &&
                          Catch::Contains("stays applied") && Catch::Contains("jumps are back in"));
  REQUIRE(server.alive());
  polus::ProcessStatus status = polus::read_status(server.pid());
  REQUIRE(status.patches.size() == 1);
  CHECK(status.patches[0].state == "syncing");
  CHECK(status.patches[0].direction == "apply");
  CHECK_THAT(status.patches[0].fault, Catch::Contains("copy_to_new") && Catch::Contains("being abandoned"));
  CHECK(server.request("HELLO ann") == "Hi there, ann! (v1)");
  check_last_failure(server.pid(), "rollback", "copy_to_new");
  check_every_request_counted(server, load, 1);
}

TEST_CASE("a new -> old sync function that faults when Polus starts a rollback leaves the patch applied and "
          "the old counter as it was",
          "[data][live][fault]") {
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  LoadGenerator load(server.port(), 2);  // two of the four workers free for our own requests
  load.start();
  REQUIRE(load.wait_for_replies(200));
  REQUIRE(polus::apply_patch(server.pid(), patch_path("bad-sync-fault-rollback-start.so"), options()).state ==
          "committed");

  // copy_to_old writes -1 into the greeter's own requests_count before it faults: put back.
  std::string message = load_failed_message([&] { polus::rollback_patch(server.pid(), options()); });
  CHECK_THAT(message, Catch::Contains("copy_to_old") && Catch::Contains("new -> old") &&
                          Catch::Contains("before any original byte was put back"));
  REQUIRE(server.alive());
  polus::ProcessStatus status = polus::read_status(server.pid());
  REQUIRE(status.patches.size() == 1);
  CHECK(status.patches[0].state == "committed");
  CHECK(server.request("HELLO ann") == "Hi there, ann! (v1)");
  check_last_failure(server.pid(), "rollback", "copy_to_old");
  check_every_request_counted(server, load, 1);
}

TEST_CASE("a post-update callback that faults or calls abort() while write tracking is on: the greeter goes on "
          "and the update completes",
          "[data][live][fault]") {
  // The callback runs on a borrowed thread whose faults go to the agent (tracked writes must
  // reach it); without the fence its SIGSEGV went on to the greeter's default disposition.
  // The agent also takes SIGABRT while tracking (to fence sync functions): a callback's
  // abort() must still end as a crash of the callback, and leave no fence armed behind it.
  for (const char* patch : {"bad-callback-abort.so", "bad-callback-fault.so"}) {
    INFO(patch);
    auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
    LoadGenerator load(server.port(), 2);
    load.start();
    REQUIRE(load.wait_for_replies(200));
    polus::PatchInfo applied = polus::apply_patch(server.pid(), patch_path(patch), options());
    CHECK(applied.state == "committed");
    REQUIRE(server.alive());
    CHECK(server.request("HELLO ann") == "Hi there, ann! (v1)");
    long before = load.ok();
    REQUIRE(load.wait_for_replies(before + 200));
    CHECK(polus::read_status(server.pid()).patches.at(0).state == "committed");
    CHECK_FALSE(polus::read_status(server.pid()).sync_active);
    check_every_request_counted(server, load, 1);
  }
}

TEST_CASE("apply of a patch whose rollback is syncing is refused, not reported as already applied",
          "[data][live][fault]") {
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  LoadGenerator load(server.port(), 2);
  load.start();
  REQUIRE(load.wait_for_replies(200));
  REQUIRE(polus::apply_patch(server.pid(), patch_path("bad-callback-fault.so"), options()).state == "committed");

  // Its rollback waits for every worker to leave worker_thread (the patch says it uses the new
  // counter): it stays syncing. Applying the same patch meanwhile is refused, not reported as
  // "already applied".
  REQUIRE(polus::rollback_patch(server.pid(), options(200ms)).state == "syncing");
  try {
    polus::apply_patch(server.pid(), patch_path("bad-callback-fault.so"), options());
    FAIL("apply of a patch being rolled back said it was applied");
  } catch (const polus::Error& e) {
    CHECK(e.code() == polus::ErrorCode::kUnsafeToPatch);
    CHECK_THAT(std::string(e.what()), Catch::Contains("is being rolled back") && Catch::Contains("then apply it again"));
  }
  CHECK(server.alive());
}

TEST_CASE("a sync function that calls abort() on its third call under load: the agent's fence takes the "
          "SIGABRT, the update is abandoned and the greeter goes on",
          "[data][live][fault]") {
  // Without the fence, abort() in the agent's SIGSEGV handler ended the greeter (SIGABRT).
  expect_abandoned_under_load("bad-sync-abort.so", SIGABRT, "SIGABRT");
}

TEST_CASE("a sync function that never returns: Polus sends its thread out of it after a second, the update is "
          "abandoned and the greeter goes on",
          "[data][live][fault]") {
  // Without the watchdog, the worker thread spun in the agent's handler for good, holding
  // the sync lock: every other worker's next HELLO waited behind it.
  expect_abandoned_under_load("bad-sync-hang.so", 0, "did not return");
}

TEST_CASE("a sync function that calls abort() when Polus runs it to start the update: the target is unchanged",
          "[data][live][fault]") {
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  LoadGenerator load(server.port(), 2);
  load.start();
  REQUIRE(load.wait_for_replies(200));
  auto run = polus::testing::run_polusctl({"apply", std::to_string(server.pid()), patch_path("bad-sync-abort-start.so")});
  CHECK(run.status == 10);
  CHECK_THAT(run.err, Catch::Contains("copy_to_new") && Catch::Contains("SIGABRT") &&
                          Catch::Contains("the target is unchanged"));
  REQUIRE(server.alive());
  CHECK(server.request("HELLO ann") == "Hello, ann! (v0)");
  check_last_failure(server.pid(), "apply", "copy_to_new", SIGABRT, "SIGABRT");
  check_every_request_counted(server, load, 1);
}


TEST_CASE("a sync function that calls abort() or never returns on the thread Polus borrowed: the call ends through "
          "the agent's fence, the greeter goes on",
          "[data][live][fault]") {
  // The post-update callback writes the new counter: copy_to_old runs in the agent's handler
  // on the borrowed thread, with a lock of the agent's taken. Abandoning the call there (as a
  // crash of our code) would leave that lock taken for good, and the greeter's next write to
  // the counter would wait for ever.
  for (const char* patch : {"bad-borrowed-sync-abort.so", "bad-borrowed-sync-hang.so"}) {
    INFO(patch);
    auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
    LoadGenerator load(server.port(), 2);
    load.start();
    REQUIRE(load.wait_for_replies(200));
    std::string message = load_failed_message([&] {
      polus::PatchInfo info = polus::apply_patch(server.pid(), patch_path(patch), options());
      UNSCOPED_INFO("apply returned state " << info.state);
    });
    // The patch says the old worker_thread uses the new counter (it is built for rollbacks),
    // so going back to the old code syncs for as long as the workers run: it stays abandoning.
    CHECK_THAT(message, Catch::Contains("copy_to_old") && Catch::Contains("the update is being abandoned"));
    REQUIRE(server.alive());
    long before = load.ok();
    REQUIRE(load.wait_for_replies(before + 200));  // every worker still writes the counter
    CHECK(server.request("HELLO ann") == "Hello, ann! (v0)");  // the jumps are out
    check_every_request_counted(server, load, 1);
  }
}
