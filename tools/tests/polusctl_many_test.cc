// Many processes at once, all or none: several pids, --tree (a master and its workers), --exe,
// --build-id; a failure in one rolls back the others; status and rollback take the same
// selectors. The greeters run from a copy of greeter-v0 of this test's own, so --exe matches
// none of another test's greeters.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "greeter_process.h"
#include "polusctl_run.h"

using polus::testing::binary_path;
using polus::testing::patch_path;

namespace {

using Run = polus::testing::PolusctlRun;

Run polusctl(const std::vector<std::string>& args) { return polus::testing::run_polusctl(args); }

/// One line of a greeter at `port`: sends `line`, returns the reply without '\n'.
std::string ask(int port, const std::string& line) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    close(fd);
    return "connect failed";
  }
  std::string data = line + "\n", reply;
  (void)!write(fd, data.data(), data.size());
  char c;
  while (read(fd, &c, 1) == 1 && c != '\n') reply += c;
  close(fd);
  return reply;
}

/// A shell command's processes: `sh -c SCRIPT` with $G the greeter copy; every "PORT n" line
/// they print is collected (`ports` of them awaited).
class Group {
 public:
  Group(const std::string& greeter, const std::string& script, size_t ports) {
    int out[2];
    REQUIRE(pipe2(out, O_CLOEXEC) == 0);
    std::string env = "G=" + greeter;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(out[1], 1);
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      char* envp[] = {env.data(), nullptr};
      execle("/bin/sh", "sh", "-c", script.c_str(), nullptr, envp);
      _exit(127);
    }
    close(out[1]);
    std::string text;
    char buf[256];
    while (ports_.size() < ports) {
      ssize_t n = read(out[0], buf, sizeof buf);
      REQUIRE(n > 0);
      text.append(buf, static_cast<size_t>(n));
      size_t nl;
      while ((nl = text.find('\n')) != std::string::npos) {
        std::string line = text.substr(0, nl);
        text.erase(0, nl + 1);
        if (line.rfind("PORT ", 0) == 0) ports_.push_back(std::stoi(line.substr(5)));
      }
    }
    out_ = out[0];
  }
  ~Group() {
    std::system(("pkill -KILL -P " + std::to_string(pid_) + " 2>/dev/null").c_str());
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    close(out_);
  }
  pid_t pid() const { return pid_; }
  const std::vector<int>& ports() const { return ports_; }

 private:
  pid_t pid_ = -1;
  int out_ = -1;
  std::vector<int> ports_;
};

/// greeter-v0 copied to a directory of this test's own (a file no other test runs).
class GreeterCopy {
 public:
  GreeterCopy() {
    char tmpl[] = "/tmp/polus-many.XXXXXX";
    dir_ = mkdtemp(tmpl);
    path_ = dir_ + "/greeter-many";
    REQUIRE(std::system(("cp '" + binary_path("greeter-v0") + "' '" + path_ + "'").c_str()) == 0);
  }
  ~GreeterCopy() { std::system(("rm -rf '" + dir_ + "'").c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string dir_, path_;
};

}  // namespace

TEST_CASE("apply --tree: a master and its workers in one command, all or none", "[polusctl][many][live]") {
  GreeterCopy greeter;
  // A master greeter with two greeter children (the shell forks them, then becomes the master).
  Group tree(greeter.path(), "$G --port 0 --workers 2 & $G --port 0 --workers 2 & exec $G --port 0 --workers 2", 3);
  const std::string master = std::to_string(tree.pid());
  for (int port : tree.ports()) REQUIRE(ask(port, "HELLO op") == "Hello, op! (v0)");

  Run apply = polusctl({"apply", "--tree", master, patch_path("greeter-v0-v1.so"), "--json"});
  INFO(apply.err);
  REQUIRE(apply.status == 0);
  CHECK_THAT(apply.out, Catch::Contains("\"processes\":[{\"pid\":" + master));
  for (int port : tree.ports()) CHECK(ask(port, "HELLO op") == "Hi there, op! (v1)");

  Run status = polusctl({"status", "--tree", master});
  CHECK(status.status == 0);
  CHECK_THAT(status.out, Catch::Contains(master) && Catch::Contains("greeter-v1"));
  Run exe_status = polusctl({"status", "--exe", greeter.path(), "--json"});
  CHECK_THAT(exe_status.out, Catch::Contains("\"processes\":[") && Catch::Contains("\"name\":\"greeter-v1\""));

  Run rollback = polusctl({"rollback", "--exe", greeter.path()});
  INFO(rollback.err);
  CHECK(rollback.status == 0);
  for (int port : tree.ports()) CHECK(ask(port, "HELLO op") == "Hello, op! (v0)");
}

TEST_CASE("apply to several pids: one failure rolls the others back", "[polusctl][many][live]") {
  GreeterCopy greeter;
  Group pair(greeter.path(), "$G --port 0 --workers 2 & exec $G --port 0 --workers 2", 2);
  // The greeters first, then a process without format_reply: the patch cannot apply there.
  Group other("/bin/sleep", "exec $G 600", 0);
  const std::string a = std::to_string(pair.pid());
  std::string b;
  Run tree = polusctl({"status", "--tree", a, "--json"});
  size_t at = tree.out.find("{\"pid\":", tree.out.find("{\"pid\":") + 1);
  REQUIRE(at != std::string::npos);
  b = tree.out.substr(at + 7, tree.out.find(',', at) - at - 7);

  Run apply = polusctl({"apply", a, b, std::to_string(other.pid()), patch_path("greeter-v0-v1.so"), "--json"});
  CHECK(apply.status == 6);  // the third process's symbol-not-found
  CHECK_THAT(apply.out, Catch::Contains("\"failed_pid\":" + std::to_string(other.pid())) &&
                            Catch::Contains("\"rolled_back\":[" + b + "," + a + "]"));
  CHECK_THAT(apply.err, Catch::Contains("rolled the patch back"));
  for (int port : pair.ports()) CHECK(ask(port, "HELLO op") == "Hello, op! (v0)");
  CHECK_THAT(polusctl({"status", a}).out, Catch::Contains("no patches applied"));
  CHECK_THAT(polusctl({"status", b}).out, Catch::Contains("no patches applied"));

  // --build-id selects by what the executable is (read-only here: other tests run the same build).
  Run info = polusctl({"status", "--build-id", "00", "--json"});
  CHECK(info.status == 3);
  CHECK_THAT(info.err, Catch::Contains("no process runs an executable with that build-id"));
}
