// polusd as a service: a real daemon on a real socket (in a directory of the test's own),
// started on demand by polusctl, owning updates after polusctl returned, killed with SIGKILL
// during and between operations and restarted with nothing lost, serving two clients at once.
#include <catch2/catch.hpp>

#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "child_process.h"
#include "daemon_dir.h"
#include "greeter_process.h"
#include "polusctl_run.h"

using polus::testing::binary_path;
using polus::testing::ChildProcess;
using polus::testing::GreeterProcess;
using polus::testing::patch_path;
using namespace std::chrono_literals;

namespace {

using Run = polus::testing::PolusctlRun;

Run polusctl(const std::vector<std::string>& args) { return polus::testing::run_polusctl(args); }

using polus::testing::DaemonDir;

/// The state of patch `id` of `pid` in `status --json` ("" if not listed).
std::string state_of(pid_t pid, int id) {
  Run status = polusctl({"status", std::to_string(pid), "--json"});
  std::string key = "{\"id\":" + std::to_string(id) + ",";
  size_t at = status.out.find(key);
  if (at == std::string::npos) return "";
  size_t state = status.out.find("\"state\":\"", at) + 9;
  return status.out.substr(state, status.out.find('"', state) - state);
}

/// Waits until patch `id` of `pid` is in `want` (polusd works on it meanwhile); the test's
/// timeout bounds it. Returns the state seen last.
std::string wait_for_state(pid_t pid, int id, const std::string& want) {
  std::string state;
  for (int i = 0; i < 6000 && (state = state_of(pid, id)) != want; ++i) std::this_thread::sleep_for(10ms);
  return state;
}

}  // namespace

TEST_CASE("polusctl starts polusd on demand; polusd completes a data update after polusctl returned",
          "[polusd][live]") {
  DaemonDir dir;
  REQUIRE(dir.daemon() == 0);
  ChildProcess target({binary_path("counter-v0")});
  REQUIRE(target.read_line() == "READY");
  REQUIRE(target.ask("hold") == "HOLDING");  // a thread stays in hold(), which uses the changed data
  const std::string pid = std::to_string(target.pid());

  Run apply = polusctl({"apply", pid, patch_path("counter-v0-v1.so"), "--sync-timeout", "0"});
  INFO(apply.err);
  REQUIRE(apply.status == 0);
  CHECK_THAT(apply.out, Catch::Contains("still syncing") && Catch::Contains("polusd completes it"));
  const pid_t daemon = dir.daemon();
  CHECK(daemon > 0);
  struct stat st {};
  REQUIRE(stat(dir.socket().c_str(), &st) == 0);
  CHECK(S_ISSOCK(st.st_mode));
  CHECK((st.st_mode & 0077) == 0);  // the caller's own: nobody else connects

  // Nobody runs `polusctl finish`: once the thread leaves hold(), polusd commits the update.
  CHECK(state_of(target.pid(), 1) == "syncing");
  REQUIRE(target.ask("release") == "RELEASED");
  CHECK(wait_for_state(target.pid(), 1, "committed") == "committed");
  CHECK(target.ask("report").find("version=1") != std::string::npos);
  CHECK(dir.daemon() == daemon);  // the same polusd served it all

  // A code-only rollback through polusd, then polusd stops on SIGTERM (its lock is freed).
  CHECK(polusctl({"rollback", pid, "--sync-timeout", "10000"}).status == 0);
  dir.stop();
  CHECK(dir.daemon() == 0);
}

TEST_CASE("polusd killed between operations: a restarted polusd takes the update in flight up again",
          "[polusd][live]") {
  DaemonDir dir;
  ChildProcess target({binary_path("counter-v0")});
  REQUIRE(target.read_line() == "READY");
  REQUIRE(target.ask("hold") == "HOLDING");
  const std::string pid = std::to_string(target.pid());
  REQUIRE(polusctl({"apply", pid, patch_path("counter-v0-v1.so"), "--sync-timeout", "0"}).status == 0);
  const pid_t first = dir.daemon();
  REQUIRE(first > 0);
  dir.kill_daemon(SIGKILL);
  CHECK(target.alive());
  CHECK(state_of(target.pid(), 1) == "syncing");  // recorded in the target, not in polusd

  // Any command that goes through polusd starts a new one, which rediscovers the process.
  Run other = polusctl({"finish", "999999"});
  CHECK(other.status == 3);
  const pid_t second = dir.daemon();
  CHECK(second > 0);
  CHECK(second != first);
  REQUIRE(target.ask("release") == "RELEASED");
  CHECK(wait_for_state(target.pid(), 1, "committed") == "committed");
  CHECK(target.ask("report").find("version=1") != std::string::npos);
}

