// Who may act on what (update/access_policy): the rule as a function, and real second and
// third users running polusctl against real processes of root, of each other and of their
// own. Needs root (to create the users and start processes as them).
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>

#include <fstream>
#include <string>
#include <vector>

#include "greeter_process.h"
#include "polusctl_run.h"
#include "trust_fixtures.h"
#include "update/access_policy.h"
#include "update/operation_lock.h"

using namespace polus::testing;
using polus::Action;
using polus::Caller;
using polus::PatchConcerned;
using polus::ProcessCredentials;
using Run = polus::testing::PolusctlRun;

namespace {

ProcessCredentials plain(uid_t uid, gid_t gid) {
  ProcessCredentials creds;
  for (int i = 0; i < 4; ++i) {
    creds.uid[i] = uid;
    creds.gid[i] = gid;
  }
  creds.dumpable = true;
  return creds;
}

std::string refusal(const Caller& caller, const ProcessCredentials& target, Action action = Action::kApply,
                    std::optional<PatchConcerned> patch = std::nullopt) {
  return polus::access_refusal(caller, 4321, target, action, patch);
}

/// Yama's ptrace_scope, 0 when Yama is not there.
int ptrace_scope() {
  std::ifstream in("/proc/sys/kernel/yama/ptrace_scope");
  int scope = 0;
  in >> scope;
  return scope;
}

struct User {
  uid_t uid;
  gid_t gid;
  RunAs as() const { return RunAs{uid, gid}; }
  std::optional<std::pair<uid_t, gid_t>> spawn_as() const { return std::make_pair(uid, gid); }
};

User user(const char* name) {
  auto [uid, gid] = ensure_user(name);
  return User{uid, gid};
}

Run polusctl(const std::vector<std::string>& args, RunAs as = {}) { return run_polusctl(args, as); }

}  // namespace

TEST_CASE("the access policy: root may do anything, others only on their own processes and patches", "[access]") {
  const Caller root{0, 0, 1};
  const Caller alice{1001, 1001, 2};
  CHECK(refusal(root, plain(0, 0)) == "");
  CHECK(refusal(root, plain(1002, 1002), Action::kRollback, PatchConcerned{1, "p", 1002}) == "");
  CHECK(refusal(alice, plain(1001, 1001)) == "");
  CHECK(refusal(alice, plain(1001, 1001), Action::kRollback, PatchConcerned{1, "p", 1001}) == "");

  CHECK(refusal(alice, plain(0, 0)) ==
        "process 4321 runs as uid 0 (root), and you are uid 1001; only root may apply patches there");
  CHECK_THAT(refusal(alice, plain(1002, 1002), Action::kStatus),
             Catch::Contains("runs as uid 1002") && Catch::Contains("only root may read what is applied there"));

  ProcessCredentials setuid = plain(1001, 1001);
  setuid.uid[1] = setuid.uid[2] = 0;  // a setuid-root program run by alice
  CHECK_THAT(refusal(alice, setuid), Catch::Contains("has changed user ids (real, effective, saved, filesystem: "
                                                     "1001, 0, 0, 1001), as a setuid program does"));
  ProcessCredentials setgid = plain(1001, 1001);
  setgid.gid[1] = 42;
  CHECK_THAT(refusal(alice, setgid), Catch::Contains("has changed group ids"));
  CHECK_THAT(refusal(alice, plain(1001, 1002)), Catch::Contains("runs with group 1002, and your group is 1001"));
  ProcessCredentials undumpable = plain(1001, 1001);
  undumpable.dumpable = false;
  CHECK_THAT(refusal(alice, undumpable), Catch::Contains("is not dumpable"));

  // Never a patch someone else applied (root, applying to alice's process).
  CHECK(refusal(alice, plain(1001, 1001), Action::kRollback, PatchConcerned{7, "fix", 0}) ==
        "patch fix (id 7) in process 4321 was applied by uid 0 (root), and you are uid 1001: only that user or root "
        "may roll it back");
  CHECK_THAT(refusal(alice, plain(1001, 1001), Action::kFinish, PatchConcerned{7, "fix", 0}),
             Catch::EndsWith("may finish its update"));
  CHECK(polus::may_touch_patch(alice, 1001));
  CHECK_FALSE(polus::may_touch_patch(alice, 0));
  CHECK(polus::may_touch_patch(root, 1001));
}

