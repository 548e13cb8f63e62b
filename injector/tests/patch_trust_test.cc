// The StrictModes check on patch files (update/patch_trust): real files, modes and owners,
// a real second user, and polusctl refusing a patch an unprivileged user could have swapped.
//
// Needs root (to chown files to a second user and to create that user, polus-test-user, with
// useradd if it does not exist); as another user every case is skipped with a warning.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "greeter_process.h"
#include "trust_fixtures.h"
#include "polusctl_run.h"
#include "polus/error.h"
#include "update/patch_trust.h"

namespace fs = std::filesystem;
using polus::Error;
using polus::ErrorCode;
using polus::TrustOptions;
using polus::testing::binary_path;
using polus::testing::GreeterProcess;
using polus::testing::patch_path;

namespace {

using namespace polus::testing;

/// The message of the kPermissionDenied refusal, or "" if `path` is accepted.
std::string refusal(const std::string& path, const TrustOptions& options = {}) {
  try {
    polus::check_patch_trusted(path, options);
  } catch (const Error& e) {
    INFO(e.what());
    CHECK(e.code() == ErrorCode::kPermissionDenied);
    return e.what();
  }
  return "";
}

using Run = polus::testing::PolusctlRun;

/// Runs polusctl with `args`, capturing stdout and stderr.
Run polusctl(const std::vector<std::string>& args) { return polus::testing::run_polusctl(args); }

}  // namespace

TEST_CASE("trusted: a root-owned 0644 file in root-owned 0755 directories", "[trust]") {
  if (!running_as_root()) return;
  TempDir dir;  // in /tmp: sticky, root-owned
  const std::string file = make_file(dir / "patch.so", 0644, 0, "the checked bytes");
  CHECK(refusal(file) == "");

  polus::TrustedFile trusted = polus::open_trusted_patch(file, {});
  REQUIRE(trusted.fd() >= 0);
  CHECK(trusted.path() == fs::canonical(file).string());
  CHECK(S_ISREG(trusted.stat().st_mode));
  CHECK(trusted.stat().st_uid == 0);
  std::vector<uint8_t> bytes = trusted.read_all();
  CHECK(std::string(bytes.begin(), bytes.end()) == "the checked bytes");
  // The fd is what was checked: replacing the path afterwards does not change what it reads.
  REQUIRE(rename((dir / "patch.so").c_str(), (dir / "old.so").c_str()) == 0);
  make_file(dir / "patch.so", 0644, 0, "other bytes");
  bytes = trusted.read_all();
  CHECK(std::string(bytes.begin(), bytes.end()) == "the checked bytes");
  CHECK((fcntl(trusted.fd(), F_GETFD) & FD_CLOEXEC) != 0);
  CHECK((fcntl(trusted.fd(), F_GETFL) & O_NONBLOCK) == 0);

  SECTION("a relative path, with . and .. and a root-owned symlink on the way") {
    make_dir(dir / "sub", 0755);
    REQUIRE(symlink((dir / "sub").c_str(), (dir / "link").c_str()) == 0);
    REQUIRE(chdir(dir.path().c_str()) == 0);
    polus::TrustedFile relative = polus::open_trusted_patch("./link/../patch.so", {});
    CHECK(relative.path() == fs::canonical(dir / "patch.so").string());
    REQUIRE(chdir("/") == 0);
  }
}

TEST_CASE("trusted: a root-owned file in a sticky directory (like /tmp)", "[trust]") {
  if (!running_as_root()) return;
  TempDir dir;
  const std::string sticky = make_dir(dir / "sticky", 01777);
  CHECK(refusal(make_file(sticky + "/patch.so", 0644)) == "");
  make_dir(sticky + "/sub", 0755);
  CHECK(refusal(make_file(sticky + "/sub/patch.so", 0644)) == "");

  SECTION("but not another user's file in it: the owner rule still applies") {
    const std::string theirs = make_file(sticky + "/theirs.so", 0644, test_user());
    CHECK_THAT(refusal(theirs), Catch::Contains("the file is owned by uid " + std::to_string(test_user()) +
                                                " (polus-test-user), not root") &&
                                    Catch::Contains("--allow-owner polus-test-user"));
  }
  SECTION("nor another user's symlink in it: they may replace it") {
    const std::string link = sticky + "/link.so";
    REQUIRE(symlink((sticky + "/patch.so").c_str(), link.c_str()) == 0);
    REQUIRE(lchown(link.c_str(), test_user(), static_cast<gid_t>(-1)) == 0);
    CHECK_THAT(refusal(link), Catch::Contains("the symlink " + link + " is owned by uid " +
                                              std::to_string(test_user()) + " (polus-test-user)"));
  }
  SECTION("nor a sticky directory another user owns") {
    const std::string theirs = make_dir(dir / "theirs", 01777, test_user());
    CHECK_THAT(refusal(make_file(theirs + "/patch.so", 0644)),
               Catch::Contains("the directory " + theirs + " is owned by uid " + std::to_string(test_user())));
  }
}

