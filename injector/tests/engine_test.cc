// End-to-end: the greeter server, a real multithreaded TCP target, patched live through
// real ptrace while clients talk to it.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <sstream>
#include <filesystem>
#include <fstream>
#include <thread>

#include "child_process.h"
#include "greeter_process.h"
#include "polus/engine.h"
#include "polus/error.h"
#include "process/ptrace_session.h"

using namespace std::chrono_literals;
using polus::Error;
using polus::ErrorCode;
using polus::testing::binary_path;
using polus::testing::GreeterProcess;
using polus::testing::LoadGenerator;
using polus::testing::patch_path;

namespace {

polus::EngineOptions options() {
  polus::EngineOptions o;
  o.agent_path = POLUS_AGENT_PATH;
  o.timeout = 10s;
  return o;
}

size_t count_lines(const std::string& path) {
  std::ifstream in(path);
  size_t n = 0;
  for (std::string line; std::getline(in, line);) ++n;
  return n;
}

size_t count_entries(const std::string& dir) {
  size_t n = 0;
  for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator(dir)) ++n;
  return n;
}

std::string proc(pid_t pid, const std::string& what) { return "/proc/" + std::to_string(pid) + "/" + what; }

bool maps_mention(pid_t pid, const std::string& needle) {
  std::ifstream in(proc(pid, "maps"));
  for (std::string line; std::getline(in, line);) {
    if (line.find(needle) != std::string::npos) return true;
  }
  return false;
}

ErrorCode apply_error(pid_t pid, const std::string& patch) {
  try {
    polus::apply_patch(pid, patch, options());
  } catch (const Error& e) {
    UNSCOPED_INFO("error: " << e.what());
    return e.code();
  }
  FAIL("apply of " << patch << " succeeded");
  return ErrorCode::kInternal;
}

/// The target is as Polus found it: v0 replies, no agent, no patch.
void check_untouched(GreeterProcess& server) {
  CHECK(server.alive());
  CHECK(server.request("HELLO ann") == "Hello, ann! (v0)");
  CHECK_FALSE(maps_mention(server.pid(), "libpolus-agent.so"));
  CHECK(polus::read_status(server.pid()).patches.empty());
}

size_t thread_count(pid_t pid) {
  std::error_code error;
  size_t n = 0;
  for (auto it = std::filesystem::directory_iterator(proc(pid, "task"), error); !error && it != std::filesystem::directory_iterator(); it.increment(error)) ++n;
  return n;
}

std::vector<pid_t> thread_ids(pid_t pid) {
  std::vector<pid_t> tids;
  for (auto& e : std::filesystem::directory_iterator(proc(pid, "task"))) tids.push_back(std::stoi(e.path().filename()));
  return tids;
}

/// The killed server's parent (this test) can reap it promptly. If not, the threads Polus left
/// as traced zombies are reaped here so the failure is reported instead of hanging the suite.
#define CHECK_REAPED(server, tids)                                              \
  do {                                                                          \
    bool reaped = (server).wait_exit(3000ms).has_value();                       \
    CHECK(reaped);                                                              \
    if (!reaped) {                                                              \
      for (pid_t tid : (tids)) {                                                \
        if (tid != (server).pid()) ::waitpid(tid, nullptr, __WALL | WNOHANG);   \
      }                                                                         \
    }                                                                           \
  } while (0)

}  // namespace

TEST_CASE("apply and rollback under load: every reply is well formed", "[engine][live]") {
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 8);
  LoadGenerator load(server.port(), 4);
  load.start();
  REQUIRE(load.wait_for_replies_per_client(20));

  auto applied = polus::apply_patch(server.pid(), patch_path("greeter-v0-v1.so"), options());
  CHECK(applied.state == "committed");
  CHECK(applied.redirects.size() == 1);
  CHECK(applied.redirects[0].old_name == "format_reply");
  CHECK(server.request("HELLO ann") == "Hi there, ann! (v1)");
  long v1_before = load.count_version(1);
  REQUIRE(load.wait_for_replies(load.ok() + 200));
  CHECK(load.count_version(1) > v1_before);

  polus::rollback_patch(server.pid(), options());
  CHECK(server.request("HELLO ann") == "Hello, ann! (v0)");
  long v0_after = load.count_version(0);
  REQUIRE(load.wait_for_replies(load.ok() + 200));
  CHECK(load.count_version(0) > v0_after);
  load.stop();

  CHECK(load.malformed() == 0);
  CHECK(load.connection_failures() == 0);
  CHECK(server.stats().at("eintr") == 0);
}