TEST_CASE("polusd killed during operations: nothing is lost, the next polusd sees each one through",
          "[polusd][live][kill]") {
  DaemonDir dir;
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  const std::string pid = std::to_string(server.pid());
  // Start polusd (and load the agent) with a first apply and rollback.
  REQUIRE(polusctl({"apply", pid, patch_path("greeter-v0-v1.so")}).status == 0);
  REQUIRE(polusctl({"rollback", pid}).status == 0);
  for (int trial = 0; trial < 12; ++trial) {
    INFO("trial " << trial);
    const bool rolling_back = trial % 2 == 1;
    if (rolling_back) {
      Run apply = polusctl({"apply", pid, patch_path("greeter-v0-v1-data.so"), "--sync-timeout", "100"});
      INFO(apply.err);
      REQUIRE(apply.status == 0);
    }
    pid_t client = polus::testing::start_polusctl(
        rolling_back ? std::vector<std::string>{"rollback", pid, "--sync-timeout", "100"}
                     : std::vector<std::string>{"apply", pid, patch_path("greeter-v0-v1-data.so"), "--sync-timeout", "100"});
    // Kill polusd at a different instant of the operation each trial: before, during, after.
    std::this_thread::sleep_for(std::chrono::milliseconds(trial * 7));
    dir.kill_daemon(SIGKILL);
    const int status = polus::testing::wait_polusctl(client);
    INFO("polusctl status " << status);
    CHECK((status == 0 || status == 1));  // 1: "polusd went away before it answered"
    REQUIRE(server.alive());
    // The next command starts a new polusd, which first sees the interrupted operation through;
    // then everything can be rolled back and the greeter answers as v0.
    int rollbacks = 0;
    Run rollback;
    while ((rollback = polusctl({"rollback", pid, "--sync-timeout", "5000"})).status == 0 && rollbacks < 6) ++rollbacks;
    INFO("last rollback said: " << rollback.err);
    CHECK(rollback.status == 12);  // nothing left to roll back
    CHECK_THAT(polusctl({"status", pid}).out, Catch::Contains("no patches applied"));
    CHECK(server.request("HELLO op") == "Hello, op! (v0)");
  }
  CHECK(server.alive());
}

TEST_CASE("two clients at once: two polusctl start one polusd, which serves both", "[polusd][live]") {
  DaemonDir dir;
  auto first = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  auto second = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  pid_t a = polus::testing::start_polusctl({"apply", std::to_string(first.pid()), patch_path("greeter-v0-v1.so")});
  pid_t b = polus::testing::start_polusctl({"apply", std::to_string(second.pid()), patch_path("greeter-v0-v1.so")});
  CHECK(polus::testing::wait_polusctl(a) == 0);
  CHECK(polus::testing::wait_polusctl(b) == 0);
  CHECK(first.request("HELLO op") == "Hi there, op! (v1)");
  CHECK(second.request("HELLO op") == "Hi there, op! (v1)");
  CHECK(dir.daemon() > 0);
  // And two at once on the same process: the engine's operation lock orders them.
  pid_t c = polus::testing::start_polusctl({"apply", std::to_string(first.pid()), patch_path("greeter-v1-v2.so")});
  pid_t d = polus::testing::start_polusctl({"apply", std::to_string(first.pid()), patch_path("greeter-tag.so")});
  CHECK(polus::testing::wait_polusctl(c) == 0);
  CHECK(polus::testing::wait_polusctl(d) == 0);
  CHECK(first.request("HELLO op") == "Greetings, op! (v2) #");
}

namespace {

/// Runs `command` (a shell line) and returns its stdout and stderr together, then "EXIT=N".
std::string shell(const std::string& command) {
  std::string text;
  FILE* pipe = popen((command + " 2>&1; echo EXIT=$?").c_str(), "r");
  if (!pipe) return "popen failed";
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, pipe)) > 0;) text.append(buf, n);
  pclose(pipe);
  return text;
}

}  // namespace

