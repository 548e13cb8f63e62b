// Prologue analysis on byte patterns, then the same cases on a real process.
#include <catch2/catch.hpp>

#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "child_process.h"
#include "polus/engine.h"
#include "polus/error.h"
#include "binary/prologue.h"

using polus::analyze_prologue;
using polus::Error;
using polus::ErrorCode;

namespace {
constexpr uint64_t kBase = 0x401000;

polus::EngineOptions options(int timeout_ms = 5000) {
  polus::EngineOptions o;
  o.agent_path = POLUS_AGENT_PATH;
  o.timeout = std::chrono::milliseconds(timeout_ms);
  return o;
}
}  // namespace

TEST_CASE("a plain prologue is overwritten at the entry", "[prologue]") {
  // push %rbp; mov %rsp,%rbp; mov $1,%eax; pop %rbp; ret
  std::vector<uint8_t> code = {0x55, 0x48, 0x89, 0xe5, 0xb8, 1, 0, 0, 0, 0x5d, 0xc3};
  auto a = analyze_prologue(code, kBase, code.size(), 0, "f");
  CHECK(a.patch_site == kBase);
  CHECK_FALSE(a.has_endbr64);
  CHECK(a.interior_boundaries == std::vector<uint64_t>{kBase + 1, kBase + 4});
  CHECK_FALSE(a.requires_inactive_function);
  CHECK_FALSE(a.call_in_overwritten);
}

TEST_CASE("endbr64 stays and the jump goes after it", "[prologue]") {
  std::vector<uint8_t> code = {0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x83, 0xec, 0x08, 0x31, 0xc0, 0x48, 0x83, 0xc4, 0x08, 0xc3};
  auto a = analyze_prologue(code, kBase, code.size(), 0, "f");
  CHECK(a.has_endbr64);
  CHECK(a.patch_site == kBase + 4);
  CHECK(a.interior_boundaries == std::vector<uint64_t>{kBase + 8});
}

TEST_CASE("a function shorter than the jump uses padding, or is refused", "[prologue]") {
  std::vector<uint8_t> padded = {0x31, 0xc0, 0xc3, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc};
  auto a = analyze_prologue(padded, kBase, 3, kBase + 16, "tiny");
  CHECK(a.uses_padding);
  std::vector<uint8_t> tight = {0x31, 0xc0, 0xc3, 0xb8, 7, 0, 0, 0, 0xc3};
  try {
    analyze_prologue(tight, kBase, 3, kBase + 3, "tiny");
    FAIL("a tight 3-byte function was accepted");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::kUnsafeToPatch);
    CHECK_THAT(e.what(), Catch::Contains("too short"));
  }
}

TEST_CASE("a branch back into the first bytes requires an inactive function", "[prologue]") {
  // xor %eax,%eax; 1: add $1,%eax; cmp %edi,%eax; jl 1b; ret
  std::vector<uint8_t> code = {0x31, 0xc0, 0x83, 0xc0, 0x01, 0x39, 0xf8, 0x7c, 0xf9, 0xc3};
  auto a = analyze_prologue(code, kBase, code.size(), 0, "loop");
  CHECK(a.requires_inactive_function);
  CHECK_THAT(a.inactive_reason, Catch::Contains("branches back"));
  CHECK(a.branch_into_overwritten);  // its original cannot run from a stub either
}

TEST_CASE("a call among the overwritten bytes and indirect jumps are noticed", "[prologue]") {
  // call *%rax (2 bytes); nop; nop; nop; jmp *%rdx; ret
  std::vector<uint8_t> code = {0xff, 0xd0, 0x90, 0x90, 0x90, 0xff, 0xe2, 0xc3};
  auto a = analyze_prologue(code, kBase, code.size(), 0, "f");
  CHECK(a.call_in_overwritten);
  CHECK(a.requires_inactive_function);
  CHECK_THAT(a.inactive_reason, Catch::Contains("indirect jump"));
  CHECK_FALSE(a.branch_into_overwritten);
}

TEST_CASE("jumps and trampolines encode correctly", "[prologue]") {
  auto jump = polus::encode_jump(0x1000, 0x2000);
  CHECK(jump == std::vector<uint8_t>{0xe9, 0xfb, 0x0f, 0, 0});
  CHECK(polus::jump_reaches(0x555500000000, 0x555500000000 + 0x7fff0000));
  CHECK_FALSE(polus::jump_reaches(0x555500000000, 0x7f0000000000));
  auto slot = polus::encode_trampoline(0x7f0011223344);
  REQUIRE(slot.size() == 16);
  CHECK(slot[0] == 0xff);
  CHECK(slot[1] == 0x25);
  uint64_t target = 0;
  std::memcpy(&target, slot.data() + 6, 8);
  CHECK(target == 0x7f0011223344);
}

