// polusctl as an operator runs it: real binary, real target, exit statuses and output.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "greeter_process.h"
#include "polusctl_run.h"

using polus::testing::binary_path;
using polus::testing::GreeterProcess;
using polus::testing::patch_path;

namespace {

using Run = polus::testing::PolusctlRun;

/// Runs polusctl with `args`, capturing stdout and stderr separately.
Run polusctl(const std::vector<std::string>& args) { return polus::testing::run_polusctl(args); }

}  // namespace

TEST_CASE("polusctl apply, status, rollback", "[polusctl][live]") {
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  const std::string pid = std::to_string(server.pid());

  Run empty = polusctl({"status", pid});
  CHECK(empty.status == 0);
  CHECK_THAT(empty.out, Catch::Contains("no patches applied"));

  Run apply = polusctl({"apply", pid, patch_path("greeter-v0-v1.so")});
  INFO(apply.err);
  REQUIRE(apply.status == 0);
  CHECK_THAT(apply.out, Catch::Contains("applied greeter-v1"));
  CHECK_THAT(apply.out, Catch::Contains("format_reply"));
  CHECK(server.request("HELLO op") == "Hi there, op! (v1)");

  Run table = polusctl({"status", pid});
  CHECK(table.status == 0);
  CHECK_THAT(table.out, Catch::Contains("greeter-v1") && Catch::Contains("committed") &&
                            Catch::Contains("format_reply_v1") && Catch::Contains("PAUSE"));

  Run json = polusctl({"status", pid, "--json"});
  CHECK(json.status == 0);
  CHECK_THAT(json.out, Catch::StartsWith("{\"pid\":" + pid + ",\"agent_loaded\":true"));
  CHECK_THAT(json.out, Catch::Contains("\"name\":\"greeter-v1\"") && Catch::Contains("\"state\":\"committed\"") &&
                           Catch::Contains("\"old\":\"format_reply\"") && Catch::Contains("\"new\":\"format_reply_v1\"") &&
                           Catch::Contains("\"pause_ns\":") && Catch::Contains("\"applied_at\":\""));

  Run rollback = polusctl({"rollback", pid, "--json"});
  CHECK(rollback.status == 0);
  CHECK_THAT(rollback.out, Catch::Contains("\"result\":\"ok\"") && Catch::Contains("\"action\":\"rollback\""));
  CHECK(server.request("HELLO op") == "Hello, op! (v0)");
}

TEST_CASE("polusctl errors: documented exit statuses and specific messages", "[polusctl][live][errors]") {
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  const std::string pid = std::to_string(server.pid());

  Run usage = polusctl({"apply", pid});
  CHECK(usage.status == 2);
  CHECK_THAT(usage.err, Catch::Contains("usage"));
  CHECK(polusctl({"frobnicate", pid}).status == 2);
  CHECK(polusctl({"status", "12abc"}).status == 2);

  Run missing_pid = polusctl({"apply", "999999", patch_path("greeter-v0-v1.so")});
  CHECK(missing_pid.status == 3);
  CHECK_THAT(missing_pid.err, Catch::Contains("999999") && Catch::Contains("does not exist"));

  Run missing_symbol = polusctl({"apply", pid, patch_path("bad-missing-symbol.so"), "--json"});
  CHECK(missing_symbol.status == 6);
  CHECK_THAT(missing_symbol.out, Catch::Contains("\"error\":\"symbol-not-found\""));
  CHECK_THAT(missing_symbol.err, Catch::Contains("no_such_function_anywhere"));

  CHECK(polusctl({"apply", pid, patch_path("not-an-elf.so")}).status == 8);
  CHECK(polusctl({"apply", pid, patch_path("bad-build-id.so")}).status == 9);
  Run load = polusctl({"apply", pid, patch_path("bad-undefined.so")});
  CHECK(load.status == 10);
  CHECK_THAT(load.err, Catch::Contains("undefined symbol"));
  Run nothing = polusctl({"rollback", pid});
  CHECK(nothing.status == 12);
  CHECK_THAT(nothing.err, Catch::Contains("no applied Polus patch"));

  // After all of that, the target serves v0, unpatched.
  CHECK(server.request("HELLO op") == "Hello, op! (v0)");
  CHECK_THAT(polusctl({"status", pid}).out, Catch::Contains("no patches applied"));
}

