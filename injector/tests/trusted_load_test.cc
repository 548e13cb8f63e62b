// The target loads exactly the bytes Polus checked (update/patch_memfd): real files swapped
// by a real second user while root applies, a patch rebuilt at the same path, the same patch
// twice, a target in its own mount and pid namespace that cannot see the patch's path, and a
// registry of another ABI version. Needs root (users, chown, unshare).
#include <catch2/catch.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "greeter_process.h"
#include "polusctl_run.h"
#include "process/process_maps.h"
#include "process/process_memory.h"
#include "trust_fixtures.h"
#include "update/registry.h"
#include "update/target.h"

using namespace polus::testing;
using Run = polus::testing::PolusctlRun;

namespace {

Run polusctl(const std::vector<std::string>& args) { return run_polusctl(args); }

/// How many `mark` bytes the race patches' constructors left.
long marks(char mark) {
  std::string text = file_text(RACE_MARK_FILE);
  return std::count(text.begin(), text.end(), mark);
}

/// A child, running as `uid`, that keeps swapping `path` between hard links of `first` and
/// `second` (rename(2) is atomic: a reader opens one or the other) until killed.
pid_t start_swapper(uid_t uid, const std::string& first, const std::string& second, const std::string& path) {
  const std::string temporary = path + ".swap";
  pid_t child = fork();
  if (child == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (setresgid(65534, 65534, 65534) != 0 || setresuid(uid, uid, uid) != 0) _exit(100);
    // A swap every 100 us: many per apply (each takes milliseconds), without taking a whole
    // CPU from the tests running beside this one.
    const timespec pause{0, 100000};
    for (;;) {
      for (const std::string* from : {&first, &second}) {
        unlink(temporary.c_str());
        if (link(from->c_str(), temporary.c_str()) != 0 || rename(temporary.c_str(), path.c_str()) != 0) _exit(101);
        nanosleep(&pause, nullptr);
      }
    }
  }
  return child;
}

}  // namespace

TEST_CASE("a swap loop beside 100 applies never gets a refused file's constructor to run", "[trust][race][live]") {
  if (!running_as_root()) return;
  TempDir dir;
  const uid_t user = test_user();
  // The user's own directory and files: root trusts them only with --allow-owner, and the user
  // can rename anything in it at any moment.
  const std::string own = make_dir(dir / "user", 0755, user);
  const std::string good = copy_file(patch_path("race-good.so"), own + "/good.so", 0644, user);
  const std::string bad = copy_file(patch_path("race-bad.so"), own + "/bad.so", 0644, user);
  const std::string race = copy_file(good, own + "/race.so", 0644, user);
  std::filesystem::remove(RACE_MARK_FILE);
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  const std::string pid = std::to_string(server.pid());
  const std::vector<std::string> allow = {"--allow-owner", kTestUser};

  // The marks work: the good patch's constructor marks (in the rehearsal's copy and in the
  // target); the bad one is refused before any of its code runs.
  Run refused = polusctl({"apply", pid, bad, allow[0], allow[1]});
  CHECK(refused.status == 8);
  CHECK_THAT(refused.err, Catch::Contains("wrong magic"));
  Run applied = polusctl({"apply", pid, good, allow[0], allow[1]});
  INFO(applied.err);
  REQUIRE(applied.status == 0);
  CHECK(marks('g') == 2);
  REQUIRE(polusctl({"rollback", pid}).status == 0);

  pid_t swapper = start_swapper(user, good, bad, race);
  int ok = 0, malformed = 0;
  std::vector<std::string> other;
  for (int i = 0; i < 100; ++i) {
    Run apply = polusctl({"apply", pid, race, allow[0], allow[1]});
    if (apply.status == 0) {
      ++ok;
      Run rollback = polusctl({"rollback", pid});
      if (rollback.status != 0) other.push_back("rollback: " + rollback.err);
    } else if (apply.status == 8) {
      ++malformed;
    } else {
      other.push_back("apply " + std::to_string(apply.status) + ": " + apply.err);
    }
  }
  kill(swapper, SIGKILL);
  int status = 0;
  waitpid(swapper, &status, 0);
  CHECK((WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL));  // it swapped all along
  INFO("applied " << ok << ", refused " << malformed);
  for (const std::string& line : other) UNSCOPED_INFO(line);
  CHECK(other.empty());
  CHECK(ok > 0);         // both files were read...
  CHECK(malformed > 0);  // ...so the race was real
  CHECK(marks('b') == 0);  // and the refused one never ran
  CHECK(marks('g') >= 2 * (ok + 1));
  CHECK(server.alive());
  CHECK(server.request("HELLO op") == "Hello, op! (v0)");
}