TEST_CASE("refused: a file writable by group or others", "[trust]") {
  if (!running_as_root()) return;
  TempDir dir;
  const std::string world = make_file(dir / "world.so", 0666);
  CHECK(refusal(world) == "refusing " + world + ": the file is writable by group and others (mode 0666), so "
                                "others could change it; make it writable by its owner only (chmod go-w " + world + ")");
  const std::string group = make_file(dir / "group.so", 0664);
  CHECK_THAT(refusal(group), Catch::Contains("writable by group (mode 0664)") &&
                                 Catch::Contains("(chmod g-w " + group + ")"));
  const std::string others = make_file(dir / "others.so", 0602);
  CHECK_THAT(refusal(others), Catch::Contains("writable by others (mode 0602)") && Catch::Contains("chmod o-w"));
}

TEST_CASE("refused: a file in a directory another user can write", "[trust]") {
  if (!running_as_root()) return;
  TempDir dir;

  SECTION("the directory is mode 0777") {
    const std::string open_dir = make_dir(dir / "open", 0777);
    const std::string file = make_file(open_dir + "/patch.so", 0644);
    CHECK(refusal(file) == "refusing " + file + ": the directory " + open_dir + " is writable by group and others "
                               "(mode 0777), so others could replace what is in it; make it writable by its owner "
                               "only (chmod go-w " + open_dir + ")");
  }
  SECTION("the directory belongs to the other user") {
    const std::string theirs = make_dir(dir / "theirs", 0755, test_user());
    const std::string file = make_file(theirs + "/patch.so", 0644);
    CHECK_THAT(refusal(file), Catch::Contains("the directory " + theirs + " is owned by uid " +
                                              std::to_string(test_user()) + " (polus-test-user), not root") &&
                                  Catch::Contains("--allow-owner polus-test-user"));
    // Trusting that user trusts their directories too.
    CHECK(refusal(file, TrustOptions{{test_user()}}) == "");
  }
  SECTION("a group-writable directory higher up the chain") {
    const std::string a = make_dir(dir / "a", 0775);
    const std::string b = make_dir(a + "/b", 0755);
    const std::string file = make_file(b + "/patch.so", 0644);
    CHECK_THAT(refusal(file), Catch::StartsWith("refusing " + file + ": the directory " + a +
                                                " is writable by group (mode 0775)") &&
                                  Catch::Contains("(chmod g-w " + a + ")"));
  }
}

TEST_CASE("refused: a symlink that leads through a directory another user can write", "[trust]") {
  if (!running_as_root()) return;
  TempDir dir;
  const std::string open_dir = make_dir(dir / "open", 0777);

  SECTION("the symlink points into it") {
    make_file(open_dir + "/patch.so", 0644);
    const std::string link = dir / "link.so";
    REQUIRE(symlink((open_dir + "/patch.so").c_str(), link.c_str()) == 0);
    CHECK_THAT(refusal(link), Catch::StartsWith("refusing " + link + ": the directory " + open_dir +
                                                " is writable by group and others"));
  }
  SECTION("a relative symlink through it") {
    make_dir(open_dir + "/sub", 0755);
    make_file(open_dir + "/sub/patch.so", 0644);
    const std::string link = dir / "link.so";
    REQUIRE(symlink("open/sub/patch.so", link.c_str()) == 0);
    CHECK_THAT(refusal(link), Catch::Contains("the directory " + open_dir + " is writable"));
  }
  SECTION("the symlink lies in it (the path as given), pointing at a trusted file") {
    const std::string good = make_file(dir / "good.so", 0644);
    const std::string link = open_dir + "/link.so";
    REQUIRE(symlink(good.c_str(), link.c_str()) == 0);
    CHECK_THAT(refusal(link), Catch::StartsWith("refusing " + link + ": the directory " + open_dir +
                                                " is writable by group and others"));
    CHECK(refusal(good) == "");
  }
  SECTION("a symlinked directory on the way into it") {
    make_file(open_dir + "/patch.so", 0644);
    REQUIRE(symlink(open_dir.c_str(), (dir / "dirlink").c_str()) == 0);
    CHECK_THAT(refusal(dir / "dirlink/patch.so"), Catch::Contains("the directory " + open_dir + " is writable"));
  }
}