TEST_CASE("100 apply/rollback cycles leak no thread, mapping or descriptor", "[engine][live]") {
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  const size_t threads = count_entries(proc(server.pid(), "task"));
  // The first cycle loads the agent and maps the trampoline arena for good: measure after it.
  polus::apply_patch(server.pid(), patch_path("greeter-v0-v1.so"), options());
  polus::rollback_patch(server.pid(), options());
  const size_t maps = count_lines(proc(server.pid(), "maps"));
  const size_t fds = count_entries(proc(server.pid(), "fd"));
  for (int i = 0; i < 100; ++i) {
    polus::apply_patch(server.pid(), patch_path("greeter-v0-v1.so"), options());
    REQUIRE(server.request("HELLO cy") == "Hi there, cy! (v1)");
    polus::rollback_patch(server.pid(), options());
    REQUIRE(server.request("HELLO cy") == "Hello, cy! (v0)");
  }
  CHECK(count_entries(proc(server.pid(), "task")) == threads);
  CHECK(count_lines(proc(server.pid(), "maps")) == maps);
  // The last request's connection may still be closing on the server side: give it a moment.
  for (int i = 0; i < 100 && count_entries(proc(server.pid(), "fd")) != fds; ++i) std::this_thread::sleep_for(10ms);
  CHECK(count_entries(proc(server.pid(), "fd")) == fds);
  auto stats = server.stats();
  CHECK(stats.at("eintr") == 0);
  CHECK(server.ticks().at("short_sleeps") == 0);
}

TEST_CASE("signals sent during apply and rollback all arrive", "[engine][live][signals]") {
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  std::atomic<bool> done{false};
  std::atomic<long> rt_sent{0}, usr1_sent{0};
  std::thread sender([&] {
    while (!done) {
      // Real-time signals queue, so every one must be counted.
      sigval value{};
      if (sigqueue(server.pid(), SIGRTMIN, value) == 0) ++rt_sent;
      std::this_thread::sleep_for(200us);
    }
  });
  std::thread usr1_sender([&] {
    // Standard signals merge while pending (kernel semantics), so send the next SIGUSR1
    // only once the previous one was counted.
    while (!done) {
      long before = usr1_sent.load();
      kill(server.pid(), SIGUSR1);
      ++usr1_sent;
      for (int i = 0; i < 2000 && !done; ++i) {
        if (server.stats().at("sigusr1") > before) break;
        std::this_thread::sleep_for(1ms);
      }
    }
  });
  for (int i = 0; i < 15; ++i) {
    polus::apply_patch(server.pid(), patch_path("greeter-v0-v1.so"), options());
    polus::rollback_patch(server.pid(), options());
  }
  done = true;
  sender.join();
  usr1_sender.join();
  REQUIRE(rt_sent > 0);
  // Give the last ones a moment to be handled.
  for (int i = 0; i < 200; ++i) {
    auto s = server.stats();
    if (s.at("sigrt") == rt_sent && s.at("sigusr1") == usr1_sent) break;
    std::this_thread::sleep_for(5ms);
  }
  auto stats = server.stats();
  CHECK(stats.at("sigrt") == rt_sent.load());
  CHECK(stats.at("sigusr1") == usr1_sent.load());
  CHECK(stats.at("eintr") == 0);
}

TEST_CASE("threads blocked in syscalls never see EINTR", "[engine][live]") {
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  // A persistent connection keeps one worker blocked in read() on the socket.
  polus::testing::Client idle(server.port());
  REQUIRE(idle.request("HELLO idle") == "Hello, idle! (v0)");
  for (int i = 0; i < 20; ++i) {
    polus::apply_patch(server.pid(), patch_path("greeter-v0-v1.so"), options());
    polus::rollback_patch(server.pid(), options());
  }
  std::this_thread::sleep_for(250ms);  // a full nanosleep tick after the last rollback
  CHECK(idle.request("HELLO idle") == "Hello, idle! (v0)");
  CHECK(server.stats().at("eintr") == 0);
  CHECK(server.ticks().at("short_sleeps") == 0);
}

