// The lock-holding check decides from real frames: stale return addresses into malloc, fork
// or pthread_create left in dead slots of live frames do not hold an update back. A fixture
// built for it, Debian's nginx in daemon mode (its master keeps `fork+0x1f3` from the
// daemonising fork) under light load, and an idle interactive bash.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "child_process.h"
#include "nginx_process.h"
#include "polus/engine.h"
#include "polus/error.h"
#include "binary/tail_calls.h"
#include "common/format.h"
#include "update/target.h"

using namespace std::chrono_literals;

namespace {

polus::EngineOptions options() {
  polus::EngineOptions o;
  o.agent_path = POLUS_AGENT_PATH;
  o.timeout = 10s;
  return o;
}

/// The word of `snap`'s stack that points into `range`, and where it is (0, 0 if none).
std::pair<uint64_t, uint64_t> word_into(const polus::ThreadSnapshot& snap, const polus::AddressRange& range) {
  for (size_t i = 0; i < snap.stack_words.size(); ++i) {
    if (range.contains(snap.stack_words[i])) return {snap.stack_words[i], (snap.sp & ~7ull) + i * 8};
  }
  return {0, 0};
}

}  // namespace

TEST_CASE("stale return addresses into malloc, fork and pthread_create in an idle frame do not block", "[stale][live]") {
  polus::testing::ChildProcess target({STALE_FIXTURE});
  REQUIRE(target.read_line() == "READY");
  REQUIRE(target.ask("value 5") == "15");
  uint64_t frame_low = 0, frame_high = 0;
  {
    std::istringstream in(target.ask("stack"));
    in >> std::hex >> frame_low >> frame_high;
  }
  REQUIRE(frame_low != 0);

  // The fixture is what it claims: its one thread, idle in epoll_wait, has words into malloc,
  // fork and pthread_create inside its idle frame (which the whole-stack scan takes for
  // frames), yet no frame of its CFI unwind is in them.
  {
    polus::TargetContext context(target.pid(), {}, std::chrono::steady_clock::now() + 5s);
    context.seize();
    REQUIRE(context.session().stop_thread(target.pid(), std::chrono::steady_clock::now() + 2s));
    polus::ThreadSnapshot snap = context.snapshot_threads(true).front();
    std::set<std::string> stale;
    for (const polus::AddressRange& range : context.lock_holding_ranges()) {
      auto [word, at] = word_into(snap, range);
      if (word == 0) continue;
      INFO(range.what << ": " << polus::hex(word) << " at " << polus::hex(at));
      CHECK(at >= frame_low);
      CHECK(at <= frame_high);
      stale.insert(range.what);
    }
    std::string names;
    for (const std::string& name : stale) names += name + " ";
    INFO("stale words into: " << names);
    CHECK(stale.count("malloc") + stale.count("__libc_malloc") + stale.count("free") + stale.count("__libc_free") >= 1);
    CHECK(stale.count("fork") + stale.count("_Fork") >= 1);
    CHECK(stale.count("pthread_create") == 1);
    std::optional<polus::RangeHit> hit = context.lock_holder(snap);
    CHECK_FALSE(hit.has_value());
    if (hit) UNSCOPED_INFO(polus::TargetContext::describe_hit(target.pid(), *hit));
  }

  // So it is patched at the first attempt (the old check waited for these words to go, which
  // never happens while the thread idles). The timeout is short so that a wait would show.
  polus::EngineOptions o = options();
  o.timeout = 3s;
  polus::apply_patch(target.pid(), PROLOGUE_PATCH_DIR "/prologue-stale.so", o);
  CHECK(target.ask("value 5") == "4205");
  polus::rollback_patch(target.pid(), o);
  CHECK(target.ask("value 5") == "15");
}

