// The operator's command line itself: help and version, check (a dry run that only reads the
// target), info (a patch file, no target), rollback --id, and tables that stay aligned.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "greeter_process.h"
#include "polusctl_run.h"

using polus::testing::binary_path;
using polus::testing::GreeterProcess;
using polus::testing::patch_path;

namespace {

using Run = polus::testing::PolusctlRun;

Run polusctl(const std::vector<std::string>& args) { return polus::testing::run_polusctl(args); }

/// The lines of `text`.
std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

/// The TracerPid of `pid`: 0 unless something is attached.
int tracer_of(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("TracerPid:", 0) == 0) return std::stoi(line.substr(10));
  }
  return -1;
}

}  // namespace

TEST_CASE("polusctl --version, per-command help, strict options", "[polusctl][usage]") {
  Run version = polusctl({"--version"});
  CHECK(version.status == 0);
  CHECK_THAT(version.out, Catch::StartsWith("polusctl (Polus) " POLUS_VERSION));
  for (const std::string command : {"apply", "rollback", "finish", "status", "check", "info", "stacks"}) {
    INFO(command);
    Run help = polusctl({command, "--help"});
    CHECK(help.status == 0);
    CHECK_THAT(help.out, Catch::Contains("polusctl " + command));
  }
  CHECK_THAT(polusctl({"apply", "--help"}).out, Catch::Contains("--sync-timeout") && Catch::Contains("--no-rehearsal"));
  CHECK_THAT(polusctl({"status", "--help"}).out, !Catch::Contains("--sync-timeout"));
  Run unknown = polusctl({"frobnicate"});
  CHECK(unknown.status == 2);
  CHECK_THAT(unknown.err, Catch::Contains("unknown command 'frobnicate'"));
  CHECK(polusctl({"info", "a.so", "--timeout", "5"}).status == 2);
  CHECK(polusctl({"stacks", "1", "--agent", "x"}).status == 2);
  CHECK(polusctl({"check", "1"}).status == 2);
}

TEST_CASE("polusctl info reads a patch file: what it replaces, syncs, its description and sha256", "[polusctl]") {
  Run info = polusctl({"info", patch_path("greeter-v0-v1-data.so")});
  INFO(info.err);
  REQUIRE(info.status == 0);
  CHECK_THAT(info.out, Catch::Contains("greeter-v1-data") && Catch::Contains("a tracked copy of requests_count") &&
                           Catch::Contains("format_reply") && Catch::Contains("format_reply_v1") &&
                           Catch::Contains("requests_count") && Catch::Contains("sha256 "));
  Run json = polusctl({"info", patch_path("greeter-v0-v1.so"), "--json"});
  REQUIRE(json.status == 0);
  CHECK_THAT(json.out, Catch::Contains("\"replaces\":[{\"old\":\"format_reply\",\"new\":\"format_reply_v1\"}]") &&
                           Catch::Contains("\"trusted\":true"));
  CHECK(std::regex_search(json.out, std::regex("\"sha256\":\"[0-9a-f]{64}\"")));
  Run build = polusctl({"info", patch_path("bad-build-id.so"), "--json"});
  CHECK_THAT(build.out, Catch::Contains("\"build_ids\":[{\"object\":\"\",\"build_id\":\""));
  CHECK(polusctl({"info", patch_path("not-an-elf.so")}).status == 8);
  CHECK(polusctl({"info", "/no/such/patch.so"}).status == 8);
}

TEST_CASE("polusctl check: a dry run that resolves names, sees active functions and never attaches",
          "[polusctl][live]") {
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  const std::string pid = std::to_string(server.pid());

  Run check = polusctl({"check", pid, patch_path("greeter-v0-v1-data.so")});
  INFO(check.err);
  REQUIRE(check.status == 0);
  CHECK_THAT(check.out, Catch::Contains("would apply to process " + pid) && Catch::Contains("format_reply") &&
                            Catch::Contains("requests_count") && Catch::Contains("agent not loaded yet"));
  Run json = polusctl({"check", pid, patch_path("greeter-v0-v1-data.so"), "--json"});
  REQUIRE(json.status == 0);
  CHECK_THAT(json.out, Catch::Contains("\"would_apply\":true") && Catch::Contains("\"changes_data\":true"));
  // The workers wait in their loop (greeter.c:worker_thread): blocked threads are read through
  // /proc/PID/task/TID/syscall, so the watched function is seen active on their stacks.
  CHECK(std::regex_search(json.out, std::regex("\"watched\":\\[\\{\"function\":\"greeter.c:worker_thread\",\"address\":\"0x[0-9a-f]+\",\"active_threads\":\\[[0-9]")));
  CHECK_THAT(check.out, Catch::Contains("worker-0"));

  // Failures are apply's, with apply's exit statuses, every missing name at once.
  Run missing = polusctl({"check", pid, patch_path("bad-missing-symbol.so")});
  CHECK(missing.status == 6);
  CHECK_THAT(missing.err, Catch::Contains("no_such_function_anywhere"));
  CHECK(polusctl({"check", pid, patch_path("bad-build-id.so")}).status == 9);
  CHECK(polusctl({"check", pid, patch_path("not-an-elf.so")}).status == 8);

  // Nothing happened to the target: no agent, nobody attached, v0 answers.
  CHECK(tracer_of(server.pid()) == 0);
  CHECK_THAT(polusctl({"status", pid}).out, Catch::Contains("no patches applied"));
  CHECK(server.request("HELLO op") == "Hello, op! (v0)");

  // Once patched, check sees the redirect it would stack on.
  REQUIRE(polusctl({"apply", pid, patch_path("greeter-v0-v1.so")}).status == 0);
  Run stacked = polusctl({"check", pid, patch_path("greeter-v1-v2.so"), "--json"});
  CHECK_THAT(stacked.out, Catch::Contains("\"stacked_on\":1") && Catch::Contains("\"agent_loaded\":true"));
  CHECK(server.request("HELLO op") == "Hi there, op! (v1)");
}