TEST_CASE("a second patch of the same function jumps straight to the newest version", "[engine][live]") {
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  auto first = polus::apply_patch(server.pid(), patch_path("greeter-v0-v1.so"), options());
  auto second = polus::apply_patch(server.pid(), patch_path("greeter-v1-v2.so"), options());
  CHECK(server.request("HELLO bo") == "Greetings, bo! (v2)");
  REQUIRE(second.redirects.size() == 1);
  CHECK(second.redirects[0].stacked);
  // One hop: the old function's jump (or its one trampoline) now leads to v2 directly.
  CHECK(second.redirects[0].patch_site == first.redirects[0].patch_site);
  CHECK(second.redirects[0].trampoline == first.redirects[0].trampoline);
  auto status = polus::read_status(server.pid());
  REQUIRE(status.patches.size() == 2);
  CHECK(status.patches[1].name == "greeter-v2");
  polus::rollback_patch(server.pid(), options());
  CHECK(server.request("HELLO bo") == "Hi there, bo! (v1)");
  polus::rollback_patch(server.pid(), options());
  CHECK(server.request("HELLO bo") == "Hello, bo! (v0)");
  CHECK(apply_error(server.pid(), patch_path("bad-missing-symbol.so")) == ErrorCode::kSymbolNotFound);
}

TEST_CASE("a patch that only runs callbacks is applied and rolled back", "[engine][live]") {
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  CHECK(server.request("HELLO ann") == "Hello, ann! (v0)");
  auto requests = [&] {
    std::string stats = server.request("STATS");
    return std::stol(stats.substr(stats.find("requests=") + 9));
  };
  CHECK(requests() == 1);
  polus::PatchInfo info = polus::apply_patch(server.pid(), patch_path("greeter-callbacks.so"), options());
  CHECK(info.redirects.empty());
  CHECK(info.state == "committed");
  CHECK(requests() == 1000001);  // the pre-update callback's fix, then the post-update one's count
  CHECK(server.request("HELLO ann") == "Hello, ann! (v0)");
  CHECK(requests() == 1000002);
  // A patch that changes no data rolls back without running code (only bytes go back: none
  // here); the patch is unloaded.
  polus::rollback_patch(server.pid(), options());
  CHECK(requests() == 1000002);
  CHECK(polus::read_status(server.pid()).patches.empty());
  CHECK_FALSE(maps_mention(server.pid(), "greeter-callbacks.so"));
}

TEST_CASE("a stopped target is named as such, not waited for", "[engine][live][errors]") {
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  polus::apply_patch(server.pid(), patch_path("greeter-v0-v1.so"), options());
  REQUIRE(::kill(server.pid(), SIGSTOP) == 0);
  auto state = [&] {
    std::ifstream in(proc(server.pid(), "stat"));
    std::string line;
    std::getline(in, line);
    return line.substr(line.rfind(')') + 2, 1);
  };
  for (int i = 0; i < 500 && state() != "T"; ++i) std::this_thread::sleep_for(2ms);
  REQUIRE(state() == "T");
  for (bool rollback : {false, true}) {
    try {
      if (rollback) polus::rollback_patch(server.pid(), options());
      else polus::apply_patch(server.pid(), patch_path("greeter-v1-v2.so"), options());
      FAIL("succeeded on a stopped process");
    } catch (const Error& e) {
      INFO(e.what());
      CHECK(e.code() == ErrorCode::kUnsafeToPatch);  // at once: a wait would end in kTimeout
      CHECK_THAT(e.what(), Catch::Contains("is stopped (SIGSTOP") &&
                               Catch::Contains("kill -CONT " + std::to_string(server.pid())));
    }
  }
  CHECK(state() == "T");  // still stopped, as its sender wanted
  REQUIRE(::kill(server.pid(), SIGCONT) == 0);
  CHECK(server.request("HELLO ann") == "Hi there, ann! (v1)");
  CHECK(polus::read_status(server.pid()).patches.size() == 1);
  polus::rollback_patch(server.pid(), options());
  CHECK(server.request("HELLO ann") == "Hello, ann! (v0)");
}