TEST_CASE("where the unwind cannot see, the stale word is named, and no retry is promised", "[stale][live]") {
  // Its thread waits in code without CFI, below the same dead slots: nothing can tell those
  // words from live return addresses, so the conservative answer stands, and says why.
  polus::testing::ChildProcess target({STALE_FIXTURE, "nocfi"});
  REQUIRE(target.read_line() == "READY");
  polus::EngineOptions o = options();
  o.timeout = 300ms;
  try {
    polus::apply_patch(target.pid(), PROLOGUE_PATCH_DIR "/prologue-stale.so", o);
    FAIL("the apply succeeded");
  } catch (const polus::Error& e) {
    const std::string message = e.what();
    INFO(message);
    CHECK(e.code() == polus::ErrorCode::kTimeout);
    CHECK_THAT(message, Catch::Contains("may be inside") && Catch::Contains("its stack holds ") &&
                            Catch::Contains(" at sp+0x") && Catch::Contains("stale") && Catch::Contains("no CFI") &&
                            Catch::Contains("target is unchanged"));
    CHECK_THAT(message, !Catch::Contains("try again"));
  }
  CHECK(polus::read_status(target.pid()).patches.empty());
}

TEST_CASE("code a lock-holding function jumps to counts as that function", "[stale]") {
  // A function at 0x1000: jne out (0x2000), jmp inside, call elsewhere (a frame remains: not a
  // tail call), jmp out (0x3000), ret.
  const std::vector<uint8_t> code = {
      0x0f, 0x85, 0xfa, 0x0f, 0x00, 0x00,  // 1000: jne 0x2000
      0xeb, 0x00,                          // 1006: jmp 0x1008
      0xe8, 0xf3, 0x2f, 0x00, 0x00,        // 1008: call 0x4000
      0xe9, 0xee, 0x1f, 0x00, 0x00,        // 100d: jmp 0x3000
      0xc3,                                // 1012: ret
  };
  CHECK(polus::jump_targets_outside(code, 0x1000) == std::vector<uint64_t>{0x2000, 0x3000});
  CHECK(polus::function_extent({0x1000, 0x2000, 0x2800}, 0x2010) == std::pair<uint64_t, uint64_t>{0x2000, 0x2800});
  CHECK(polus::function_extent({0x1000, 0x2000}, 0x2010) == std::pair<uint64_t, uint64_t>{0, 0});

  // In this libc, some allocator or loader entry points end in jumps to internal functions
  // (memalign to _mid_memalign, dladdr to _dl_addr...): those functions are lock-holding too.
  polus::testing::ChildProcess target({STALE_FIXTURE});
  REQUIRE(target.read_line() == "READY");
  polus::TargetContext context(target.pid(), {}, std::chrono::steady_clock::now() + 5s);
  const polus::LoadedObject* libc = context.symbols().find_object("libc.so.6");
  REQUIRE(libc != nullptr);
  size_t reached = 0;
  for (const polus::AddressRange& range : context.lock_holding_ranges()) {
    if (range.start < libc->text_start || range.start >= libc->text_end) continue;
    std::vector<polus::Symbol> entry = context.symbols().exported_functions(*libc, {range.what});
    if (!entry.empty() && entry.front().address.address() != range.start) ++reached;
  }
  CHECK(reached > 0);
}

// ---------------------------------------------------------------------------------------
// nginx as Debian runs it: daemon on, a master and two workers (harness/nginx_process.h).

using polus::testing::NginxProcess;
using polus::testing::header;
using polus::testing::http_get;