TEST_CASE("polusctl rollback --id: any patch no later patch builds on", "[polusctl][live]") {
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  const std::string pid = std::to_string(server.pid());
  REQUIRE(polusctl({"apply", pid, patch_path("greeter-v0-v1.so")}).status == 0);  // id 1: format_reply
  REQUIRE(polusctl({"apply", pid, patch_path("greeter-tag.so")}).status == 0);    // id 2: send_line
  REQUIRE(server.request("HELLO op") == "Hi there, op! (v1) #");

  // id 1 is not the newest, but id 2 replaces another function: it can go first.
  Run first = polusctl({"rollback", pid, "--id", "1"});
  INFO(first.err);
  REQUIRE(first.status == 0);
  CHECK_THAT(first.out, Catch::Contains("rolled back greeter-v1"));
  CHECK(server.request("HELLO op") == "Hello, op! (v0) #");

  // greeter-v1-v2 replaces format_reply again, on top of greeter-v1 (id 3): id 3 must wait.
  REQUIRE(polusctl({"apply", pid, patch_path("greeter-v0-v1.so")}).status == 0);  // id 3
  REQUIRE(polusctl({"apply", pid, patch_path("greeter-v1-v2.so")}).status == 0);  // id 4
  Run refused = polusctl({"rollback", pid, "--id", "3", "--json"});
  CHECK(refused.status == 11);
  CHECK_THAT(refused.err, Catch::Contains("greeter-v2 (id 4) builds on patch greeter-v1 (id 3)") &&
                              Catch::Contains("roll back id 4 first"));
  CHECK_THAT(refused.out, Catch::Contains("\"error\":\"unsafe-to-patch\""));
  CHECK(server.request("HELLO op") == "Greetings, op! (v2) #");
  CHECK(polusctl({"rollback", pid, "--id", "7"}).status == 12);

  CHECK(polusctl({"rollback", pid, "--id", "2"}).status == 0);  // the tag, under both
  CHECK(polusctl({"rollback", pid, "--id", "4"}).status == 0);
  CHECK(polusctl({"rollback", pid, "--id", "3"}).status == 0);
  CHECK(server.request("HELLO op") == "Hello, op! (v0)");
  CHECK_THAT(polusctl({"status", pid}).out, Catch::Contains("no patches applied"));
}

TEST_CASE("status tables stay aligned whatever the length of the names", "[polusctl][live]") {
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  const std::string pid = std::to_string(server.pid());
  // A patch file name does not set the patch's name; the patch names are short and long ones
  // come from the redirect lines. The columns must line up under their headers regardless.
  REQUIRE(polusctl({"apply", pid, patch_path("greeter-v0-v1.so")}).status == 0);
  REQUIRE(polusctl({"apply", pid, patch_path("greeter-tag.so")}).status == 0);
  Run status = polusctl({"status", pid});
  REQUIRE(status.status == 0);
  std::vector<std::string> rows;
  for (const std::string& line : lines(status.out)) {
    if (line.rfind("ID", 0) == 0 || line.find(" greeter-") != std::string::npos) rows.push_back(line);
  }
  REQUIRE(rows.size() == 3);
  const size_t state_column = rows[0].find("STATE");
  for (const std::string& row : rows) {
    INFO(row);
    CHECK(row.find(row == rows[0] ? "STATE" : "committed") == state_column);
  }
  // Every patched process, without naming one.
  Run all = polusctl({"status"});
  CHECK(all.status == 0);
  CHECK_THAT(all.out, Catch::Contains(pid) && Catch::Contains("greeter-tag"));
  CHECK(polusctl({"rollback", pid}).status == 0);
  CHECK(polusctl({"rollback", pid}).status == 0);
}