TEST_CASE("the credentials read from /proc", "[access]") {
  auto creds = polus::read_process_credentials(getpid());
  REQUIRE(creds);
  CHECK(creds->uid[0] == getuid());
  CHECK(creds->uid[1] == geteuid());
  CHECK(creds->gid[0] == getgid());
  CHECK(creds->dumpable);
  CHECK_FALSE(polus::read_process_credentials(0x3fffffff));
}

TEST_CASE("a second user is refused on root's process and on a third user's, allowed on its own",
          "[access][live]") {
  if (!running_as_root()) return;
  const User second = user(kTestUser), third = user(kThirdUser);
  auto roots = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  auto thirds = GreeterProcess::spawn(binary_path("greeter-v0"), 4, std::chrono::milliseconds(5000), {}, third.spawn_as());
  auto own = GreeterProcess::spawn(binary_path("greeter-v0"), 4, std::chrono::milliseconds(5000), {}, second.spawn_as());
  const std::string patch = patch_path("greeter-v0-v1.so");

  Run on_root = polusctl({"apply", std::to_string(roots.pid()), patch}, second.as());
  CHECK(on_root.status == 4);
  CHECK_THAT(on_root.err, Catch::Contains("apply refused: process " + std::to_string(roots.pid()) +
                                          " runs as uid 0 (root), and you are uid " + std::to_string(second.uid)));
  CHECK(polusctl({"status", std::to_string(roots.pid())}, second.as()).status == 4);
  CHECK(polusctl({"rollback", std::to_string(roots.pid())}, second.as()).status == 4);

  Run on_third = polusctl({"apply", std::to_string(thirds.pid()), patch}, second.as());
  CHECK(on_third.status == 4);
  CHECK_THAT(on_third.err, Catch::Contains("runs as uid " + std::to_string(third.uid) + " (" + kThirdUser + ")"));
  CHECK(roots.request("HELLO op") == "Hello, op! (v0)");
  CHECK(thirds.request("HELLO op") == "Hello, op! (v0)");

  if (ptrace_scope() > 0) {
    WARN("Yama ptrace_scope is " << ptrace_scope() << ": a user cannot ptrace its own processes here; the rest skipped");
    return;
  }
  const std::string pid = std::to_string(own.pid());
  Run applied = polusctl({"apply", pid, patch}, second.as());
  INFO(applied.err);
  REQUIRE(applied.status == 0);
  // The audit log is root's: another user's operation goes to syslog only, with a warning.
  CHECK_THAT(applied.err, Catch::Contains("recorded in syslog only"));
  CHECK(own.request("HELLO op") == "Hi there, op! (v1)");
  Run status = polusctl({"status", pid}, second.as());
  CHECK(status.status == 0);
  CHECK_THAT(status.out, Catch::Contains("greeter-v1") && !Catch::Contains("withheld"));
  CHECK(polusctl({"rollback", pid}, second.as()).status == 0);
  CHECK(own.request("HELLO op") == "Hello, op! (v0)");
}

TEST_CASE("the operation lock: root and the process's owner exclude each other, no third user can hold it",
          "[access][live]") {
  if (!running_as_root()) return;
  const User second = user(kTestUser), third = user(kThirdUser);
  auto own = GreeterProcess::spawn(binary_path("greeter-v0"), 2, std::chrono::milliseconds(5000), {}, second.spawn_as());
  const std::string pid = std::to_string(own.pid());
  {
    polus::OperationLock held(own.pid(), polus::Clock::now() + std::chrono::seconds(1));
    CHECK(polus::OperationLock::busy(own.pid()));
    // The owner's own polusctl waits for root's operation, then names what it waited for.
    Run waited = polusctl({"apply", pid, patch_path("greeter-v0-v1.so"), "--timeout", "300"}, second.as());
    CHECK(waited.status == 14);
    CHECK_THAT(waited.err, Catch::Contains("another Polus operation on process " + pid + " (a polusctl or polusd) is still in progress"));
    CHECK(own.request("HELLO op") == "Hello, op! (v0)");
    // The file is the owner's, readable by no one else: a third user cannot open it to hold it.
    std::string path;
    for (const auto& entry : std::filesystem::directory_iterator(polus::kOperationLockDirectory)) {
      if (entry.path().filename().string().rfind(pid + "-", 0) == 0) path = entry.path();
    }
    REQUIRE(!path.empty());
    struct stat st;
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK(st.st_uid == second.uid);
    CHECK((st.st_mode & 077) == 0);
    pid_t child = ::fork();
    if (child == 0) {
      if (::setgid(third.gid) != 0 || ::setuid(third.uid) != 0) _exit(2);
      _exit(::open(path.c_str(), O_RDONLY) < 0 && errno == EACCES ? 0 : 1);
    }
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }
  CHECK_FALSE(polus::OperationLock::busy(own.pid()));
}