TEST_CASE("nginx in daemon mode: master and workers patched at the first attempt under light load", "[stale][live][nginx]") {
  REQUIRE(std::filesystem::exists("/usr/sbin/nginx"));  // tools/setup-debian.sh installs it
  NginxProcess nginx;
  const std::string first = http_get(nginx.port(), "/index.html");
  REQUIRE(first.find(" 200 ") != std::string::npos);
  REQUIRE(header(first, "Last-Modified").ends_with(" GMT"));

  // Light load: one client in a loop; every answer must be whole and right throughout.
  std::atomic<bool> stop{false};
  std::atomic<int> answers{0}, wrong{0};
  std::thread client([&] {
    while (!stop) {
      std::string r = http_get(nginx.port(), "/index.html");
      bool ok = r.find(" 200 ") != std::string::npos && r.ends_with("\r\n\r\nhello from nginx\n");
      const std::string modified = header(r, "Last-Modified");
      ok = ok && (modified.ends_with(" GMT") || modified.ends_with(" UTC"));
      (ok ? answers : wrong)++;
      std::this_thread::sleep_for(2ms);
    }
  });

  std::vector<pid_t> processes = nginx.workers();
  processes.insert(processes.begin(), nginx.master());
  polus::EngineOptions o = options();
  o.timeout = 3s;  // the old check never found a moment, whatever the timeout
  for (pid_t pid : processes) {
    INFO("nginx process " << pid);
    polus::apply_patch(pid, NGINX_PATCH, o);
    CHECK(polus::read_status(pid).patches.size() == 1);
  }
  // Both workers answer with the new code: Last-Modified comes out in UTC.
  for (int i = 0; i < 10; ++i) {
    std::string r = http_get(nginx.port(), "/index.html");
    CHECK(header(r, "Last-Modified").ends_with(" UTC"));
    CHECK(r.ends_with("hello from nginx\n"));
  }
  for (pid_t pid : processes) polus::rollback_patch(pid, o);
  for (int i = 0; i < 10; ++i) CHECK(header(http_get(nginx.port(), "/index.html"), "Last-Modified").ends_with(" GMT"));
  stop = true;
  client.join();
  CHECK(wrong == 0);
  CHECK(answers > 0);
  for (pid_t pid : processes) CHECK(::kill(pid, 0) == 0);
}

// ---------------------------------------------------------------------------------------
// An idle interactive bash (waiting in readline on its terminal).

namespace {

/// Reads from `fd` until `text` has appeared (returns everything read) or 5 s pass ("").
std::string read_until(int fd, const std::string& text) {
  std::string seen;
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (seen.find(text) == std::string::npos) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return "";
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    char chunk[512];
    ssize_t n = ::read(fd, chunk, sizeof chunk);
    if (n <= 0) return "";
    seen.append(chunk, static_cast<size_t>(n));
  }
  return seen;
}

}  // namespace

TEST_CASE("an idle interactive bash is patched", "[stale][live][bash]") {
  int terminal = -1;
  pid_t bash = ::forkpty(&terminal, nullptr, nullptr, nullptr);
  REQUIRE(bash >= 0);
  if (bash == 0) {
    ::setenv("TERM", "dumb", 1);
    ::setenv("PS1", "READY> ", 1);
    ::execl("/bin/bash", "bash", "--norc", "--noprofile", "-i", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  REQUIRE_FALSE(read_until(terminal, "READY> ").empty());
  auto run = [&](const std::string& line) {
    std::string input = line + "\n";
    REQUIRE(::write(terminal, input.data(), input.size()) == static_cast<ssize_t>(input.size()));
    return read_until(terminal, "READY> ");
  };
  CHECK(run("echo hi there").find("\nhi there") != std::string::npos);
  // Idle at its prompt: what earlier commands left in dead stack slots stays there.
  std::this_thread::sleep_for(100ms);
  polus::EngineOptions o = options();
  o.timeout = 3s;
  polus::apply_patch(bash, BASH_PATCH, o);
  CHECK(run("echo hi there").find("echo-v1: hi there") != std::string::npos);
  polus::rollback_patch(bash, o);
  std::string after = run("echo hi there");
  CHECK(after.find("\nhi there") != std::string::npos);
  CHECK(after.find("echo-v1") == std::string::npos);
  ::kill(bash, SIGKILL);
  ::waitpid(bash, nullptr, 0);
  ::close(terminal);
}