TEST_CASE("polusctl sends a command to polusd without its engine module; polusd's errors keep their status",
          "[polusd][live]") {
  DaemonDir dir;
  // A polusctl alone in a directory: no engine module beside it, so only what it sends to polusd
  // can work (a client that loaded the engine for it would fail here).
  const std::string alone = dir.dir() + "/bin";
  REQUIRE(mkdir(alone.c_str(), 0700) == 0);
  REQUIRE(std::system(("cp " POLUSCTL_PATH " '" + alone + "/polusctl'").c_str()) == 0);
  const std::string env = std::string("POLUSD=" POLUSD_PATH " POLUS_AGENT=" POLUS_AGENT_PATH " POLUS_AUDIT_LOG=") +
                          polus::testing::test_audit_log() + " ";
  const std::string thin = env + alone + "/polusctl ";
  auto greeter = GreeterProcess::spawn(binary_path("greeter-v0"), 2);
  const std::string pid = std::to_string(greeter.pid());
  CHECK_THAT(shell(thin + "apply " + pid + " " + patch_path("greeter-v0-v1.so")),
             Catch::StartsWith("applied greeter-v1 to process " + pid) && Catch::EndsWith("EXIT=0\n"));
  CHECK(greeter.request("HELLO op") == "Hi there, op! (v1)");
  // A request that fails inside polusd: the documented status and the message --no-daemon gives.
  const std::string gone = "2147483646";
  const std::string expected = "polusctl apply: process " + gone + " does not exist\nEXIT=3\n";
  CHECK(shell(env + POLUSCTL_PATH " apply --no-daemon " + gone + " " + patch_path("greeter-v0-v1.so")) == expected);
  CHECK(shell(thin + "apply " + gone + " " + patch_path("greeter-v0-v1.so")) == expected);
  CHECK(shell(thin + "rollback " + pid + " --id 99 --json").find("EXIT=12") != std::string::npos);
  CHECK(shell(thin + "rollback " + pid).find("EXIT=0") != std::string::npos);
  CHECK(greeter.request("HELLO op") == "Hello, op! (v0)");
  // A command polusctl runs itself needs the module, and says which file it looked for.
  if (access(POLUS_INSTALLED_ENGINE, F_OK) != 0) {
    CHECK(shell(thin + "status " + pid) ==
          "polusctl: cannot load its engine module " POLUS_INSTALLED_ENGINE ": " POLUS_INSTALLED_ENGINE
          ": cannot open shared object file: No such file or directory (reinstall polus; a command sent to polusd "
          "does not need it)\nEXIT=1\n");
  }
}

TEST_CASE("Ctrl-C of polusctl is relayed: polusd stops that operation cleanly", "[polusd][live]") {
  DaemonDir dir;
  ChildProcess target({binary_path("counter-v0")});
  REQUIRE(target.read_line() == "READY");
  REQUIRE(target.ask("hold") == "HOLDING");
  const std::string pid = std::to_string(target.pid());
  int err[2];
  REQUIRE(pipe2(err, O_CLOEXEC) == 0);
  // A long sync phase: polusctl waits in polusd until we interrupt it.
  pid_t client = polus::testing::start_polusctl({"apply", pid, patch_path("counter-v0-v1.so"), "--sync-timeout", "600000"},
                                                -1, err[1]);
  close(err[1]);
  REQUIRE(wait_for_state(target.pid(), 1, "syncing") == "syncing");
  kill(client, SIGINT);
  CHECK(polus::testing::wait_polusctl(client) == 0);  // the apply itself succeeded; it stopped waiting
  std::string stderr_text;
  char buf[4096];
  for (ssize_t n; (n = read(err[0], buf, sizeof buf)) > 0;) stderr_text.append(buf, static_cast<size_t>(n));
  close(err[0]);
  CHECK_THAT(stderr_text, Catch::Contains("stopped by Interrupt"));
  // polusd still owns the update: it completes once hold() is left.
  REQUIRE(target.ask("release") == "RELEASED");
  CHECK(wait_for_state(target.pid(), 1, "committed") == "committed");
}