TEST_CASE("a rebuilt patch at the same path is new code; the same bytes twice are 'already applied'",
          "[trust][live]") {
  if (!running_as_root()) return;
  TempDir dir;
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  const std::string pid = std::to_string(server.pid());
  const std::string patch = copy_file(patch_path("greeter-v0-v1.so"), dir / "patch.so");

  Run first = polusctl({"apply", pid, patch, "--json"});
  INFO(first.err);
  REQUIRE(first.status == 0);
  CHECK_THAT(first.out, Catch::Contains("\"already_applied\":false"));
  CHECK(server.request("HELLO op") == "Hi there, op! (v1)");
  CHECK(maps_mention(server.pid(), "/memfd:polus:greeter-v1:"));  // the bytes, not the path
  CHECK_FALSE(maps_mention(server.pid(), patch));

  SECTION("the same bytes again, from the same path or another: nothing changes") {
    const std::string copy = copy_file(patch, dir / "copy.so");
    for (const std::string& path : {patch, copy}) {
      Run again = polusctl({"apply", pid, path});
      INFO(again.err);
      CHECK(again.status == 0);
      CHECK_THAT(again.out, Catch::Contains("greeter-v1 is already applied to process " + pid + " (id 1") &&
                                Catch::Contains("nothing changed"));
    }
    Run json = polusctl({"apply", pid, patch, "--json"});
    CHECK(json.status == 0);
    CHECK_THAT(json.out, Catch::Contains("\"already_applied\":true") && Catch::Contains("\"id\":1,"));
    Run status = polusctl({"status", pid, "--json"});
    CHECK_THAT(status.out, !Catch::Contains("\"id\":2"));
  }

  SECTION("a different file at the same path is a different patch, and its code runs") {
    copy_file(patch_path("greeter-v1-v2.so"), patch);  // rebuilt in place
    Run second = polusctl({"apply", pid, patch});
    INFO(second.err);
    REQUIRE(second.status == 0);
    CHECK_THAT(second.out, Catch::Contains("applied greeter-v2"));
    CHECK(server.request("HELLO op") == "Greetings, op! (v2)");
    Run status = polusctl({"status", pid, "--json"});
    CHECK_THAT(status.out, Catch::Contains("\"id\":1,") && Catch::Contains("\"id\":2,"));
    Run table = polusctl({"status", pid});
    CHECK_THAT(table.out, Catch::Contains("SHA256"));

    // The file is gone now: rollbacks need nothing of it.
    std::filesystem::remove(patch);
    CHECK(polusctl({"rollback", pid}).status == 0);
    CHECK(server.request("HELLO op") == "Hi there, op! (v1)");
    CHECK(polusctl({"rollback", pid}).status == 0);
    CHECK(server.request("HELLO op") == "Hello, op! (v0)");
    CHECK_FALSE(maps_mention(server.pid(), "/memfd:polus:"));
  }
}

TEST_CASE("two patches with the same DT_SONAME are two libraries", "[trust][live]") {
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  const std::string pid = std::to_string(server.pid());
  Run first = polusctl({"apply", pid, patch_path("soname-v1.so")});
  INFO(first.err);
  REQUIRE(first.status == 0);
  Run second = polusctl({"apply", pid, patch_path("soname-v2.so")});
  INFO(second.err);
  REQUIRE(second.status == 0);
  // glibc compares a loaded library's soname with the name asked for, never "/proc/self/fd/N".
  CHECK(server.request("HELLO op") == "Greetings, op! (v2)");
  CHECK(maps_mention(server.pid(), "/memfd:polus:greeter-v1:"));
  CHECK(maps_mention(server.pid(), "/memfd:polus:greeter-v2:"));
  CHECK(polusctl({"rollback", pid}).status == 0);
  CHECK(server.request("HELLO op") == "Hi there, op! (v1)");
  CHECK(polusctl({"rollback", pid}).status == 0);
}