TEST_CASE("stripped, static, ambiguous and endbr64 targets", "[engine][live]") {
  SECTION("stripped: symbols from .dynsym only") {
    auto server = GreeterProcess::spawn(binary_path("greeter-v0-stripped"), 4);
    polus::apply_patch(server.pid(), patch_path("greeter-v0-v1.so"), options());
    CHECK(server.request("HELLO st") == "Hi there, st! (v1)");
    polus::rollback_patch(server.pid(), options());
    CHECK(server.request("HELLO st") == "Hello, st! (v0)");
  }
  SECTION("a static function") {
    auto server = GreeterProcess::spawn(binary_path("greeter-v0-static"), 4);
    polus::apply_patch(server.pid(), patch_path("greeter-v0-v1.so"), options());
    CHECK(server.request("HELLO st") == "Hi there, st! (v1)");
  }
  SECTION("two static functions of one name: refused with candidates, or named by file") {
    auto server = GreeterProcess::spawn(binary_path("greeter-v0-ambiguous"), 4);
    try {
      polus::apply_patch(server.pid(), patch_path("greeter-v0-v1.so"), options());
      FAIL("ambiguous name accepted");
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::kSymbolAmbiguous);
      CHECK_THAT(e.what(), Catch::Contains("greeter.c:format_reply"));
    }
    check_untouched(server);
    polus::apply_patch(server.pid(), patch_path("greeter-v0-v1-static.so"), options());
    CHECK(server.request("HELLO am") == "Hi there, am! (v1)");
  }
  SECTION("endbr64 entries") {
    auto server = GreeterProcess::spawn(binary_path("greeter-v0-cet"), 4);
    auto info = polus::apply_patch(server.pid(), patch_path("greeter-v0-v1.so"), options());
    CHECK(info.redirects[0].patch_site == info.redirects[0].old_function + 4);
    CHECK(server.request("HELLO ce") == "Hi there, ce! (v1)");
    polus::rollback_patch(server.pid(), options());
    CHECK(server.request("HELLO ce") == "Hello, ce! (v0)");
  }
  SECTION("a patch written in C++") {
    auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
    polus::apply_patch(server.pid(), patch_path("greeter-v0-v1-cxx.so"), options());
    CHECK(server.request("HELLO cx") == "Hi there, cx! (v1)");
  }
}

