// Patches that stick: apply --persist stores the patch for the target's build-id, and polusd
// applies it to every new process of that build (told by the process events connector) and,
// when it starts, to running ones that lack it. The greeter runs from a copy with a build-id
// of this test's own, so no other test's greeter is a process of that build.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "greeter_process.h"
#include "polusctl_run.h"

using polus::testing::binary_path;
using polus::testing::GreeterProcess;
using polus::testing::patch_path;
using namespace std::chrono_literals;

namespace {

using Run = polus::testing::PolusctlRun;

Run polusctl(const std::vector<std::string>& args) { return polus::testing::run_polusctl(args); }

/// A directory of the test's own with polusd's socket and the store; polusctl goes through
/// polusd there. The polusd it started is stopped at the end.
class Setup {
 public:
  Setup() {
    char tmpl[] = "/tmp/polus-persist.XXXXXX";
    dir_ = mkdtemp(tmpl);
    setenv("POLUS_SOCKET", (dir_ + "/polusd.sock").c_str(), 1);
    setenv("POLUS_STORE", (dir_ + "/store").c_str(), 1);
    polus::testing::polusctl_through_daemon() = true;
  }
  ~Setup() {
    kill_daemon(SIGTERM);
    polus::testing::polusctl_through_daemon() = false;
    unsetenv("POLUS_SOCKET");
    unsetenv("POLUS_STORE");
    std::system(("rm -rf '" + dir_ + "'").c_str());
  }
  const std::string& dir() const { return dir_; }

  /// The polusd holding the socket's lock (0: none).
  pid_t daemon() const {
    const std::string lock = dir_ + "/polusd.sock.lock";
    int fd = open(lock.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    bool held = flock(fd, LOCK_SH | LOCK_NB) != 0;
    close(fd);
    if (!held) return 0;
    std::ifstream in(lock);
    pid_t pid = 0;
    in >> pid;
    return pid;
  }
  void kill_daemon(int sig) {
    pid_t pid = daemon();
    if (pid <= 0) return;
    kill(pid, sig);
    while (daemon() == pid) std::this_thread::sleep_for(5ms);
  }

  /// greeter-v0 copied, its build-id bytes replaced by random ones: a build nobody else runs.
  /// Returns {path, build-id hex}.
  std::pair<std::string, std::string> unique_greeter() {
    const std::string original = binary_path("greeter-v0");
    std::string hex;
    FILE* readelf = popen(("readelf -n '" + original + "'").c_str(), "r");
    char line[512];
    while (readelf && fgets(line, sizeof line, readelf)) {
      std::string l(line);
      if (auto at = l.find("Build ID: "); at != std::string::npos) hex = l.substr(at + 10, 40);
    }
    if (readelf) pclose(readelf);
    REQUIRE(hex.size() == 40);
    std::ifstream in(original, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::string id;
    for (size_t i = 0; i < 40; i += 2) id += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
    size_t at = bytes.find(id);
    REQUIRE(at != std::string::npos);
    std::mt19937 random(std::random_device{}());
    std::string fresh;
    char digits[3];
    for (size_t i = 0; i < id.size(); ++i) {
      bytes[at + i] = static_cast<char>(random() & 0xff);
      std::snprintf(digits, sizeof digits, "%02x", static_cast<unsigned char>(bytes[at + i]));
      fresh += digits;
    }
    const std::string path = dir_ + "/greeter-sticky";
    std::ofstream(path, std::ios::binary) << bytes;
    REQUIRE(chmod(path.c_str(), 0755) == 0);
    return {path, fresh};
  }

 private:
  std::string dir_;
};

/// Waits until `server` answers `want` to HELLO op (polusd works meanwhile); the test's timeout
/// bounds it. Returns the last answer.
std::string wait_for_answer(GreeterProcess& server, const std::string& want) {
  std::string answer;
  for (int i = 0; i < 3000 && (answer = server.request("HELLO op")) != want; ++i) std::this_thread::sleep_for(10ms);
  return answer;
}

}  // namespace

TEST_CASE("apply --persist: a restarted greeter gets its stored patch back", "[persist][polusd][live]") {
  Setup setup;
  auto [greeter, build_id] = setup.unique_greeter();
  {
    auto first = GreeterProcess::spawn(greeter, 2);
    Run apply = polusctl({"apply", std::to_string(first.pid()), patch_path("greeter-v0-v1.so"), "--persist"});
    INFO(apply.err);
    REQUIRE(apply.status == 0);
    CHECK_THAT(apply.out, Catch::Contains("stored as " + setup.dir() + "/store/" + build_id + "/"));
    CHECK(first.request("HELLO op") == "Hi there, op! (v1)");
  }
  Run list = polusctl({"store", "list", "--json"});
  REQUIRE(list.status == 0);
  CHECK_THAT(list.out, Catch::Contains("\"build_id\":\"" + build_id + "\",\"name\":\"greeter-v1\""));

  // The server restarts: a new process of the same build gets the patch as it starts.
  {
    auto restarted = GreeterProcess::spawn(greeter, 2);
    CHECK(wait_for_answer(restarted, "Hi there, op! (v1)") == "Hi there, op! (v1)");
    Run status = polusctl({"status", std::to_string(restarted.pid())});
    CHECK_THAT(status.out, Catch::Contains("greeter-v1") && Catch::Contains("committed"));
  }

  // polusd killed; a greeter starts meanwhile (as after a reboot, before polusd): the next
  // polusd applies the stored patch to it when it starts.
  setup.kill_daemon(SIGKILL);
  {
    auto orphan = GreeterProcess::spawn(greeter, 2);
    CHECK(orphan.request("HELLO op") == "Hello, op! (v0)");
    CHECK(polusctl({"finish", "999999"}).status == 3);  // any command through polusd starts it
    CHECK(setup.daemon() > 0);
    CHECK(wait_for_answer(orphan, "Hi there, op! (v1)") == "Hi there, op! (v1)");
  }

  Run remove = polusctl({"store", "remove", build_id});
  CHECK(remove.status == 0);
  CHECK_THAT(remove.out, Catch::Contains("removed 1 stored patch"));
  CHECK_THAT(polusctl({"store", "list"}).out, Catch::Contains("no patches stored"));
  CHECK(polusctl({"store", "remove", build_id}).status == 12);
}

TEST_CASE("apply --persist stores nothing when the apply fails", "[persist][live]") {
  Setup setup;
  auto [greeter, build_id] = setup.unique_greeter();
  auto server = GreeterProcess::spawn(greeter, 2);
  Run apply = polusctl({"apply", std::to_string(server.pid()), patch_path("bad-missing-symbol.so"), "--persist"});
  CHECK(apply.status == 6);
  CHECK_THAT(polusctl({"store", "list"}).out, Catch::Contains("no patches stored"));
}