TEST_CASE("refused for root: a file another user owns, unless that owner is allowed", "[trust]") {
  if (!running_as_root()) return;
  TempDir dir;
  const uid_t user = test_user();
  const std::string file = make_file(dir / "patch.so", 0644, user);
  CHECK(refusal(file) == "refusing " + file + ": the file is owned by uid " + std::to_string(user) +
                             " (polus-test-user), not root; pass --allow-owner polus-test-user if you trust that "
                             "user's patches");
  CHECK(refusal(file, TrustOptions{{user}}) == "");
  CHECK(refusal(file, TrustOptions{{user + 1}}) != "");
  // Allowing an owner allows nothing else: their file must still not be writable by others.
  REQUIRE(chmod(file.c_str(), 0664) == 0);
  CHECK_THAT(refusal(file, TrustOptions{{user}}), Catch::Contains("writable by group"));

  SECTION("a symlink to it is refused the same way") {
    REQUIRE(chmod(file.c_str(), 0644) == 0);
    const std::string link = dir / "link.so";
    REQUIRE(symlink(file.c_str(), link.c_str()) == 0);
    CHECK_THAT(refusal(link), Catch::Contains("the file " + fs::canonical(file).string() + " is owned by uid"));
  }
}

TEST_CASE("a caller other than root trusts root and itself", "[trust]") {
  if (!running_as_root()) return;
  TempDir dir;
  const uid_t user = test_user();
  const std::string theirs = make_dir(dir / "theirs", 0755, user);
  const std::string own = make_file(theirs + "/own.so", 0644, user);
  const std::string roots = make_file(theirs + "/root.so", 0644, 0);
  const std::string other = make_file(theirs + "/other.so", 0644, user + 1);
  // Each check runs in a child that became the test user; its exit status tells what happened.
  auto as_user = [&](const std::string& path) {
    pid_t child = fork();
    if (child == 0) {
      if (setresgid(65534, 65534, 65534) != 0 || setresuid(user, user, user) != 0) _exit(100);
      try {
        polus::check_patch_trusted(path, {});
        _exit(0);
      } catch (const Error& e) {
        std::string message = e.what();
        _exit(e.code() == ErrorCode::kPermissionDenied && message.find("not root or you (uid " + std::to_string(user)) !=
                                                               std::string::npos
                  ? 4
                  : 1);
      } catch (...) {
        _exit(2);
      }
    }
    int status = 0;
    waitpid(child, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  CHECK(as_user(own) == 0);
  CHECK(as_user(roots) == 0);
  CHECK(as_user(other) == 4);
}

TEST_CASE("refused: what is not a regular file", "[trust]") {
  if (!running_as_root()) return;
  TempDir dir;
  const std::string fifo = dir / "patch.fifo";
  REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);
  // A FIFO is refused without being opened (opening it would block).
  CHECK(refusal(fifo) == "refusing " + fifo + ": it is a FIFO, not a regular file; give the path of the patch .so "
                              "itself");
  const std::string directory = make_dir(dir / "patch.so", 0755);
  CHECK_THAT(refusal(directory), Catch::Contains("it is a directory, not a regular file"));
  CHECK_THAT(refusal(dir / "patch.so/.."), Catch::Contains(dir.path() + " is a directory, not a regular file"));
  CHECK_THAT(refusal("/"), Catch::Contains("it is a directory, not a regular file"));
  CHECK_THAT(refusal("/dev/null"), Catch::Contains("it is a character device"));
  const std::string link = dir / "fifo-link";
  REQUIRE(symlink(fifo.c_str(), link.c_str()) == 0);
  CHECK_THAT(refusal(link), Catch::Contains(fifo + " is a FIFO"));
}

TEST_CASE("a path that does not resolve is a malformed patch, as before", "[trust]") {
  if (!running_as_root()) return;
  TempDir dir;
  auto code_of = [](const std::string& path) {
    try {
      polus::check_patch_trusted(path, {});
    } catch (const Error& e) {
      INFO(e.what());
      return e.code();
    }
    return ErrorCode::kInternal;
  };
  CHECK(code_of(dir / "missing.so") == ErrorCode::kPatchMalformed);
  CHECK(code_of("") == ErrorCode::kPatchMalformed);
  make_file(dir / "file", 0644);
  CHECK(code_of(dir / "file/patch.so") == ErrorCode::kPatchMalformed);
  REQUIRE(symlink("loop", (dir / "loop").c_str()) == 0);
  CHECK(code_of(dir / "loop") == ErrorCode::kPatchMalformed);
}

TEST_CASE("polusctl apply refuses an untrusted patch and leaves the target alone", "[trust][polusctl][live]") {
  if (!running_as_root()) return;
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  const std::string pid = std::to_string(server.pid());
  TempDir dir;

  SECTION("a patch in a directory anyone can write") {
    const std::string open_dir = make_dir(dir / "open", 0777);
    const std::string patch = open_dir + "/greeter-v0-v1.so";
    fs::copy_file(patch_path("greeter-v0-v1.so"), patch);
    REQUIRE(chmod(patch.c_str(), 0644) == 0);

    Run apply = polusctl({"apply", pid, patch});
    INFO(apply.err);
    CHECK(apply.status == 4);
    CHECK_THAT(apply.err, Catch::Contains("refusing " + patch + ": the directory " + open_dir +
                                          " is writable by group and others") &&
                              Catch::Contains("chmod go-w " + open_dir));
    Run json = polusctl({"apply", pid, patch, "--json"});
    CHECK(json.status == 4);
    CHECK_THAT(json.out, Catch::Contains("\"error\":\"permission-denied\""));

    CHECK(server.request("HELLO op") == "Hello, op! (v0)");
    CHECK_FALSE(maps_mention(server.pid(), "libpolus-agent.so"));
    CHECK_FALSE(maps_mention(server.pid(), "/memfd:polus:"));
  }

  SECTION("another user's patch: refused, then applied with --allow-owner") {
    const std::string patch = dir / "greeter-v0-v1.so";
    fs::copy_file(patch_path("greeter-v0-v1.so"), patch);
    REQUIRE(chown(patch.c_str(), test_user(), static_cast<gid_t>(-1)) == 0);
    REQUIRE(chmod(patch.c_str(), 0644) == 0);

    Run refused = polusctl({"apply", pid, patch});
    CHECK(refused.status == 4);
    CHECK_THAT(refused.err, Catch::Contains("owned by uid " + std::to_string(test_user()) + " (polus-test-user)") &&
                                Catch::Contains("--allow-owner polus-test-user"));
    CHECK(server.request("HELLO op") == "Hello, op! (v0)");

    CHECK(polusctl({"apply", pid, patch, "--allow-owner", "no-such-user-for-polus"}).status == 2);

    Run allowed = polusctl({"apply", pid, patch, "--allow-owner", "polus-test-user"});
    INFO(allowed.err);
    REQUIRE(allowed.status == 0);
    CHECK(server.request("HELLO op") == "Hi there, op! (v1)");
    // A code patch's rollback needs nothing of its file: no option needed.
    CHECK(polusctl({"rollback", pid}).status == 0);

    Run by_uid = polusctl({"apply", pid, patch, "--allow-owner", std::to_string(test_user())});
    INFO(by_uid.err);
    CHECK(by_uid.status == 0);
    CHECK(server.request("HELLO op") == "Hi there, op! (v1)");
  }

  SECTION("a data patch's file made untrusted, then replaced, after the apply: root rolls back the bytes loaded") {
    const std::string patch = copy_file(patch_path("greeter-v0-v1-data.so"), dir / "greeter-v0-v1-data.so");
    Run applied = polusctl({"apply", pid, patch, "--sync-timeout", "100"});
    INFO(applied.err);
    REQUIRE(applied.status == 0);
    REQUIRE(chmod(patch.c_str(), 0666) == 0);  // anyone could now swap its sync functions...
    copy_file(patch_path("greeter-v0-v1.so"), patch, 0666);  // ...and someone did
    // Root reads the sync functions' description back from the sealed memfd the target
    // loaded (its SHA-256 checked), never from the file. (Without root, the file is read,
    // and refused: access_test.)
    Run rollback = polusctl({"rollback", pid, "--sync-timeout", "5000"});
    INFO(rollback.err);
    CHECK(rollback.status == 0);
    CHECK_THAT(rollback.err, !Catch::Contains("writable") && !Catch::Contains("no longer the patch"));
    CHECK(server.alive());
    CHECK(server.request("HELLO op") == "Hello, op! (v0)");
  }
}
