// Signed patches (update/patch_signature, polusctl keygen/sign/apply --require-signature) and
// the audit trail (update/audit): real keys, files, modes and a real greeter, through the real
// polusctl. Needs root (chown, and root's audit rules).
#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "binary/symbols.h"
#include "greeter_process.h"
#include "polusctl_run.h"
#include "trust_fixtures.h"

using namespace polus::testing;
using Run = polus::testing::PolusctlRun;

namespace {

Run polusctl(const std::vector<std::string>& args) { return run_polusctl(args); }

/// The key id polusctl keygen printed ("key 0123456789abcdef: ...").
std::string keygen(const std::string& base) {
  Run run = polusctl({"keygen", base, "--comment", "test signer"});
  INFO(run.err);
  REQUIRE(run.status == 0);
  std::smatch match;
  REQUIRE(std::regex_search(run.out, match, std::regex("^key ([0-9a-f]{16}):")));
  return match[1];
}

mode_t mode_of(const std::string& path) {
  struct stat st;
  REQUIRE(stat(path.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

std::vector<std::string> lines_of(const std::string& path) {
  std::vector<std::string> lines;
  std::istringstream in(file_text(path));
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

}  // namespace

TEST_CASE("polusctl keygen and sign", "[signature]") {
  if (!running_as_root()) return;
  TempDir dir;
  const std::string id = keygen(dir / "signer");
  CHECK(mode_of(dir / "signer.key") == 0600);
  CHECK(mode_of(dir / "signer.pub") == 0644);
  CHECK_THAT(file_text(dir / "signer.pub"), Catch::StartsWith("polus-ed25519-public-key ") && Catch::Contains("test signer"));
  Run again = polusctl({"keygen", dir / "signer"});
  CHECK(again.status != 0);
  CHECK_THAT(again.err, Catch::Contains("never overwrites a key"));

  const std::string patch = copy_file(patch_path("greeter-v0-v1.so"), dir / "patch.so");
  Run sign = polusctl({"sign", "--key", dir / "signer.key", patch});
  INFO(sign.err);
  REQUIRE(sign.status == 0);
  CHECK_THAT(sign.out, Catch::Contains("with key " + id));
  CHECK_THAT(file_text(patch + ".sig"), Catch::StartsWith("polus-ed25519-signature " + id + " "));

  REQUIRE(chmod((dir / "signer.key").c_str(), 0640) == 0);
  Run exposed = polusctl({"sign", "--key", dir / "signer.key", patch});
  CHECK(exposed.status == 4);
  CHECK_THAT(exposed.err, Catch::Contains("the secret key is open to group or others (mode 0640)"));
  CHECK(polusctl({"sign", patch}).status == 2);  // no --key
  Run not_a_patch = polusctl({"sign", "--key", dir / "signer.pub", patch});
  CHECK(not_a_patch.status == 4);
}

TEST_CASE("apply --require-signature: only patches signed by a trusted key", "[signature][live]") {
  if (!running_as_root()) return;
  TempDir dir;
  const std::string keys = make_dir(dir / "keys", 0755);
  const std::string signer = keygen(dir / "signer");
  const std::string stranger = keygen(dir / "stranger");
  copy_file(dir / "signer.pub", keys + "/signer.pub");
  auto sign = [&](const std::string& path, const std::string& key) {
    REQUIRE(polusctl({"sign", "--key", dir / (key + ".key"), path}).status == 0);
  };
  const std::string patch = copy_file(patch_path("greeter-v0-v1.so"), dir / "patch.so");
  sign(patch, "signer");

  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  const std::string pid = std::to_string(server.pid());
  const std::string audit = dir / "audit.log";
  auto apply = [&](const std::string& path, std::vector<std::string> more = {}) {
    std::vector<std::string> args = {"apply", pid, path, "--require-signature", "--trusted-keys", keys,
                                     "--audit-log", audit};
    args.insert(args.end(), more.begin(), more.end());
    return polusctl(args);
  };
  auto refused = [&](const Run& run, const std::string& why) {
    INFO(run.err);
    CHECK(run.status == 4);
    CHECK_THAT(run.err, Catch::Contains(why));
    CHECK(server.request("HELLO op") == "Hello, op! (v0)");
  };

  SECTION("unsigned") {
    const std::string unsigned_patch = copy_file(patch, dir / "unsigned.so");
    refused(apply(unsigned_patch), "patch " + unsigned_patch + " is not signed: " + unsigned_patch + ".sig does not exist");
  }
  SECTION("signed by a key that is not trusted") {
    const std::string theirs = copy_file(patch, dir / "theirs.so");
    sign(theirs, "stranger");
    refused(apply(theirs), "is signed by key " + stranger + ", which is not a trusted key: " + keys + " holds " + signer);
  }
  SECTION("a bad signature: the patch changed after signing") {
    const std::string tampered = copy_file(patch, dir / "tampered.so");
    sign(tampered, "signer");
    copy_file(patch_path("greeter-v1-v2.so"), tampered);
    refused(apply(tampered), "the signature " + tampered + ".sig does not match patch " + tampered + " (key " + signer);
  }
  SECTION("a signature file that is none") {
    const std::string garbage = copy_file(patch, dir / "garbage.so");
    make_file(garbage + ".sig", 0644, 0, "not a signature\n");
    refused(apply(garbage), garbage + ".sig is not a Polus signature");
  }
  SECTION("a key file others can write") {
    REQUIRE(chmod((keys + "/signer.pub").c_str(), 0666) == 0);
    refused(apply(patch), "refusing " + keys + "/signer.pub: the file is writable by group and others");
  }
  SECTION("a keys directory others can write") {
    REQUIRE(chmod(keys.c_str(), 0775) == 0);
    refused(apply(patch), "the directory " + keys + " is writable by group");
  }
  SECTION("a key file that is no key") {
    make_file(keys + "/broken.pub", 0644, 0, "hello\n");
    refused(apply(patch), "the trusted key file " + keys + "/broken.pub is not a Polus public key");
  }
  SECTION("no keys directory") {
    Run run = polusctl({"apply", pid, patch, "--require-signature", "--trusted-keys", dir / "none", "--audit-log", audit});
    refused(run, "cannot open directory of trusted keys " + dir / "none");
  }
  SECTION("required by the configuration file, which must itself be trusted") {
    const std::string config = make_file(dir / "polus.conf", 0644, 0,
                                         "# fleet policy\nrequire-signature = yes\ntrusted-keys = " + keys + "\n");
    const std::string unsigned_patch = copy_file(patch, dir / "unsigned.so");
    refused(polusctl({"apply", pid, unsigned_patch, "--config", config, "--audit-log", audit}), "is not signed");
    Run good = polusctl({"apply", pid, patch, "--config", config, "--audit-log", audit});
    INFO(good.err);
    CHECK(good.status == 0);
    CHECK(polusctl({"rollback", pid}).status == 0);
    REQUIRE(chmod(config.c_str(), 0666) == 0);
    refused(polusctl({"apply", pid, patch, "--config", config}), "refusing " + config + ": the file is writable");
    make_file(config, 0644, 0, "require-signatures = yes\n");
    Run typo = polusctl({"apply", pid, patch, "--config", config});
    CHECK(typo.status == 2);
    CHECK_THAT(typo.err, Catch::Contains(config + " line 1: unknown key 'require-signatures'"));
  }

  SECTION("signed by a trusted key: applied, and the signer is in the audit record") {
    Run good = apply(patch);
    INFO(good.err);
    REQUIRE(good.status == 0);
    CHECK(server.request("HELLO op") == "Hi there, op! (v1)");
    std::vector<std::string> records = lines_of(audit);
    REQUIRE(records.size() == 1);
    CHECK_THAT(records[0], Catch::Contains("\"result\":\"ok\"") && Catch::Contains("\"signed_by\":\"" + signer + "\""));
  }
}

TEST_CASE("every apply, rollback, finish and refusal is in the audit log, with its fields", "[audit][live]") {
  if (!running_as_root()) return;
  TempDir dir;
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  const std::string pid = std::to_string(server.pid());
  const std::string audit = dir / "audit.log";
  const std::string patch = copy_file(patch_path("greeter-v0-v1.so"), dir / "patch.so");
  const std::string untrusted = copy_file(patch_path("greeter-v0-v1.so"), dir / "untrusted.so", 0666);
  const std::string data = copy_file(patch_path("greeter-v0-v1-data.so"), dir / "data.so");
  auto run = [&](std::vector<std::string> args) {
    args.insert(args.end(), {"--audit-log", audit});
    return polusctl(args);
  };
  CHECK(run({"apply", pid, patch}).status == 0);
  CHECK(run({"apply", pid, patch}).status == 0);      // already applied
  CHECK(run({"apply", pid, untrusted}).status == 4);  // refused
  CHECK(run({"rollback", pid}).status == 0);
  CHECK(run({"apply", pid, data, "--sync-timeout", "0"}).status == 0);
  CHECK(run({"finish", pid, "--sync-timeout", "100"}).status == 0);  // done or still syncing: both ok
  CHECK(run({"rollback", pid, "--sync-timeout", "5000"}).status == 0);
  CHECK(mode_of(audit) == 0640);

  const std::string build_id = polus::read_build_id(binary_path("greeter-v0"));
  std::vector<std::string> records = lines_of(audit);
  REQUIRE(records.size() == 7);
  const std::vector<std::pair<std::string, std::string>> expected = {
      {"apply", "ok"},       {"apply", "already-applied"}, {"apply", "permission-denied"}, {"rollback", "ok"},
      {"apply", "ok"},       {"finish", "ok"},             {"rollback", "ok"}};
  const std::regex shape("^\\{\"time\":\"\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{6}Z\",\"action\":\"[a-z]+\","
                         "\"result\":\"[a-z-]+\",\"exit_status\":\\d+,\"caller_uid\":0,\"caller_pid\":[1-9]\\d*,"
                         "\"target_pid\":" + pid + ",\"executable\":\"" + binary_path("greeter-v0") +
                         "\",\"build_id\":\"" + build_id + "\",\"patch\":\"[^\"]*\",\"patch_path\":\"[^\"]*\","
                         "\"sha256\":\"([0-9a-f]{64})?\",\"signed_by\":\"\",\"state\":\"[a-z-]*\","
                         "\"duration_ms\":\\d+\\.\\d{3},\"message\":\".*\"\\}$");
  for (size_t i = 0; i < records.size(); ++i) {
    INFO(records[i]);
    CHECK(std::regex_match(records[i], shape));
    CHECK_THAT(records[i], Catch::Contains("\"action\":\"" + expected[i].first + "\",\"result\":\"" +
                                           expected[i].second + "\""));
  }
  CHECK_THAT(records[0], Catch::Contains("\"patch\":\"greeter-v1\"") && Catch::Contains("\"state\":\"committed\"") &&
                             Catch::Contains("\"exit_status\":0"));
  CHECK_THAT(records[2], Catch::Contains("\"exit_status\":4") && Catch::Contains("\"patch_path\":\"" + untrusted) &&
                             Catch::Contains("writable by group and others"));
  CHECK_THAT(records[3], Catch::Contains("\"patch\":\"greeter-v1\"") && Catch::Contains("\"state\":\"rolled-back\""));
  CHECK_THAT(records[5], Catch::Contains("\"patch\":\"greeter-v1-data\""));
}

TEST_CASE("run as root, an audit log that cannot be written stops the operation before it starts", "[audit][live]") {
  if (!running_as_root()) return;
  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  const std::string pid = std::to_string(server.pid());
  Run run = polusctl({"apply", pid, patch_path("greeter-v0-v1.so"), "--audit-log", "/nonexistent-polus/dir/audit.log"});
  CHECK(run.status == 16);
  CHECK_THAT(run.err, Catch::Contains("cannot open the audit log /nonexistent-polus/dir/audit.log for appending") &&
                          Catch::Contains("nothing was done"));
  CHECK(server.request("HELLO op") == "Hello, op! (v0)");
  CHECK_FALSE(maps_mention(server.pid(), "libpolus-agent.so"));
}
