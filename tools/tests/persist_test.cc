// Patches that stick: apply --persist stores the patch for the target's build-id, and polusd
// applies it to every new process of that build (told by the process events connector) and,
// when it starts, to running ones that lack it. The greeter runs from a copy with a build-id
// of this test's own, so no other test's greeter is a process of that build.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "daemon_dir.h"
#include "greeter_process.h"
#include "nginx_process.h"
#include "polusctl_run.h"

using polus::testing::binary_path;
using polus::testing::GreeterProcess;
using polus::testing::patch_path;
using namespace std::chrono_literals;

namespace {

using Run = polus::testing::PolusctlRun;

Run polusctl(const std::vector<std::string>& args) { return polus::testing::run_polusctl(args); }

/// A polusd of the test's own (daemon_dir.h), and builds nobody else runs.
class Setup : public polus::testing::DaemonDir {
 public:
  Setup() : DaemonDir("polus-persist") {}

  /// `original` copied to DIR/`name`, its build-id bytes replaced by random ones: a build
  /// nobody else runs (other tests' processes of the original are not this test's to patch).
  /// Returns {path, build-id hex}.
  std::pair<std::string, std::string> unique_copy(const std::string& original, const std::string& name) {
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
    const std::string path = dir() + "/" + name;
    std::ofstream(path, std::ios::binary) << bytes;
    REQUIRE(chmod(path.c_str(), 0755) == 0);
    return {path, fresh};
  }

  /// greeter-v0 with a build of its own.
  std::pair<std::string, std::string> unique_greeter() { return unique_copy(binary_path("greeter-v0"), "greeter-sticky"); }

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

namespace {

/// Requests from two client threads while it lives: every answer must be nginx's page, 200,
/// dated in GMT (unpatched) or UTC (patched); anything else counts as failed.
class HttpLoad {
 public:
  explicit HttpLoad(int port) {
    for (int i = 0; i < 2; ++i) {
      clients_.emplace_back([this, port] {
        while (!stop_) {
          std::string why;
          std::string r = polus::testing::http_get(port, "/index.html", &why);
          std::string date = polus::testing::header(r, "Last-Modified");
          bool ok = r.find(" 200 ") != std::string::npos && r.ends_with("hello from nginx\n") &&
                    (date.ends_with(" GMT") || date.ends_with(" UTC"));
          if (ok) {
            answered_++;
          } else if (failed_++ == 0) {
            std::lock_guard<std::mutex> lock(mutex_);
            first_failure_ = r.empty() ? "no response (" + why + ")" : r.substr(0, 300);
          }
        }
      });
    }
  }
  ~HttpLoad() { stop(); }
  void stop() {
    stop_ = true;
    for (auto& c : clients_) c.join();
    clients_.clear();
  }
  int answered() const { return answered_; }
  int failed() const { return failed_; }
  /// What the first failed request got back (for the test's report).
  std::string first_failure() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return first_failure_;
  }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<int> answered_{0}, failed_{0};
  std::vector<std::thread> clients_;
  mutable std::mutex mutex_;
  std::string first_failure_;
};

/// Whether every process of nginx (master and workers) has patch `name` committed, waiting up
/// to 10 s for polusd to get there.
bool all_patched(const polus::testing::NginxProcess& nginx, const std::string& name) {
  for (int i = 0; i < 1000; ++i) {
    std::vector<pid_t> all = nginx.workers();
    all.push_back(nginx.master());
    bool every = std::all_of(all.begin(), all.end(), [&](pid_t pid) {
      Run status = polusctl({"status", std::to_string(pid), "--json"});
      return status.status == 0 && status.out.find("\"" + name + "\"") != std::string::npos &&
             status.out.find("\"committed\"") != std::string::npos;
    });
    if (every && nginx.workers().size() == 4) return true;
    std::this_thread::sleep_for(10ms);
  }
  return false;
}

/// Several requests (spread over the workers): how many were dated in UTC, of how many.
std::pair<int, int> utc_answers(int port, int requests = 24) {
  int utc = 0;
  for (int i = 0; i < requests; ++i) {
    if (polus::testing::header(polus::testing::http_get(port, "/index.html"), "Last-Modified").ends_with(" UTC")) ++utc;
  }
  return {utc, requests};
}

}  // namespace

TEST_CASE("nginx as Debian runs it, 4 workers under load: one command patches all; respawned, reloaded and "
          "restarted workers run the patch",
          "[persist][polusd][nginx][live]") {
  REQUIRE(std::filesystem::exists("/usr/sbin/nginx"));  // tools/setup-debian.sh installs it
  Setup setup;
  auto [binary, build_id] = setup.unique_copy("/usr/sbin/nginx", "nginx-sticky");
  polus::testing::NginxProcess nginx(4, binary);
  const std::string master = std::to_string(nginx.master());
  {
    HttpLoad load(nginx.port());
    std::this_thread::sleep_for(100ms);
    Run apply = polusctl({"apply", "--tree", master, NGINX_PATCH, "--persist"});
    INFO(apply.err);
    REQUIRE(apply.status == 0);
    CHECK(all_patched(nginx, "nginx-time-utc"));
    load.stop();
    INFO("answered " << load.answered() << "; the first failure got: " << load.first_failure());
    INFO("nginx's error log: " << nginx.error_log());
    CHECK(load.failed() == 0);  // not one request lost to the patching
    CHECK(load.answered() > 0);
  }
  CHECK(utc_answers(nginx.port()).first == 24);

  // A worker dies (its connections with it: no load here); the master forks another from its
  // patched self.
  const std::vector<pid_t> before = nginx.workers();
  ::kill(before[0], SIGKILL);
  for (int i = 0; i < 500; ++i) {
    std::vector<pid_t> now = nginx.workers();
    if (std::find(now.begin(), now.end(), before[0]) == now.end()) break;
    std::this_thread::sleep_for(10ms);
  }
  REQUIRE(nginx.wait_for_workers());
  CHECK(all_patched(nginx, "nginx-time-utc"));
  CHECK(utc_answers(nginx.port()).first == 24);

  // kill -HUP under load: the master rereads its configuration and replaces every worker
  // gracefully (the old ones finish their requests).
  {
    HttpLoad load(nginx.port());
    const std::vector<pid_t> replaced = nginx.workers();
    ::kill(nginx.master(), SIGHUP);
    for (int i = 0; i < 1000; ++i) {
      std::vector<pid_t> now = nginx.workers();
      if (now.size() == 4 && std::none_of(now.begin(), now.end(), [&](pid_t p) {
            return std::find(replaced.begin(), replaced.end(), p) != replaced.end();
          })) {
        break;
      }
      std::this_thread::sleep_for(10ms);
    }
    CHECK(all_patched(nginx, "nginx-time-utc"));
    CHECK(utc_answers(nginx.port()).first == 24);
    load.stop();
    INFO("the first failure got: " << load.first_failure());
    INFO("nginx's error log: " << nginx.error_log());
    CHECK(load.failed() == 0);
  }

  // nginx restarted: polusd sees the new master (exec, then its daemonising fork) and its
  // workers, and applies the stored patch to each, with nothing asked.
  nginx.stop();
  nginx.start();
  CHECK(all_patched(nginx, "nginx-time-utc"));
  CHECK(utc_answers(nginx.port()).first == 24);

  // Removed from the store, rolled back: GMT again.
  CHECK(polusctl({"store", "remove", build_id}).status == 0);
  Run rollback = polusctl({"rollback", "--tree", std::to_string(nginx.master())});
  INFO(rollback.err);
  CHECK(rollback.status == 0);
  CHECK(utc_answers(nginx.port()).first == 0);
}