TEST_CASE("numeric options and process ids are checked: a usage error naming the option and its range",
          "[polusctl][usage]") {
  // No process is touched: all of these fail while the command line is read.
  for (const std::string bad : {"abc", "-1", "1.5", "0x10", "", "12345678901234567890", " 5", "+5", "1e3"}) {
    INFO("'" << bad << "'");
    Run timeout = polusctl({"rollback", "1", "--timeout", bad});
    CHECK(timeout.status == 2);
    CHECK_THAT(timeout.err, Catch::Contains("--timeout needs a whole number of milliseconds from 1 to 86400000"));
    Run sync = polusctl({"apply", "1", "x.so", "--sync-timeout", bad});
    CHECK(sync.status == 2);
    CHECK_THAT(sync.err, Catch::Contains("--sync-timeout needs a whole number of milliseconds from 0 to 86400000"));
    Run pid = polusctl({"status", bad});
    CHECK(pid.status == 2);
    CHECK_THAT(pid.err, Catch::Contains("is not a process id (a whole number from 1 to 2147483647)"));
  }
  CHECK(polusctl({"rollback", "1", "--timeout", "0"}).status == 2);
  CHECK(polusctl({"rollback", "1", "--timeout", "86400001"}).status == 2);
  CHECK(polusctl({"status", "0"}).status == 2);
  CHECK(polusctl({"status", "2147483648"}).status == 2);
  CHECK(polusctl({"rollback", "1", "--timeout"}).status == 2);
  // Options belong to their commands: status takes no --timeout, info no pid.
  Run stray = polusctl({"status", "1", "--timeout", "5"});
  CHECK(stray.status == 2);
  CHECK_THAT(stray.err, Catch::Contains("--timeout") && Catch::Contains("usage: polusctl status"));
  CHECK(polusctl({"info", "1", "x.so"}).status == 2);
  CHECK(polusctl({"rollback", "1", "--id", "abc"}).status == 2);
  CHECK(polusctl({"rollback", "1", "--id", "-3"}).status == 2);
  CHECK(polusctl({"apply", "1", "x.so", "--build-id", "xyz"}).status == 2);
  // In range: read, and the command goes on (to a process that does not exist).
  CHECK(polusctl({"rollback", "999999", "--timeout", "1", "--sync-timeout", "0"}).status == 3);
  CHECK(polusctl({"rollback", "999999", "--timeout", "86400000"}).status == 3);
}

TEST_CASE("polusd checks its process id, --interval and --give-up-after", "[polusd][usage]") {
  std::string polusd = POLUSCTL_PATH;
  polusd = polusd.substr(0, polusd.rfind('/')) + "/polusd";
  auto run = [&](std::vector<std::string> args) {
    std::string command = polusd;
    for (const auto& a : args) command += " '" + a + "'";
    command += " >/dev/null 2>&1";
    int status = std::system(command.c_str());
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  for (const std::string bad : {"abc", "-1", "1.5", "0x10", "", "12345678901234567890", "0"}) {
    INFO("'" << bad << "'");
    CHECK(run({bad}) == 2);
    CHECK(run({"999999", "--interval", bad}) == 2);
    CHECK(run({"999999", "--give-up-after", bad}) == 2);
  }
  CHECK(run({}) == 2);
  CHECK(run({"2147483648"}) == 2);
  CHECK(run({"999999", "--interval"}) == 2);
  CHECK(run({"999999", "--frobnicate", "1"}) == 2);
  CHECK(run({"999999", "--interval", "3600001"}) == 2);
  // In range: polusd starts, finds no such process and exits 3.
  CHECK(run({"999999", "--interval", "10", "--give-up-after", "1", "--audit-log", polus::testing::test_audit_log()}) == 3);
}

TEST_CASE("polusd stops on SIGTERM between rounds, leaving the update recorded", "[polusd][live]") {
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  const std::string pid = std::to_string(server.pid());
  // The greeter's data patch stays syncing while its workers run (test-servers/README.md).
  REQUIRE(polusctl({"apply", pid, patch_path("greeter-v0-v1-data.so"), "--sync-timeout", "100"}).status == 0);
  std::string polusd = POLUSCTL_PATH;
  polusd = polusd.substr(0, polusd.rfind('/')) + "/polusd";
  std::string agent = std::string("POLUS_AGENT=") + POLUS_AGENT_PATH;
  std::string audit = "POLUS_AUDIT_LOG=" + polus::testing::test_audit_log();
  std::vector<char*> argv{polusd.data(), const_cast<char*>(pid.c_str()), const_cast<char*>("--interval"),
                          const_cast<char*>("100"), nullptr};
  pid_t daemon = fork();
  if (daemon == 0) {
    int null = open("/dev/null", O_WRONLY);
    dup2(null, 2);
    char* envp[] = {agent.data(), audit.data(), nullptr};
    execve(argv[0], argv.data(), envp);
    _exit(127);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(700));  // a few rounds
  const auto sent = std::chrono::steady_clock::now();
  kill(daemon, SIGTERM);
  int status = 0;
  REQUIRE(waitpid(daemon, &status, 0) == daemon);
  REQUIRE(WIFEXITED(status));  // it stopped by itself, not killed by the signal
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(std::chrono::steady_clock::now() - sent < std::chrono::seconds(2));
  CHECK(server.alive());
  CHECK_THAT(polusctl({"status", pid}).out, Catch::Contains("syncing"));
  CHECK(polusctl({"rollback", pid, "--sync-timeout", "5000"}).status == 0);
  CHECK(server.request("HELLO op") == "Hello, op! (v0)");
}