TEST_CASE("bad input is refused precisely and the target is left as it was", "[engine][live][errors]") {
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);

  SECTION("malformed patches") {
    for (const char* bad : {"bad-no-descriptor.so", "bad-magic.so", "bad-index.so", "bad-truncated.so", "not-an-elf.so"}) {
      INFO(bad);
      CHECK(apply_error(server.pid(), patch_path(bad)) == ErrorCode::kPatchMalformed);
    }
    CHECK(apply_error(server.pid(), patch_path("no-such-file.so")) == ErrorCode::kPatchMalformed);
    check_untouched(server);
  }
  SECTION("a missing symbol is named") {
    try {
      polus::apply_patch(server.pid(), patch_path("bad-missing-symbol.so"), options());
      FAIL("applied");
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::kSymbolNotFound);
      CHECK_THAT(e.what(), Catch::Contains("no_such_function_anywhere"));
    }
    check_untouched(server);
  }
  SECTION("a patch for another build") {
    CHECK(apply_error(server.pid(), patch_path("bad-build-id.so")) == ErrorCode::kBuildMismatch);
    check_untouched(server);
  }
  SECTION("dlopen fails in the target: dlerror's text, agent unloaded again") {
    try {
      polus::apply_patch(server.pid(), patch_path("bad-undefined.so"), options());
      FAIL("applied");
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::kLoadFailed);
      CHECK_THAT(e.what(), Catch::Contains("undefined symbol"));
    }
    check_untouched(server);
  }
  SECTION("patch code that crashes runs only in the rehearsal's copy") {
    // bad-ctor-exit.so would end the target and bad-ctor-loop.so hang it in the dynamic
    // loader (the copy's load is given up after its step deadline, 5 s).
    for (const char* name : {"bad-ctor-abort.so", "bad-ctor-segv.so", "bad-pre-update-segv.so", "bad-ctor-exit.so",
                             "bad-ctor-loop.so"}) {
      INFO(name);
      try {
        polus::apply_patch(server.pid(), patch_path(name), options());
        FAIL("applied");
      } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::kLoadFailed);
        CHECK_THAT(e.what(), Catch::Contains("rehearsed in a copy") && Catch::Contains("not touched"));
        if (std::string(name) == "bad-ctor-exit.so") CHECK_THAT(e.what(), Catch::Contains("exit with status 3"));
      }
      check_untouched(server);
    }
    // Nothing raised in the copy reaches the target later.
    std::this_thread::sleep_for(300ms);
    CHECK(server.alive());
    CHECK(server.request("HELLO ann") == "Hello, ann! (v0)");
  }
  SECTION("without the rehearsal, a constructor's abort() is not delivered to the target") {
    polus::EngineOptions direct = options();
    direct.rehearse = false;
    try {
      polus::apply_patch(server.pid(), patch_path("bad-ctor-abort.so"), direct);
      FAIL("applied");
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::kLoadFailed);
      CHECK_THAT(e.what(), Catch::Contains("signal 6"));
    }
    std::this_thread::sleep_for(300ms);
    CHECK(server.alive());
    CHECK(server.request("HELLO ann") == "Hello, ann! (v0)");
    CHECK(polus::read_status(server.pid()).patches.empty());
  }
  SECTION("no such process") {
    // Above pid_max: no process can have it.
    std::ifstream pid_max_file("/proc/sys/kernel/pid_max");
    long pid_max = 0;
    pid_max_file >> pid_max;
    const pid_t missing = static_cast<pid_t>(pid_max + 1);
    CHECK(apply_error(missing, patch_path("greeter-v0-v1.so")) == ErrorCode::kNoSuchProcess);
    try {
      polus::read_status(missing);
      FAIL("status of a missing process");
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::kNoSuchProcess);
    }
  }
  SECTION("nothing to roll back") {
    try {
      polus::rollback_patch(server.pid(), options());
      FAIL("rolled back nothing");
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::kNothingToRollBack);
    }
    check_untouched(server);
  }
  SECTION("already traced by another debugger") {
    int ready[2];
    REQUIRE(pipe(ready) == 0);
    pid_t tracer = fork();
    if (tracer == 0) {
      char ok = ptrace(PTRACE_SEIZE, server.pid(), nullptr, nullptr) == 0 ? 'y' : 'n';
      (void)!write(ready[1], &ok, 1);
      pause();
      _exit(0);
    }
    char ok = 0;
    REQUIRE(read(ready[0], &ok, 1) == 1);
    REQUIRE(ok == 'y');
    try {
      polus::apply_patch(server.pid(), patch_path("greeter-v0-v1.so"), options());
      FAIL("applied under another tracer");
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::kAlreadyTraced);
      CHECK_THAT(e.what(), Catch::Contains(std::to_string(tracer)));
    }
    kill(tracer, SIGKILL);
    waitpid(tracer, nullptr, 0);
    close(ready[0]);
    close(ready[1]);
    check_untouched(server);
  }
  SECTION("permission denied for an unprivileged user") {
    if (geteuid() != 0) {
      WARN("skipped: needs root to switch to an unprivileged user");
      return;
    }
    pid_t child = fork();
    if (child == 0) {
      if (setgid(65534) != 0 || setuid(65534) != 0) _exit(100);
      try {
        polus::apply_patch(server.pid(), patch_path("greeter-v0-v1.so"), options());
        _exit(101);
      } catch (const Error& e) {
        _exit(e.code() == ErrorCode::kPermissionDenied ? 0 : 102);
      }
    }
    int status = 0;
    waitpid(child, &status, 0);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    check_untouched(server);
  }
}

