// trust_fixtures.h — what the trust tests share: real users, real directories and files with
// chosen owners and modes. Needs root (to create users and chown); tests check
// running_as_root() first and are skipped with a warning otherwise.
#pragma once

#include <catch2/catch.hpp>

#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

namespace polus::testing {

/// The second user of the tests; polus-test-user3 is the third.
inline constexpr const char* kTestUser = "polus-test-user";
inline constexpr const char* kThirdUser = "polus-test-user3";

inline std::optional<std::pair<uid_t, gid_t>> lookup_user(const char* name) {
  struct passwd pw;
  struct passwd* found = nullptr;
  char buf[4096];
  if (getpwnam_r(name, &pw, buf, sizeof buf, &found) != 0 || !found) return std::nullopt;
  return std::make_pair(found->pw_uid, found->pw_gid);
}

/// The uid and primary gid of system user `name`, created (no home, no shell, its own group)
/// if missing.
inline std::pair<uid_t, gid_t> ensure_user(const char* name) {
  if (auto user = lookup_user(name)) return *user;
  std::string command = std::string("useradd --system --user-group --no-create-home --shell /usr/sbin/nologin ") + name;
  int status = std::system(command.c_str());
  auto user = lookup_user(name);  // another run may have created it meanwhile
  if (!user) FAIL("cannot create the test user " << name << " (`" << command << "` returned " << status << ")");
  REQUIRE(user->first != 0);
  return *user;
}

/// The uid of polus-test-user.
inline uid_t test_user() {
  static const uid_t uid = ensure_user(kTestUser).first;
  return uid;
}

/// False (with a warning) unless the test runs as root.
inline bool running_as_root() {
  if (geteuid() == 0) return true;
  WARN("this test needs root (to create users and chown files); skipped");
  return false;
}

/// A fresh directory /tmp/polus-trust-XXXXXX, root-owned 0755, removed with what it holds.
class TempDir {
 public:
  TempDir() {
    char name[] = "/tmp/polus-trust-XXXXXX";
    REQUIRE(mkdtemp(name) != nullptr);
    path_ = name;
    REQUIRE(chmod(name, 0755) == 0);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

/// A directory with `mode` (chmod, so umask does not interfere) and owner.
inline std::string make_dir(const std::string& path, mode_t mode, uid_t owner = 0) {
  REQUIRE(mkdir(path.c_str(), 0700) == 0);
  REQUIRE(chown(path.c_str(), owner, static_cast<gid_t>(-1)) == 0);
  REQUIRE(chmod(path.c_str(), mode) == 0);
  return path;
}

/// A small regular file with `mode` and owner.
inline std::string make_file(const std::string& path, mode_t mode, uid_t owner = 0,
                             const std::string& text = "patch bytes") {
  { std::ofstream(path) << text; }
  REQUIRE(chown(path.c_str(), owner, static_cast<gid_t>(-1)) == 0);
  REQUIRE(chmod(path.c_str(), mode) == 0);
  return path;
}

/// A copy of `from` at `to`, owned by `owner` with `mode`.
inline std::string copy_file(const std::string& from, const std::string& to, mode_t mode = 0644, uid_t owner = 0) {
  std::filesystem::copy_file(from, to, std::filesystem::copy_options::overwrite_existing);
  REQUIRE(chown(to.c_str(), owner, static_cast<gid_t>(-1)) == 0);
  REQUIRE(chmod(to.c_str(), mode) == 0);
  return to;
}

/// Whether a line of /proc/PID/maps contains `needle`.
inline bool maps_mention(pid_t pid, const std::string& needle) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/maps");
  for (std::string line; std::getline(in, line);) {
    if (line.find(needle) != std::string::npos) return true;
  }
  return false;
}

/// The whole text of a file, "" if it cannot be read.
inline std::string file_text(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace polus::testing
