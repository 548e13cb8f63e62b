// Calling the original: the stub that runs a redirected function's displaced first
// instructions elsewhere (binary/relocate.h), checked by running stubs of hand-written
// functions in this process, then a wrapper patch applied to the greeter under load.
#include <catch2/catch.hpp>

#include <sys/mman.h>

#include <atomic>
#include <cstring>
#include <set>
#include <thread>
#include <vector>

#include "binary/relocate.h"
#include "greeter_process.h"
#include "polus/engine.h"
#include "polus/error.h"

using namespace std::chrono_literals;
using polus::build_original_stub;
using polus::testing::binary_path;
using polus::testing::GreeterProcess;
using polus::testing::patch_path;

extern "C" {
int relocate_value = 41;
int reloc_rip(int);    // mov relocate_value(%rip),%eax; add %edi,%eax; ret
int reloc_jcc(int);    // test %edi,%edi; je 1f; lea 100(%rdi),%eax; ret; 1: mov $7,%eax; ret
int reloc_call(int);   // sub $8,%rsp; call reloc_helper; add $8,%rsp; inc %eax; ret
int reloc_endbr(int);  // endbr64; mov relocate_value(%rip),%eax; sub %edi,%eax; ret
int reloc_into(int);   // 1: dec %edi; jnz 1b; mov %edi,%eax; ret
int reloc_loop(int);   // xor %eax,%eax; loop 1f; inc %eax; 1: ret
}

// Fixed code, so the displaced instructions are known whatever the compiler does.
asm(R"(
    .text
    .globl reloc_rip, reloc_jcc, reloc_call, reloc_endbr, reloc_into, reloc_loop
reloc_rip:
    mov relocate_value(%rip), %eax
    add %edi, %eax
    ret
reloc_jcc:
    test %edi, %edi
    je 1f
    lea 100(%rdi), %eax
    ret
1:  mov $7, %eax
    ret
reloc_call:
    sub $8, %rsp
    call reloc_helper
    add $8, %rsp
    inc %eax
    ret
reloc_helper:
    lea 1000(%rdi), %eax
    ret
reloc_endbr:
    endbr64
    mov relocate_value(%rip), %eax
    sub %edi, %eax
    ret
reloc_into:
2:  dec %edi
    jnz 2b
    mov %edi, %eax
    ret
reloc_loop:
    xor %eax, %eax
    loop 4f
    inc %eax
4:  ret
)");