TEST_CASE("polusd takes the socket systemd passes (socket activation)", "[polusd][live]") {
  const char* activate = "/usr/bin/systemd-socket-activate";
  if (access(activate, X_OK) != 0) {
    WARN("no systemd-socket-activate: socket activation not tried");
    return;
  }
  DaemonDir dir;
  std::string polusd = POLUSCTL_PATH;
  polusd = polusd.substr(0, polusd.rfind('/')) + "/polusd";
  std::string log = dir.socket() + ".activated.log";
  // systemd-socket-activate listens, then execs polusd with the socket as fd 3 and
  // LISTEN_PID/LISTEN_FDS set, as systemd does for polusd.socket.
  std::vector<std::string> args{activate, "-l", dir.socket(), polusd, "--serve"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t activator = fork();
  if (activator == 0) {
    int out = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(out, 1);
    dup2(out, 2);
    execv(argv[0], argv.data());
    _exit(127);
  }
  struct stat st {};
  while (stat(dir.socket().c_str(), &st) != 0) std::this_thread::sleep_for(5ms);
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 2);
  Run apply = polusctl({"apply", std::to_string(server.pid()), patch_path("greeter-v0-v1.so")});
  INFO(apply.err);
  CHECK(apply.status == 0);
  CHECK(server.request("HELLO op") == "Hi there, op! (v1)");
  CHECK(dir.daemon() == 0);  // no polusd of polusctl's own: the activated one served it
  kill(activator, SIGTERM);  // now polusd itself (exec'd in its place)
  int status = 0;
  REQUIRE(waitpid(activator, &status, 0) == activator);
  CHECK(WIFEXITED(status));
  std::ifstream in(log);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK_THAT(text, Catch::Contains("serving the socket systemd passed"));
}

namespace {

/// Runs polusctl `args` on a pseudo-terminal (stdout and stderr both on it, as in an
/// operator's shell) with $POLUS_NO_DAEMON `no_daemon`; returns all it wrote.
std::string polusctl_on_terminal(const std::vector<std::string>& args, bool no_daemon) {
  int master = -1;
  pid_t child = forkpty(&master, nullptr, nullptr, nullptr);
  if (child == 0) {  // no Catch macro here: the child's report would land on the terminal
    setenv("POLUS_AGENT", POLUS_AGENT_PATH, 1);
    if (no_daemon) setenv("POLUS_NO_DAEMON", "1", 1);
    else unsetenv("POLUS_NO_DAEMON");
    std::vector<char*> argv{const_cast<char*>(POLUSCTL_PATH)};
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  REQUIRE(child > 0);
  std::string output;
  char buffer[4096];
  for (;;) {
    pollfd p{master, POLLIN, 0};
    if (poll(&p, 1, 30000) <= 0) break;
    ssize_t n = read(master, buffer, sizeof buffer);
    if (n <= 0) break;  // EIO once the child has closed the terminal
    output.append(buffer, static_cast<size_t>(n));
  }
  close(master);
  int status = 0;
  waitpid(child, &status, 0);
  return output;
}

}  // namespace

TEST_CASE("on a terminal, a long sync phase names the threads that hold it, refreshed in place",
          "[polusd][live][progress]") {
  DaemonDir dir;
  ChildProcess target({binary_path("counter-v0")});
  REQUIRE(target.read_line() == "READY");
  REQUIRE(target.ask("hold") == "HOLDING");  // a thread stays in hold(), which uses the changed data
  const std::string pid = std::to_string(target.pid());
  const std::regex holder("\\r\\x1b\\[Ksyncing counter-v1 \\(apply\\) in process " + pid +
                          ", [0-9.]+ s: 1 thread runs old code: [0-9]+ \\([^)]+\\) in hold");

  int id = 0;
  for (bool no_daemon : {true, false}) {
    INFO((no_daemon ? "--no-daemon" : "through polusd"));
    ++id;
    std::string shown = polusctl_on_terminal({"apply", pid, patch_path("counter-v0-v1.so"), "--sync-timeout", "1200"}, no_daemon);
    INFO(shown);
    CHECK(std::regex_search(shown, holder));
    CHECK(std::count(shown.begin(), shown.end(), '\r') >= 3);  // refreshed, not printed once
    CHECK_THAT(shown, Catch::Contains("still syncing"));
    // The update stays syncing (the thread is still in hold()): undo it for the next round.
    Run rollback = polusctl({"rollback", pid, "--sync-timeout", "0"});
    INFO(rollback.err);
    CHECK(rollback.status == 0);
    REQUIRE(wait_for_state(target.pid(), id, "") == "");  // rolled back once no thread runs its new code
  }
  // Not on a terminal (a pipe, a log file): no progress lines.
  Run piped = polusctl({"apply", pid, patch_path("counter-v0-v1.so"), "--sync-timeout", "600"});
  CHECK(piped.status == 0);
  CHECK_THAT(piped.err, !Catch::Contains("syncing counter-v1"));
  REQUIRE(target.ask("release") == "RELEASED");
  CHECK(wait_for_state(target.pid(), 3, "committed") == "committed");  // ids are never reused: 1 and 2 were rolled back
}