TEST_CASE("a data patch whose file is gone is rolled back from the bytes the target loaded", "[trust][live]") {
  if (!running_as_root()) return;
  TempDir dir;
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  const std::string pid = std::to_string(server.pid());
  const std::string patch = copy_file(patch_path("greeter-v0-v1-data.so"), dir / "data.so");
  Run applied = polusctl({"apply", pid, patch, "--sync-timeout", "100"});  // may stay syncing: fine
  INFO(applied.err);
  REQUIRE(applied.status == 0);
  std::filesystem::remove(patch);
  Run rollback = polusctl({"rollback", pid, "--sync-timeout", "5000"});
  INFO(rollback.err);
  CHECK(rollback.status == 0);
  CHECK(server.request("HELLO op") == "Hello, op! (v0)");
}

namespace {

/// The greeter as pid 1 of its own pid and mount namespaces (unshare), with a tmpfs mounted
/// over each of `hidden` inside, so the patch's path (and the agent's) does not exist there.
struct NamespacedGreeter {
  pid_t unshare = -1;
  pid_t greeter = -1;  // its pid in our namespace
  int port = 0;
  int stdout_fd = -1;  // kept open: the greeter must not get SIGPIPE for a later line

  explicit NamespacedGreeter(const std::vector<std::string>& hidden) {
    int out[2];
    REQUIRE(pipe2(out, O_CLOEXEC) == 0);
    std::string script;
    for (const std::string& dir : hidden) script += "mount -t tmpfs polus-hidden " + dir + " && ";
    script += "exec " + binary_path("greeter-v0") + " --port 0 --workers 4";
    unshare = fork();
    if (unshare == 0) {
      dup2(out[1], 1);
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      execlp("unshare", "unshare", "--mount", "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c",
             script.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    close(out[1]);
    std::string line;
    char c;
    while (line.find('\n') == std::string::npos && read(out[0], &c, 1) == 1) line += c;
    stdout_fd = out[0];
    REQUIRE(std::sscanf(line.c_str(), "PORT %d", &port) == 1);
    // unshare's child: the greeter (sh exec'd it).
    for (int attempt = 0; attempt < 100 && greeter < 0; ++attempt) {
      for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
        const std::string name = entry.path().filename();
        if (name.find_first_not_of("0123456789") != std::string::npos) continue;
        std::string stat = file_text("/proc/" + name + "/stat");
        size_t close_paren = stat.rfind(')');
        if (close_paren == std::string::npos) continue;
        int ppid = 0;
        char state = 0;
        if (std::sscanf(stat.c_str() + close_paren + 1, " %c %d", &state, &ppid) == 2 && ppid == unshare) {
          greeter = std::stoi(name);
        }
      }
    }
    REQUIRE(greeter > 0);
  }
  ~NamespacedGreeter() {
    if (greeter > 0) kill(greeter, SIGKILL);
    if (unshare > 0) {
      kill(unshare, SIGKILL);
      waitpid(unshare, nullptr, 0);
    }
    if (stdout_fd >= 0) close(stdout_fd);
  }
  std::string request(const std::string& text) const { return Client(port).request(text); }
};

}  // namespace

TEST_CASE("a target in its own mount and pid namespace, where neither the patch's path nor the agent's exists",
          "[trust][live]") {
  if (!running_as_root()) return;
  if (std::system("unshare --mount --pid --fork --mount-proc true >/dev/null 2>&1") != 0) {
    WARN("unshare --mount --pid cannot run here (no privileges for namespaces?); skipped");
    return;
  }
  TempDir dir;
  const std::string hidden = make_dir(dir / "hidden", 0755);
  const std::string patch = copy_file(patch_path("greeter-v0-v1.so"), hidden + "/greeter-v0-v1.so");
  // The agent polusctl loads (tools/polusctl: the build tree's, beside it).
  const std::string agent_dir = std::filesystem::path(POLUS_AGENT_PATH).parent_path();
  NamespacedGreeter server({hidden, agent_dir});
  const std::string pid = std::to_string(server.greeter);
  // Inside, the paths lead to empty tmpfs; the greeter is its namespace's pid 1.
  CHECK_FALSE(std::filesystem::exists("/proc/" + pid + "/root" + patch));
  CHECK_FALSE(std::filesystem::exists("/proc/" + pid + "/root" + std::string(POLUS_AGENT_PATH)));
  CHECK(file_text("/proc/" + pid + "/status").find("NSpid:\t" + pid + "\t1\n") != std::string::npos);
  CHECK(server.request("HELLO op") == "Hello, op! (v0)");

  Run apply = polusctl({"apply", pid, patch});
  INFO(apply.err);
  REQUIRE(apply.status == 0);
  CHECK(server.request("HELLO op") == "Hi there, op! (v1)");
  Run status = polusctl({"status", pid});
  CHECK_THAT(status.out, Catch::Contains("greeter-v1") && Catch::Contains("committed"));
  Run rollback = polusctl({"rollback", pid});
  INFO(rollback.err);
  CHECK(rollback.status == 0);
  CHECK(server.request("HELLO op") == "Hello, op! (v0)");
}

TEST_CASE("a registry of another ABI version is refused, naming both versions", "[trust][live]") {
  if (!running_as_root()) return;
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  const std::string pid = std::to_string(server.pid());
  REQUIRE(polusctl({"apply", pid, patch_path("greeter-v0-v1.so")}).status == 0);
  std::optional<polus::AgentLocation> agent = polus::locate_agent(server.pid(), polus::read_process_maps(server.pid()));
  REQUIRE(agent);
  polus::ProcMemory memory(server.pid());
  auto version = polus::RemotePtr<uint32_t>(agent->registry.address() + offsetof(polus_agent_registry, abi_version));
  memory.write(version, POLUS_AGENT_ABI_VERSION - 1);  // as an older Polus would have left it

  for (const char* command : {"status", "rollback"}) {
    Run refused = polusctl({command, pid});
    CHECK(refused.status == 1);
    CHECK_THAT(refused.err, Catch::Contains("ABI version " + std::to_string(POLUS_AGENT_ABI_VERSION - 1)) &&
                                Catch::Contains("reads only version " + std::to_string(POLUS_AGENT_ABI_VERSION)) &&
                                Catch::Contains("an older Polus loaded it"));
  }
  CHECK(server.request("HELLO op") == "Hi there, op! (v1)");  // nothing was changed
  memory.write(version, POLUS_AGENT_ABI_VERSION);
  CHECK(polusctl({"rollback", pid}).status == 0);
}

TEST_CASE("the agent, loaded from its memfd, is found and counted as lock-holding code", "[trust][live]") {
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  REQUIRE(polusctl({"apply", std::to_string(server.pid()), patch_path("greeter-v0-v1.so")}).status == 0);
  const std::vector<polus::MappedRegion> maps = polus::read_process_maps(server.pid());
  std::vector<polus::MappedRegion> code;
  for (const polus::MappedRegion& r : maps) {
    if (r.path == "/memfd:libpolus-agent.so" && r.executable) code.push_back(r);
  }
  REQUIRE(code.size() == 1);  // from the memfd, never by path
  std::optional<polus::AgentLocation> agent = polus::locate_agent(server.pid(), maps);
  REQUIRE(agent);
  CHECK(code[0].contains(agent->load_patch.address()));  // the registry's entries: its own code
  // A thread stopped inside the agent (a tracked write in progress) must never be borrowed:
  // ending tracking on it would free the tables that write is using (it killed the Fig. 2
  // counter under load when the agent's memfd was not recognised here).
  {
    // (It holds the process's operation lock while it lives.)
    polus::TargetContext target(server.pid(), polus::SymbolOptions{}, polus::Clock::now() + std::chrono::seconds(10));
    const auto& ranges = target.lock_holding_ranges();
    CHECK(std::any_of(ranges.begin(), ranges.end(), [&](const polus::AddressRange& r) {
      return r.start == code[0].start && r.end == code[0].end && r.what == "the Polus agent's write tracking";
    }));
  }
  CHECK(polusctl({"rollback", std::to_string(server.pid())}).status == 0);
}