TEST_CASE("a target that dies during apply gives a clear error, not a hang", "[engine][live][errors]") {
  // Kill times from before the seize to after the detach (an apply takes ~5-10 ms here), so
  // some land while the threads are held, being detached, or already let go.
  for (int delay_us = 0; delay_us <= 12000; delay_us += 400) {
    auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
    std::vector<pid_t> tids = thread_ids(server.pid());
    std::thread killer([&] {
      std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
      kill(server.pid(), SIGKILL);
    });
    try {
      auto info = polus::apply_patch(server.pid(), patch_path("greeter-v0-v1.so"), options());
      CHECK(info.state == "committed");  // the apply won the race: then it was a complete one
    } catch (const Error& e) {
      INFO(e.what());
      CHECK((e.code() == ErrorCode::kTargetDied || e.code() == ErrorCode::kNoSuchProcess));
    }
    killer.join();
    CHECK_REAPED(server, tids);
  }
}

TEST_CASE("a target killed while Polus holds it can be reaped by its parent at once", "[engine][live][errors]") {
  // Threads of a traced process that die stay zombies until their tracer reaps them, and the
  // thread-group leader is not reported to its parent before the other threads are gone
  // (kernel/exit.c, delay_group_leader). A session that merely forgot its dead threads would
  // leave the target's parent (systemd, a shell, this test) waiting forever.
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  std::vector<pid_t> tids;
  {
    auto session = polus::PtraceSession::seize(server.pid());
    session.stop_all(polus::Clock::now() + 5s);
    tids = session.thread_ids();
    REQUIRE(tids.size() >= 5);
    kill(server.pid(), SIGKILL);
    std::this_thread::sleep_for(50ms);  // every thread is a zombie by now
  }
  CHECK_REAPED(server, tids);
}

TEST_CASE("a target killed while Polus holds it is handed back to its real parent", "[engine][live][errors]") {
  // As with polusctl or polusd, the tracer is not the target's parent here. Once the dead
  // threads are reaped, the tracer's wait on the zombie leader hands it back to the real parent
  // (kernel/exit.c, wait_task_zombie), whose own wait then returns.
  int report[2], announce[2];
  REQUIRE(pipe(report) == 0);
  REQUIRE(pipe(announce) == 0);
  const std::string greeter = binary_path("greeter-v0");
  pid_t parent = fork();
  if (parent == 0) {
    pid_t child = fork();
    if (child == 0) {
      int null = open("/dev/null", O_RDWR);
      dup2(null, 1);
      execl(greeter.c_str(), "greeter-v0", "--workers", "4", nullptr);
      _exit(127);
    }
    (void)!write(announce[1], &child, sizeof child);
    int status = 0;
    char reaped = waitpid(child, &status, 0) == child ? 'y' : 'n';
    (void)!write(report[1], &reaped, 1);
    _exit(0);
  }
  pid_t target = 0;
  REQUIRE(read(announce[0], &target, sizeof target) == sizeof target);
  auto started = std::chrono::steady_clock::now();
  while (thread_count(target) < 9 && std::chrono::steady_clock::now() - started < 5s) std::this_thread::sleep_for(5ms);
  REQUIRE(thread_count(target) >= 9);  // main, acceptor, 4 workers, idle threads, ticker
  std::vector<pid_t> tids;
  {
    auto session = polus::PtraceSession::seize(target);
    session.stop_all(polus::Clock::now() + 5s);
    tids = session.thread_ids();
    kill(target, SIGKILL);
    std::this_thread::sleep_for(50ms);
  }
  pollfd pfd{report[0], POLLIN, 0};
  char reaped = 'n';
  bool answered = poll(&pfd, 1, 3000) == 1 && read(report[0], &reaped, 1) == 1;
  CHECK(answered);
  CHECK(reaped == 'y');
  if (!answered) {  // unwedge: release the traced zombies so the parent can finish
    for (pid_t tid : tids) ::waitpid(tid, nullptr, __WALL | WNOHANG);
  }
  kill(parent, SIGKILL);
  waitpid(parent, nullptr, 0);
  for (int fd : {report[0], report[1], announce[0], announce[1]}) close(fd);
}