namespace {

/// An executable page within rel32 reach of this test's code, where stubs are run.
class StubPage {
 public:
  StubPage() {
    const auto code = reinterpret_cast<uintptr_t>(&reloc_rip) & ~uintptr_t{0xfff};
    for (uintptr_t distance = 64u << 20; distance < (1ull << 30) && page_ == nullptr; distance *= 2) {
      for (uintptr_t hint : {code - distance, code + distance}) {
        void* p = ::mmap(reinterpret_cast<void*>(hint), 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
        if (p != MAP_FAILED) {
          page_ = p;
          break;
        }
      }
    }
    REQUIRE(page_ != nullptr);
  }
  ~StubPage() { ::munmap(page_, 4096); }
  uint64_t address() const { return reinterpret_cast<uint64_t>(page_); }

  /// Builds the stub of `function` (patch site `skip` bytes in) here and calls it with `x`.
  int run(int (*function)(int), int x, size_t skip = 0) {
    const auto site = reinterpret_cast<uint64_t>(function) + skip;
    std::vector<uint8_t> code(reinterpret_cast<const uint8_t*>(site), reinterpret_cast<const uint8_t*>(site) + 32);
    std::vector<uint8_t> stub = build_original_stub(code, site, skip == 4, address(), "f");
    std::memcpy(page_, stub.data(), stub.size());
    __builtin___clear_cache(static_cast<char*>(page_), static_cast<char*>(page_) + stub.size());
    return reinterpret_cast<int (*)(int)>(page_)(x);
  }

 private:
  void* page_ = nullptr;
};

}  // namespace

TEST_CASE("a stub runs the displaced instructions, relocated, and continues in the function", "[call-original]") {
  StubPage page;
  // A rip-relative load: its displacement is adjusted to the stub's place.
  CHECK(page.run(reloc_rip, 1) == 42);
  relocate_value = 100;
  CHECK(page.run(reloc_rip, 1) == 101);
  // A short conditional branch becomes a rel32 one to the same target, both ways.
  CHECK(page.run(reloc_jcc, 0) == 7);
  CHECK(page.run(reloc_jcc, 5) == 105);
  // A call among the displaced bytes: rel32 to the same function, returning into the stub.
  CHECK(page.run(reloc_call, 1) == 1002);
  // endbr64 stays first; the displaced bytes start after it.
  std::vector<uint8_t> stub = build_original_stub(
      std::vector<uint8_t>(reinterpret_cast<const uint8_t*>(&reloc_endbr) + 4, reinterpret_cast<const uint8_t*>(&reloc_endbr) + 36),
      reinterpret_cast<uint64_t>(&reloc_endbr) + 4, true, page.address(), "reloc_endbr");
  CHECK(std::vector<uint8_t>(stub.begin(), stub.begin() + 4) == std::vector<uint8_t>{0xf3, 0x0f, 0x1e, 0xfa});
  CHECK(page.run(reloc_endbr, 1, 4) == 99);
  relocate_value = 41;
}

TEST_CASE("what cannot be moved is refused, naming the instruction", "[call-original]") {
  auto refusal = [](int (*function)(int)) {
    const auto site = reinterpret_cast<uint64_t>(function);
    std::vector<uint8_t> code(reinterpret_cast<const uint8_t*>(site), reinterpret_cast<const uint8_t*>(site) + 32);
    try {
      build_original_stub(code, site, false, site + 0x1000, "f");
    } catch (const polus::Error& e) {
      CHECK(e.code() == polus::ErrorCode::kUnsafeToPatch);
      return std::string(e.what());
    }
    return std::string("built");
  };
  CHECK_THAT(refusal(reloc_into), Catch::Contains("branches into the displaced bytes"));
  CHECK_THAT(refusal(reloc_loop), Catch::Contains("loop") && Catch::Contains("no 32-bit form"));
  // Beyond ±2 GiB a rip-relative operand cannot follow; plain instructions can, with an
  // absolute jump back.
  const auto site = reinterpret_cast<uint64_t>(&reloc_rip);
  std::vector<uint8_t> code(reinterpret_cast<const uint8_t*>(site), reinterpret_cast<const uint8_t*>(site) + 32);
  CHECK_THROWS_WITH(build_original_stub(code, site, false, site + (8ull << 30), "f"), Catch::Contains("beyond ±2 GiB"));
  const std::vector<uint8_t> pushes = {0x53, 0x55, 0x41, 0x54, 0x41, 0x55, 0xc3};  // push rbx, rbp, r12, r13
  std::vector<uint8_t> far = build_original_stub(pushes, 0x401000, false, 0x7f0000000000, "f");
  CHECK(std::vector<uint8_t>(far.begin(), far.begin() + 6) == std::vector<uint8_t>(pushes.begin(), pushes.begin() + 6));
  CHECK(std::vector<uint8_t>(far.begin() + 6, far.begin() + 12) == std::vector<uint8_t>{0xff, 0x25, 0, 0, 0, 0});
  uint64_t back = 0;
  std::memcpy(&back, far.data() + 12, 8);
  CHECK(back == 0x401006);
}

/// Two clients asking without pause; every reply must be one the versions in play give.
class WrapperLoad {
 public:
  explicit WrapperLoad(int port) {
    for (int i = 0; i < 2; ++i) {
      threads_.emplace_back([this, port, i] {
        const std::string name = "load" + std::to_string(i);
        const std::set<std::string> good = {"Hello, " + name + "! (v0)", "Hello, " + name + "! (v0) [wrapped]",
                                            "Hello, " + name + "! (v0) [wrapped] [again]",
                                            "Hi there, " + name + "! (v1)", "Hi there, " + name + "! (v1) [wrapped]"};
        polus::testing::Client client(port);
        while (!stop_) {
          std::string reply = client.request("HELLO " + name);
          (good.count(reply) ? ok_ : bad_)++;
        }
      });
    }
  }
  ~WrapperLoad() { stop(); }
  void stop() {
    stop_ = true;
    for (auto& t : threads_) t.join();
    threads_.clear();
  }
  long ok() const { return ok_; }
  long bad() const { return bad_; }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<long> ok_{0}, bad_{0};
  std::vector<std::thread> threads_;
};

TEST_CASE("a wrapper calling the function it replaces, under load, stacked and rolled back", "[call-original][live]") {
  polus::EngineOptions o;
  o.agent_path = POLUS_AGENT_PATH;
  o.timeout = 10s;
  for (const char* variant : {"greeter-v0", "greeter-v0-cet"}) {
    INFO(variant);
    auto server = GreeterProcess::spawn(binary_path(variant), 4);
    WrapperLoad load(server.port());
    polus::apply_patch(server.pid(), patch_path("greeter-wrap.so"), o);
    CHECK(server.request("HELLO ann") == "Hello, ann! (v0) [wrapped]");
    // The same patch again changes nothing (known by its SHA-256; were it loaded again, its
    // version replaced would be itself and a wrapper would recurse).
    CHECK(polus::apply_patch(server.pid(), patch_path("greeter-wrap.so"), o).already_applied);
    CHECK(polus::read_status(server.pid()).patches.size() == 1);
    CHECK(server.request("HELLO ann") == "Hello, ann! (v0) [wrapped]");
    // Stacked on another wrapper: the second calls the first, which calls the original.
    polus::apply_patch(server.pid(), patch_path("greeter-wrap-again.so"), o);
    CHECK(server.request("HELLO ann") == "Hello, ann! (v0) [wrapped] [again]");
    polus::rollback_patch(server.pid(), o);
    CHECK(server.request("HELLO ann") == "Hello, ann! (v0) [wrapped]");
    polus::rollback_patch(server.pid(), o);
    CHECK(server.request("HELLO ann") == "Hello, ann! (v0)");
    // On top of v1: the version replaced is v1's.
    polus::apply_patch(server.pid(), patch_path("greeter-v0-v1.so"), o);
    polus::apply_patch(server.pid(), patch_path("greeter-wrap.so"), o);
    CHECK(server.request("HELLO ann") == "Hi there, ann! (v1) [wrapped]");
    polus::rollback_patch(server.pid(), o);
    CHECK(server.request("HELLO ann") == "Hi there, ann! (v1)");
    polus::rollback_patch(server.pid(), o);
    // Cycles reuse the one stub of format_reply.
    for (int i = 0; i < 10; ++i) {
      polus::apply_patch(server.pid(), patch_path("greeter-wrap.so"), o);
      REQUIRE(server.request("HELLO bo") == "Hello, bo! (v0) [wrapped]");
      polus::rollback_patch(server.pid(), o);
      REQUIRE(server.request("HELLO bo") == "Hello, bo! (v0)");
    }
    load.stop();
    CHECK(load.bad() == 0);
    CHECK(load.ok() > 0);
    CHECK(server.alive());
  }
}

TEST_CASE("a pre-update callback may call the version its patch replaces, in the rehearsal's copy too",
          "[call-original][live]") {
  // Its `resolved` slot is filled before any callback runs: in the process at the commit, and
  // in the copy the rehearsal loads the patch into (there the entry is still the original).
  auto server = polus::testing::GreeterProcess::spawn(polus::testing::binary_path("greeter-v0"), 2);
  polus::EngineOptions o;
  o.agent_path = POLUS_AGENT_PATH;
  o.rehearse = true;
  polus::PatchInfo info = polus::apply_patch(server.pid(), polus::testing::patch_path("greeter-wrap-checked.so"), o);
  CHECK(info.state == "committed");
  CHECK(server.request("HELLO ann") == "Hello, ann! (v0) [wrapped]");
  CHECK(polus::rollback_patch(server.pid(), o).state == "rolled-back");
}