// ---- the same shapes in a running process ------------------------------------------

TEST_CASE("prologue shapes in a live process", "[prologue][live]") {
  polus::testing::ChildProcess target({PROLOGUE_FIXTURE});
  REQUIRE(target.read_line() == "READY");

  SECTION("a tiny function followed by padding is redirected and restored") {
    CHECK(target.ask("call tiny_padded") == "0");
    polus::apply_patch(target.pid(), PROLOGUE_PATCH_DIR "/prologue-tiny-padded.so", options());
    CHECK(target.ask("call tiny_padded 5") == "4205");
    polus::rollback_patch(target.pid(), options());
    CHECK(target.ask("call tiny_padded") == "0");
  }
  SECTION("a tiny function followed by code is refused and the target is unchanged") {
    try {
      polus::apply_patch(target.pid(), PROLOGUE_PATCH_DIR "/prologue-tiny-tight.so", options());
      FAIL("applied a jump over the next function");
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::kUnsafeToPatch);
    }
    CHECK(target.ask("call tiny_tight") == "0");
    CHECK(target.ask("call after_tight") == "7");
    CHECK_FALSE(polus::read_status(target.pid()).agent_loaded);
  }
  SECTION("a function looping into its first bytes is patched when no thread is inside") {
    CHECK(target.ask("call loop_to_top 10") == "10");
    polus::apply_patch(target.pid(), PROLOGUE_PATCH_DIR "/prologue-loop-to-top.so", options());
    CHECK(target.ask("call loop_to_top 10") == "4210");
  }
  SECTION("a thread spinning in the first bytes delays the commit until it leaves") {
    REQUIRE(target.ask("spin 60") == "SPINNING");
    try {
      polus::apply_patch(target.pid(), PROLOGUE_PATCH_DIR "/prologue-spin.so", options(300));
      FAIL("redirected a function a thread is spinning in");
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::kUnsafeToPatch);
      CHECK_THAT(e.what(), Catch::Contains("spin_at_entry"));
    }
    CHECK(polus::read_status(target.pid()).patches.empty());
    // Release the spin from another thread while apply is retrying.
    std::jthread releaser([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      target.send("release");
    });
    auto info = polus::apply_patch(target.pid(), PROLOGUE_PATCH_DIR "/prologue-spin.so", options(10000));
    releaser.join();
    CHECK(target.read_line() == "RELEASED");
    CHECK(info.state == "committed");
    CHECK(target.alive());
  }
}

TEST_CASE("a thread preempted on a trampoline slot keeps its patch loaded and its slot out of use",
          "[prologue][live]") {
  polus::testing::ChildProcess target({PROLOGUE_FIXTURE});
  REQUIRE(target.read_line() == "READY");
  auto patch_mapped = [&] {
    std::ifstream maps("/proc/" + std::to_string(target.pid()) + "/maps");
    for (std::string line; std::getline(maps, line);) {
      // Loaded from a memfd named after the patch (update/patch_memfd.h).
      if (line.find("/memfd:polus:prologue-tiny_padded:") != std::string::npos) return true;
    }
    return false;
  };
  polus::PatchInfo first = polus::apply_patch(target.pid(), PROLOGUE_PATCH_DIR "/prologue-tiny-padded.so", options());
  REQUIRE(first.redirects.size() == 1);
  REQUIRE(first.redirects[0].trampoline != 0);  // the patch library is far from the executable
  // A thread took tiny_padded's jump and was interrupted on the slot, before the slot's own jump.
  REQUIRE(target.ask("park") == "PARKED");

  polus::rollback_patch(target.pid(), options());
  CHECK(target.ask("call tiny_padded") == "0");  // new calls run the old code again
  // The parked thread will still jump from the slot into the patch: it must not be unloaded.
  CHECK(patch_mapped());

  // A new patch gets a fresh slot, not the one a thread is on.
  polus::PatchInfo second = polus::apply_patch(target.pid(), PROLOGUE_PATCH_DIR "/prologue-tiny-padded.so", options());
  REQUIRE(second.redirects.size() == 1);
  CHECK(second.redirects[0].trampoline != first.redirects[0].trampoline);
  CHECK(target.ask("call tiny_padded 5") == "4205");
  polus::rollback_patch(target.pid(), options());

  // Let it go on: from the slot into the patch's function, back to its loop, which now calls
  // the old code. The process must still be alive and answering.
  CHECK(target.ask("unpark") == "UNPARKED");
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(target.ask("call tiny_padded") == "0");
}