TEST_CASE("a target living in malloc, dlopen and thread creation is patched without deadlock", "[engine][live]") {
  polus::testing::ChildProcess target({BUSY_FIXTURE});
  REQUIRE(target.read_line() == "READY");
  CHECK(target.ask("value 5") == "15");
  // One of its threads lives in dlopen/dlclose: a copy to rehearse the load in can be made
  // only in the rare instant it is between two calls (the copy would inherit the loader's
  // lock held by a thread it lacks). Within a short timeout the apply either finds that
  // instant or says why not, changing nothing; the operator can choose to load without it.
  polus::EngineOptions rehearsed = options();
  rehearsed.timeout = 300ms;
  try {
    polus::apply_patch(target.pid(), PROLOGUE_PATCH_DIR "/prologue-busy.so", rehearsed);
    CHECK(target.ask("value 5") == "4205");
    polus::rollback_patch(target.pid(), options());
  } catch (const polus::Error& e) {
    CHECK(e.code() == polus::ErrorCode::kUnsafeToPatch);
    // The loader thread, or a thread being created (its stack unwinds no further than clone3).
    CHECK_THAT(e.what(), Catch::Contains("copy") &&
                             (Catch::Contains("dynamic loader") || Catch::Contains("pthread_create")));
  }
  CHECK(target.ask("value 5") == "15");
  CHECK(polus::read_status(target.pid()).patches.empty());
  polus::EngineOptions direct = options();
  direct.rehearse = false;
  for (int i = 0; i < 20; ++i) {
    polus::apply_patch(target.pid(), PROLOGUE_PATCH_DIR "/prologue-busy.so", direct);
    REQUIRE(target.ask("value 5") == "4205");
    polus::rollback_patch(target.pid(), direct);
    REQUIRE(target.ask("value 5") == "15");
  }
  // Every storm is still making progress: nothing was left holding a lock.
  auto progress = [&] {
    std::istringstream in(target.ask("progress"));
    long m = 0, d = 0, t = 0;
    in >> m >> d >> t;
    return std::array<long, 3>{m, d, t};
  };
  auto before = progress();
  std::this_thread::sleep_for(200ms);
  auto after = progress();
  for (int i = 0; i < 3; ++i) CHECK(after[i] > before[i]);
}

TEST_CASE("Ctrl-C reaching polusctl while it waits stops it cleanly, the target unchanged", "[engine][live][errors]") {
  polus::testing::ChildProcess target({PROLOGUE_FIXTURE});
  REQUIRE(target.read_line() == "READY");
  // A thread spins in the bytes the jump would replace: the commit retries until SIGINT.
  REQUIRE(target.ask("spin 60") == "SPINNING");
  int err_pipe[2];
  REQUIRE(pipe(err_pipe) == 0);
  const std::string pid = std::to_string(target.pid());
  const std::string audit = std::string(POLUS_BUILD_DIR) + "/polusctl-test-audit.log";
  pid_t polusctl = fork();
  if (polusctl == 0) {
    dup2(err_pipe[1], 2);
    close(err_pipe[0]);
    execl(POLUSCTL_PATH, "polusctl", "apply", pid.c_str(), PROLOGUE_PATCH_DIR "/prologue-spin.so", "--agent",
          POLUS_AGENT_PATH, "--timeout", "20000", "--no-daemon", "--audit-log", audit.c_str(), nullptr);
    _exit(127);
  }
  close(err_pipe[1]);
  std::this_thread::sleep_for(500ms);
  const auto sent = std::chrono::steady_clock::now();
  kill(polusctl, SIGINT);
  int status = 0;
  REQUIRE(waitpid(polusctl, &status, 0) == polusctl);
  const auto took = std::chrono::steady_clock::now() - sent;
  std::string err;
  std::array<char, 4096> buf;
  for (ssize_t n; (n = read(err_pipe[0], buf.data(), buf.size())) > 0;) err.append(buf.data(), static_cast<size_t>(n));
  close(err_pipe[0]);
  INFO(err);
  REQUIRE(WIFEXITED(status));  // not killed by the signal: it stopped by itself
  CHECK(WEXITSTATUS(status) == 15);
  CHECK_THAT(err, Catch::Contains("stopped by") && Catch::Contains("target unchanged"));
  CHECK(took < 3s);
  CHECK(polus::read_status(target.pid()).patches.empty());
  CHECK_FALSE(maps_mention(target.pid(), "/memfd:polus:"));  // the interrupted load was undone
  target.send("release");
  CHECK(target.read_line() == "RELEASED");
  CHECK(target.alive());
}