TEST_CASE("a patch root applied to a user's process: the user may not roll it back or see its details",
          "[access][live]") {
  if (!running_as_root()) return;
  if (ptrace_scope() > 0) {
    WARN("Yama ptrace_scope is " << ptrace_scope() << ": a user cannot ptrace its own processes here; skipped");
    return;
  }
  const User second = user(kTestUser);
  auto own = GreeterProcess::spawn(binary_path("greeter-v0"), 4, std::chrono::milliseconds(5000), {}, second.spawn_as());
  const std::string pid = std::to_string(own.pid());
  REQUIRE(polusctl({"apply", pid, patch_path("greeter-v0-v1.so")}).status == 0);  // by root

  Run rollback = polusctl({"rollback", pid}, second.as());
  CHECK(rollback.status == 4);
  CHECK_THAT(rollback.err, Catch::Contains("patch greeter-v1 (id 1) in process " + pid +
                                           " was applied by uid 0 (root), and you are uid " + std::to_string(second.uid)) &&
                               Catch::Contains("only that user or root may roll it back"));
  CHECK(own.request("HELLO op") == "Hi there, op! (v1)");
  Run status = polusctl({"status", pid}, second.as());
  CHECK(status.status == 0);
  CHECK_THAT(status.out, Catch::Contains("greeter-v1") && Catch::Contains("applied by uid 0; details withheld") &&
                             !Catch::Contains("format_reply"));
  Run json = polusctl({"status", pid, "--json"}, second.as());
  CHECK_THAT(json.out, Catch::Contains("\"details_withheld\":true") && Catch::Contains("\"sha256\":\"\"") &&
                           Catch::Contains("\"functions\":[]"));

  // The user's own patch on top is the user's to roll back; root's below it stays.
  Run stacked = polusctl({"apply", pid, patch_path("greeter-v1-v2.so")}, second.as());
  INFO(stacked.err);
  REQUIRE(stacked.status == 0);
  CHECK(own.request("HELLO op") == "Greetings, op! (v2)");
  CHECK(polusctl({"rollback", pid}, second.as()).status == 0);
  CHECK(own.request("HELLO op") == "Hi there, op! (v1)");
  CHECK(polusctl({"rollback", pid}, second.as()).status == 4);
  CHECK(polusctl({"rollback", pid}).status == 0);  // root's
  CHECK(own.request("HELLO op") == "Hello, op! (v0)");
}

TEST_CASE("without root, rollback reads the named file: refused when untrusted or no longer the applied one",
          "[access][live]") {
  if (!running_as_root()) return;
  if (ptrace_scope() > 0) {
    WARN("Yama ptrace_scope is " << ptrace_scope() << ": a user cannot ptrace its own processes here; skipped");
    return;
  }
  const User second = user(kTestUser);
  TempDir dir;
  auto own = GreeterProcess::spawn(binary_path("greeter-v0"), 4, std::chrono::milliseconds(5000), {}, second.spawn_as());
  const std::string pid = std::to_string(own.pid());
  const std::string patch = copy_file(patch_path("greeter-v0-v1-data.so"), dir / "data.so");
  Run applied = polusctl({"apply", pid, patch, "--sync-timeout", "100"}, second.as());
  INFO(applied.err);
  REQUIRE(applied.status == 0);

  // /proc/PID/map_files, where root reads back the loaded bytes, needs CAP_SYS_ADMIN or
  // CAP_CHECKPOINT_RESTORE: the user's rollback needs the file, and the same checks as apply.
  REQUIRE(chmod(patch.c_str(), 0666) == 0);
  Run untrusted = polusctl({"rollback", pid}, second.as());
  CHECK(untrusted.status == 4);
  CHECK_THAT(untrusted.err, Catch::Contains(patch) && Catch::Contains("writable by group and others"));

  copy_file(patch_path("greeter-v0-v1.so"), patch);  // trusted again, but other bytes
  Run changed = polusctl({"rollback", pid}, second.as());
  CHECK(changed.status == 8);
  CHECK_THAT(changed.err, Catch::Contains("is no longer the patch greeter-v1-data that was applied"));
  CHECK(own.alive());

  copy_file(patch_path("greeter-v0-v1-data.so"), patch);
  Run rollback = polusctl({"rollback", pid, "--sync-timeout", "5000"}, second.as());
  INFO(rollback.err);
  CHECK(rollback.status == 0);
  CHECK(own.request("HELLO op") == "Hello, op! (v0)");
}
