// Seccomp-confined targets: the greeter with a filter that kills the process for one system
// call (as a sandboxed service's filter does for calls it never expects). Polus reads the
// filter and refuses a patch whose apply would make that call, before anything changes; a
// call it does not need leaves the patch free to apply. The BPF evaluator is also checked
// on programs written here.
#include <catch2/catch.hpp>

#include <linux/audit.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#include "greeter_process.h"
#include "polus/engine.h"
#include "polus/error.h"
#include "process/seccomp_filter.h"

using namespace std::chrono_literals;
using polus::Error;
using polus::ErrorCode;
using polus::testing::binary_path;
using polus::testing::GreeterProcess;
using polus::testing::LoadGenerator;
using polus::testing::patch_path;

namespace {

polus::EngineOptions options(bool rehearse = true) {
  polus::EngineOptions o;
  o.agent_path = POLUS_AGENT_PATH;
  o.timeout = 10s;
  o.rehearse = rehearse;
  return o;
}

GreeterProcess confined(const std::string& syscall) {
  return GreeterProcess::spawn(binary_path("greeter-v0"), 4, 5000ms, {"--seccomp-kill", syscall});
}

/// Applies `patch` expecting a refusal that names `what`; the greeter must be unchanged.
void expect_refusal(GreeterProcess& server, const std::string& patch, bool rehearse, const std::string& what) {
  try {
    polus::apply_patch(server.pid(), patch_path(patch), options(rehearse));
    FAIL("a patch whose apply makes a call the filter kills for was applied");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::kUnsafeToPatch);
    CHECK_THAT(e.what(), Catch::Contains(what) && Catch::Contains("kills the process") &&
                             Catch::Contains("Nothing was changed"));
  }
  REQUIRE(server.alive());
  CHECK(server.request("HELLO ann") == "Hello, ann! (v0)");
  CHECK(polus::read_status(server.pid()).patches.empty());
}

}  // namespace

TEST_CASE("a filter that kills on openat: every apply refused up front, the server unharmed", "[seccomp][live]") {
  auto server = confined("openat");
  LoadGenerator load(server.port(), 2);
  load.start();
  REQUIRE(load.wait_for_replies(50));
  expect_refusal(server, "greeter-v0-v1.so", true, "openat");
  expect_refusal(server, "greeter-v0-v1.so", false, "openat");  // without a rehearsal too
  load.stop();
  CHECK(load.failures() == 0);
}

TEST_CASE("a filter that kills on memfd_create: refused up front (the patch is loaded from a sealed memfd)",
          "[seccomp][live]") {
  auto server = confined("memfd_create");
  expect_refusal(server, "greeter-v0-v1.so", true, "memfd_create");
  expect_refusal(server, "greeter-v0-v1.so", false, "memfd_create");
}

TEST_CASE("a filter that kills on clone: refused with a rehearsal, applied without one", "[seccomp][live]") {
  auto server = confined("clone");
  expect_refusal(server, "greeter-v0-v1.so", true, "clone");
  auto applied = polus::apply_patch(server.pid(), patch_path("greeter-v0-v1.so"), options(false));
  CHECK(applied.state == "committed");
  CHECK(server.request("HELLO ann") == "Hi there, ann! (v1)");
  CHECK(polus::rollback_patch(server.pid(), options()).state == "rolled-back");
  REQUIRE(server.alive());
  CHECK(server.request("HELLO ann") == "Hello, ann! (v0)");
}

TEST_CASE("a filter that kills on rt_sigaction: code patches apply, data patches are refused", "[seccomp][live]") {
  auto server = confined("rt_sigaction");
  auto applied = polus::apply_patch(server.pid(), patch_path("greeter-v0-v1.so"), options());
  CHECK(applied.state == "committed");
  CHECK(server.request("HELLO bo") == "Hi there, bo! (v1)");
  CHECK(polus::rollback_patch(server.pid(), options()).state == "rolled-back");
  // Write tracking installs the agent's SIGSEGV handler: the filter would kill the process.
  expect_refusal(server, "greeter-v0-v1-data.so", true, "rt_sigaction");
}

namespace {

sock_filter stmt(uint16_t code, uint32_t k) { return sock_filter{code, 0, 0, k}; }
sock_filter jump(uint16_t code, uint32_t k, uint8_t jt, uint8_t jf) { return sock_filter{code, jt, jf, k}; }

}  // namespace

TEST_CASE("the seccomp evaluator: precedence, arguments, malformed programs", "[seccomp]") {
  using polus::seccomp_action;
  using polus::SyscallProbe;
  // Kills mmap with PROT_EXEC in its third argument (a W^X-style rule), allows the rest.
  std::vector<sock_filter> no_exec_mmap = {
      stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      jump(BPF_JMP | BPF_JEQ | BPF_K, SYS_mmap, 0, 3),
      stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args) + 2 * 8),
      jump(BPF_JMP | BPF_JSET | BPF_K, PROT_EXEC, 0, 1),
      stmt(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
      stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  // Fails every openat with EPERM.
  std::vector<sock_filter> eperm_openat = {
      stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      jump(BPF_JMP | BPF_JEQ | BPF_K, SYS_openat, 0, 1),
      stmt(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | 1),
      stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  const SyscallProbe exec_mmap{"mmap", SYS_mmap, {0, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE, 3, 0}};
  const SyscallProbe data_mmap{"mmap", SYS_mmap, {0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE, 3, 0}};
  const SyscallProbe openat{"openat", SYS_openat, {}};
  CHECK(seccomp_action({no_exec_mmap}, exec_mmap) == SECCOMP_RET_KILL_PROCESS);
  CHECK(seccomp_action({no_exec_mmap}, data_mmap) == SECCOMP_RET_ALLOW);
  CHECK(seccomp_action({no_exec_mmap, eperm_openat}, openat) == (SECCOMP_RET_ERRNO | 1));
  CHECK_FALSE(polus::seccomp_allows(seccomp_action({no_exec_mmap, eperm_openat}, openat)));
  // Precedence: the kill of one filter beats the other's errno.
  CHECK(seccomp_action({eperm_openat, no_exec_mmap}, exec_mmap) == SECCOMP_RET_KILL_PROCESS);
  // A load outside seccomp_data, a division by zero and running off the end all count as kill.
  CHECK(seccomp_action({{stmt(BPF_LD | BPF_W | BPF_ABS, 64), stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)}}, openat) ==
        SECCOMP_RET_KILL_PROCESS);
  CHECK(seccomp_action({{stmt(BPF_ALU | BPF_DIV | BPF_K, 0), stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)}}, openat) ==
        SECCOMP_RET_KILL_PROCESS);
  CHECK(seccomp_action({{stmt(BPF_LD | BPF_IMM, 1)}}, openat) == SECCOMP_RET_KILL_PROCESS);
  CHECK(polus::describe_seccomp_action(SECCOMP_RET_ERRNO | 1) == "fails it with errno 1");
}
