// Tests of the CFI unwinder: real threads of unwind_fixture (through libc, a signal frame
// and code without CFI), and synthetic stacks in FakeMemory for the scan fallback and for a
// sigreturn trampoline without CFI.
#include <elf.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/ucontext.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "process/process_memory.h"
#include "process/ptrace_session.h"
#include "binary/symbols.h"
#include "binary/unwinder.h"

using polus::FakeMemory;
using polus::ProcessSymbols;
using polus::RemoteAddr;
using polus::UnwindResult;
using polus::Unwinder;

namespace {

/// unwind_fixture, started and killed with the test; it prints "ready MAIN LEVELS SIGNAL JIT".
class Fixture {
 public:
  Fixture() {
    int fds[2];
    REQUIRE(pipe2(fds, O_CLOEXEC) == 0);
    pid_ = fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      dup2(fds[1], STDOUT_FILENO);
      execl(UNWIND_FIXTURE, UNWIND_FIXTURE, static_cast<char*>(nullptr));
      _exit(127);
    }
    close(fds[1]);
    output_ = fdopen(fds[0], "r");
    REQUIRE(output_ != nullptr);
    char line[256];
    REQUIRE(fgets(line, sizeof line, output_) != nullptr);
    int main_tid = 0, levels = 0, signal = 0, jit = 0;
    REQUIRE(sscanf(line, "ready %d %d %d %d", &main_tid, &levels, &signal, &jit) == 4);
    main_tid_ = main_tid;
    levels_tid_ = levels;
    signal_tid_ = signal;
    jit_tid_ = jit;
  }
  Fixture(const Fixture&) = delete;
  Fixture& operator=(const Fixture&) = delete;
  ~Fixture() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (output_) fclose(output_);
  }

  pid_t pid() const { return pid_; }
  pid_t main_tid_ = 0, levels_tid_ = 0, signal_tid_ = 0, jit_tid_ = 0;

 private:
  pid_t pid_ = -1;
  FILE* output_ = nullptr;
};

/// Waits until a thread sleeps in the kernel (state S), i.e. has reached its blocking read().
void wait_sleeping(pid_t pid, pid_t tid) {
  std::string path = "/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/stat";
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    std::ifstream in(path);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    size_t paren = text.rfind(')');
    if (paren != std::string::npos && paren + 2 < text.size() && text[paren + 2] == 'S') return;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  FAIL("thread " << tid << " never blocked");
}

std::string basename_of(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

/// A name per frame: the symbol, else "?@object", else "?" (e.g. JIT code).
std::vector<std::string> frame_names(const ProcessSymbols& symbols, const UnwindResult& result) {
  std::vector<std::string> names;
  for (const auto& frame : result.frames) {
    // A return address may sit just past the end of a function that ends with a call.
    uint64_t lookup = &frame == &result.frames.front() ? frame.pc : frame.pc - 1;
    if (auto symbol = symbols.symbol_containing(RemoteAddr(lookup))) {
      names.push_back(symbol->name);
    } else if (auto* object = symbols.object_containing(RemoteAddr(frame.pc))) {
      names.push_back("?@" + basename_of(object->path));
    } else {
      names.push_back("?");
    }
  }
  return names;
}

std::string describe(const ProcessSymbols& symbols, const UnwindResult& result) {
  std::ostringstream out;
  auto names = frame_names(symbols, result);
  out << "complete=" << result.complete << " used_scan=" << result.used_scan << " note='" << result.note << "'\n";
  for (size_t i = 0; i < result.frames.size(); ++i) {
    out << "  #" << i << " pc=0x" << std::hex << result.frames[i].pc << " cfa=0x" << result.frames[i].cfa << std::dec
        << (result.frames[i].from_scan ? " [scan] " : " ") << names[i] << "\n";
  }
  return out.str();
}

/// Index of the first frame named `name` at or after `from`, or -1.
int find_frame(const std::vector<std::string>& names, const std::string& name, int from = 0) {
  for (int i = from; i < static_cast<int>(names.size()); ++i) {
    if (names[i] == name) return i;
  }
  return -1;
}

bool in_libc(const ProcessSymbols& symbols, uint64_t pc) {
  auto* object = symbols.object_containing(RemoteAddr(pc));
  return object && basename_of(object->path).starts_with("libc.so");
}

void require_cfa_increasing(const UnwindResult& result, size_t from, size_t to) {
  for (size_t i = from + 1; i < to && i < result.frames.size(); ++i) {
    CHECK(result.frames[i].cfa > result.frames[i - 1].cfa);
  }
}

}  // namespace

TEST_CASE("unwinds real threads through libc, a signal frame and code without CFI", "[unwinder]") {
  Fixture fixture;
  for (pid_t tid : {fixture.main_tid_, fixture.levels_tid_, fixture.signal_tid_, fixture.jit_tid_}) {
    wait_sleeping(fixture.pid(), tid);
  }
  auto session = polus::PtraceSession::seize(fixture.pid());
  session.stop_all(polus::Clock::now() + std::chrono::seconds(10));
  auto symbols = ProcessSymbols::load(fixture.pid());
  polus::ProcMemory memory(fixture.pid());
  Unwinder unwinder(symbols, fixture.pid());

  // Cold: the first unwind parses the CFI of the fixture and libc.
  auto cold_start = std::chrono::steady_clock::now();
  UnwindResult levels = unwinder.unwind(memory, session.get_regs(fixture.levels_tid_));
  auto cold = std::chrono::steady_clock::now() - cold_start;

  SECTION("levels thread: level_c -> level_b -> level_a from read() up to clone3") {
    INFO(describe(symbols, levels));
    auto names = frame_names(symbols, levels);
    REQUIRE(!levels.frames.empty());
    CHECK(in_libc(symbols, levels.frames[0].pc));  // read()
    int c = find_frame(names, "level_c");
    int b = find_frame(names, "level_b", c + 1);
    int a = find_frame(names, "level_a", b + 1);
    REQUIRE(c > 0);
    REQUIRE(b == c + 1);
    REQUIRE(a == b + 1);
    int d = a + 1;
    for (int i = 0; i < 4; ++i) CHECK(find_frame(names, "descend", d + i) == d + i);
    CHECK(find_frame(names, "levels_thread", a) == a + 5);
    CHECK(levels.complete);
    CHECK_FALSE(levels.used_scan);
    CHECK(levels.note.empty());
    CHECK(in_libc(symbols, levels.frames.back().pc));  // start_thread / clone3
    for (const auto& frame : levels.frames) CHECK_FALSE(frame.from_scan);
    require_cfa_increasing(levels, 0, levels.frames.size());

    // The same stack again, with the CFI cached; timing is printed, not asserted.
    constexpr int kRounds = 5000;
    user_regs_struct regs = session.get_regs(fixture.levels_tid_);
    auto warm_start = std::chrono::steady_clock::now();
    size_t frames = 0;
    for (int i = 0; i < kRounds; ++i) frames += unwinder.unwind(memory, regs).frames.size();
    auto warm = std::chrono::steady_clock::now() - warm_start;
    CHECK(frames == kRounds * levels.frames.size());
    using us = std::chrono::duration<double, std::micro>;
    WARN("unwinding a " << levels.frames.size() << "-frame stack through /proc/PID/mem: first unwind (parses the CFI "
                        << "of the fixture and libc) " << us(cold).count() << " us; then " << us(warm).count() / kRounds
                        << " us per unwind (" << us(warm).count() / kRounds / static_cast<double>(levels.frames.size())
                        << " us per frame), mean of " << kRounds);
  }

  SECTION("max_frames stops the walk and says so") {
    UnwindResult cut = unwinder.unwind(memory, session.get_regs(fixture.levels_tid_), 3);
    CHECK(cut.frames.size() == 3);
    CHECK_FALSE(cut.complete);
    CHECK(cut.note.find("stopped after 3 frames") != std::string::npos);
  }

  SECTION("signal thread: through the handler and __restore_rt into the interrupted functions") {
    UnwindResult result = unwinder.unwind(memory, session.get_regs(fixture.signal_tid_));
    INFO(describe(symbols, result));
    auto names = frame_names(symbols, result);
    REQUIRE(!result.frames.empty());
    CHECK(in_libc(symbols, result.frames[0].pc));  // read()
    int blocks = find_frame(names, "handler_blocks");
    int handler = find_frame(names, "on_sigusr1", blocks + 1);
    REQUIRE(blocks > 0);
    REQUIRE(handler == blocks + 1);
    // The handler returns into glibc's sigreturn trampoline...
    REQUIRE(static_cast<size_t>(handler + 1) < result.frames.size());
    uint64_t trampoline = result.frames[handler + 1].pc;
    CHECK(in_libc(symbols, trampoline));
    uint8_t code[9];
    memory.read_bytes(RemoteAddr(trampoline), code, sizeof code);
    const uint8_t kSigreturn[] = {0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05};
    CHECK(std::memcmp(code, kSigreturn, sizeof code) == 0);
    // ...whose frame restores the interrupted context: the spinning function, then its callers.
    int inner = find_frame(names, "in_handler_inner", handler + 1);
    CHECK(inner == handler + 2);
    CHECK(find_frame(names, "in_handler_outer", inner) == inner + 1);
    CHECK(find_frame(names, "signal_thread", inner) == inner + 2);
    CHECK(result.complete);
    CHECK_FALSE(result.used_scan);
    require_cfa_increasing(result, 0, static_cast<size_t>(handler + 1));
    require_cfa_increasing(result, static_cast<size_t>(handler + 1), result.frames.size());
  }

  SECTION("jit thread: no CFI for the anonymous code page, found again by scanning") {
    UnwindResult result = unwinder.unwind(memory, session.get_regs(fixture.jit_tid_));
    INFO(describe(symbols, result));
    auto names = frame_names(symbols, result);
    int target = find_frame(names, "jit_target");
    REQUIRE(target > 0);
    REQUIRE(static_cast<size_t>(target + 2) < result.frames.size());
    uint64_t jit_pc = result.frames[target + 1].pc;
    CHECK(symbols.object_containing(RemoteAddr(jit_pc)) == nullptr);
    CHECK_FALSE(result.frames[target + 1].from_scan);
    CHECK(names[target + 2] == "jit_caller");
    CHECK(result.frames[target + 2].from_scan);
    CHECK(find_frame(names, "jit_thread", target) == target + 3);
    CHECK(result.used_scan);
    std::ostringstream expected;
    expected << "no CFI for pc 0x" << std::hex << jit_pc << " in an anonymous executable mapping; scanned";
    CHECK(result.note == expected.str());
    CHECK(result.complete);  // CFI takes over again after the scan, up to clone3
    require_cfa_increasing(result, 0, result.frames.size());
  }

  SECTION("main thread: main -> __libc_start_call_main -> ... -> _start") {
    UnwindResult result = unwinder.unwind(memory, session.get_regs(fixture.main_tid_));
    INFO(describe(symbols, result));
    auto names = frame_names(symbols, result);
    CHECK(find_frame(names, "main") >= 1);
    CHECK(result.complete);
    CHECK_FALSE(result.used_scan);
    CHECK(names.back() == "_start");
  }
}

// --- synthetic stacks ------------------------------------------------------------------------

namespace {

volatile uint64_t g_data_word = 42;

}  // namespace

// Helpers in assembly, so that their CFI does not depend on how this test is compiled:
//   unwinder_test_capture     returns its own return address;
//   unwinder_test_rsp_caller  calls it from an rsp-based frame (CFA = rsp + 16 after the call)
//                             and returns what it returned: a pc just after a call;
//   unwinder_test_rbp_caller  the same from an rbp-based frame (CFA = rbp + 16).
asm(R"(
    .pushsection .text
    .p2align 4
    .globl unwinder_test_capture
    .hidden unwinder_test_capture
    .type unwinder_test_capture, @function
unwinder_test_capture:
    .cfi_startproc
    movq (%rsp), %rax
    ret
    .cfi_endproc
    .size unwinder_test_capture, .-unwinder_test_capture

    .p2align 4
    .globl unwinder_test_rsp_caller
    .hidden unwinder_test_rsp_caller
    .type unwinder_test_rsp_caller, @function
unwinder_test_rsp_caller:
    .cfi_startproc
    subq $8, %rsp
    .cfi_def_cfa_offset 16
    call unwinder_test_capture
    addq $8, %rsp
    .cfi_def_cfa_offset 8
    ret
    .cfi_endproc
    .size unwinder_test_rsp_caller, .-unwinder_test_rsp_caller

    .p2align 4
    .globl unwinder_test_rbp_caller
    .hidden unwinder_test_rbp_caller
    .type unwinder_test_rbp_caller, @function
unwinder_test_rbp_caller:
    .cfi_startproc
    pushq %rbp
    .cfi_def_cfa_offset 16
    .cfi_offset %rbp, -16
    movq %rsp, %rbp
    .cfi_def_cfa_register %rbp
    call unwinder_test_capture
    popq %rbp
    .cfi_def_cfa %rsp, 8
    ret
    .cfi_endproc
    .size unwinder_test_rbp_caller, .-unwinder_test_rbp_caller
    .popsection
)");

extern "C" uint64_t unwinder_test_rsp_caller();
extern "C" uint64_t unwinder_test_rbp_caller();

namespace {

std::vector<uint8_t> words(std::initializer_list<uint64_t> values, size_t zero_words = 0) {
  std::vector<uint64_t> all(values);
  all.resize(all.size() + zero_words, 0);
  std::vector<uint8_t> bytes(all.size() * 8);
  std::memcpy(bytes.data(), all.data(), bytes.size());
  return bytes;
}

std::vector<uint8_t> own_bytes(uint64_t address, size_t size) {
  std::vector<uint8_t> bytes(size);
  std::memcpy(bytes.data(), reinterpret_cast<const void*>(address), size);
  return bytes;
}

/// An executable anonymous page (JIT code as far as the unwinder knows: no object, no CFI).
struct JitPage {
  JitPage() {
    page = mmap(nullptr, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(page != MAP_FAILED);
  }
  ~JitPage() { munmap(page, 4096); }
  uint64_t at(uint64_t offset) const { return reinterpret_cast<uint64_t>(page) + offset; }
  void* page;
};

/// The runtime address and size of a section of this test binary, from its section headers.
std::pair<uint64_t, uint64_t> own_section(const ProcessSymbols& symbols, const char* name) {
  std::ifstream in("/proc/self/exe", std::ios::binary);
  std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  Elf64_Ehdr header;
  REQUIRE(file.size() >= sizeof header);
  std::memcpy(&header, file.data(), sizeof header);
  auto section = [&](unsigned index) {
    Elf64_Shdr shdr;
    std::memcpy(&shdr, file.data() + header.e_shoff + uint64_t{index} * header.e_shentsize, sizeof shdr);
    return shdr;
  };
  Elf64_Shdr names = section(header.e_shstrndx);
  for (unsigned i = 0; i < header.e_shnum; ++i) {
    Elf64_Shdr shdr = section(i);
    if (std::strcmp(file.data() + names.sh_offset + shdr.sh_name, name) == 0) {
      return {shdr.sh_addr + symbols.main_executable().load_bias, shdr.sh_size};
    }
  }
  return {0, 0};
}

}  // namespace

TEST_CASE("a pc in a PLT stub unwinds with the PLT's CFA expression", "[unwinder]") {
  auto symbols = ProcessSymbols::load(getpid());
  Unwinder unwinder(symbols);
  const uint64_t return_address = unwinder_test_rsp_caller();
  auto [plt, plt_size] = own_section(symbols, ".plt");
  REQUIRE(plt != 0);
  REQUIRE(plt_size >= 32);
  // Lazy-binding PLT entry 1 (no IBT): jmp *GOT(%rip) [6 bytes]; push $index [5]; jmp PLT0 [5].
  // Its CFI: CFA = rsp + 8 + ((rip & 15) >= 11 ? 8 : 0), for the word push adds.
  constexpr uint64_t kStack = 0x7e0000003000;
  FakeMemory memory;
  user_regs_struct regs{};
  regs.rsp = kStack;

  SECTION("before the push") {
    memory.map(kStack, words({return_address}, 512));
    regs.rip = plt + 16 + 6;
    UnwindResult result = unwinder.unwind(memory, regs);
    INFO(describe(symbols, result));
    REQUIRE(result.frames.size() == 2);
    CHECK(result.frames[0].cfa == kStack + 8);
    CHECK(result.frames[1].pc == return_address);
    CHECK_FALSE(result.used_scan);
    CHECK(result.complete);
  }
  SECTION("after the push") {
    memory.map(kStack, words({7, return_address}, 512));
    regs.rip = plt + 16 + 11;
    UnwindResult result = unwinder.unwind(memory, regs);
    INFO(describe(symbols, result));
    REQUIRE(result.frames.size() == 2);
    CHECK(result.frames[0].cfa == kStack + 16);
    CHECK(result.frames[1].pc == return_address);
    CHECK_FALSE(result.used_scan);
    CHECK(result.complete);
  }
}

TEST_CASE("a pc in the vdso unwinds with the vdso's own CFI", "[unwinder]") {
  uint64_t base = getauxval(AT_SYSINFO_EHDR);
  if (base == 0) {
    WARN("no vdso in this process; skipped");
    return;
  }
  // The vdso image is a whole ELF file, section headers included; .text begins a function.
  Elf64_Ehdr header;
  std::memcpy(&header, reinterpret_cast<const void*>(base), sizeof header);
  uint64_t bias = base;
  const char* image = reinterpret_cast<const char*>(base);
  for (unsigned i = 0; i < header.e_phnum; ++i) {
    Elf64_Phdr phdr;
    std::memcpy(&phdr, image + header.e_phoff + uint64_t{i} * header.e_phentsize, sizeof phdr);
    if (phdr.p_type == PT_LOAD) {
      bias = base - phdr.p_vaddr;
      break;
    }
  }
  Elf64_Shdr names;
  std::memcpy(&names, image + header.e_shoff + uint64_t{header.e_shstrndx} * header.e_shentsize, sizeof names);
  uint64_t text = 0;
  for (unsigned i = 0; i < header.e_shnum; ++i) {
    Elf64_Shdr shdr;
    std::memcpy(&shdr, image + header.e_shoff + uint64_t{i} * header.e_shentsize, sizeof shdr);
    if (std::strcmp(image + names.sh_offset + shdr.sh_name, ".text") == 0) text = shdr.sh_addr + bias;
  }
  REQUIRE(text != 0);

  auto symbols = ProcessSymbols::load(getpid());
  Unwinder unwinder(symbols);
  const uint64_t return_address = unwinder_test_rsp_caller();
  std::vector<uint64_t> stack(512, 0);
  stack[0] = return_address;
  polus::ProcMemory memory(getpid());
  user_regs_struct regs{};
  regs.rip = text;  // a function's first instruction: CFA = rsp + 8
  regs.rsp = reinterpret_cast<uint64_t>(stack.data());
  UnwindResult result = unwinder.unwind(memory, regs);
  INFO(describe(symbols, result));
  REQUIRE(result.frames.size() == 2);
  CHECK(result.frames[0].cfa == regs.rsp + 8);
  CHECK(result.frames[1].pc == return_address);
  CHECK_FALSE(result.used_scan);
  CHECK(result.complete);
}

TEST_CASE("a pc without CFI falls back to a scan for the next return address", "[unwinder]") {
  JitPage jit;
  auto symbols = ProcessSymbols::load(getpid());
  Unwinder unwinder(symbols);

  const uint64_t return_address = unwinder_test_rsp_caller();
  const uint64_t decoy = reinterpret_cast<uint64_t>(&polus::code_ends_with_call) + 16;  // code, no call before
  REQUIRE((decoy > return_address + 64 || decoy + 64 < return_address));
  REQUIRE(symbols.object_containing(RemoteAddr(return_address)) != nullptr);

  FakeMemory memory;
  memory.map(return_address - 8, own_bytes(return_address - 8, 8));  // the call before it
  memory.map(decoy - 8, std::vector<uint8_t>(8, 0x00));  // add %al,(%rax) x4: not a call
  constexpr uint64_t kStack = 0x7e0000001000;
  memory.map(kStack, words({0x1234,                                          // junk
                            reinterpret_cast<uint64_t>(&g_data_word),         // data, not code
                            jit.at(0x40),                                     // code of no object
                            decoy,                                            // not after a call
                            return_address},                                  // the caller
                           512));                                             // then zeros

  user_regs_struct regs{};
  regs.rip = jit.at(0x10);
  regs.rsp = kStack;
  UnwindResult result = unwinder.unwind(memory, regs);
  INFO(describe(symbols, result));
  REQUIRE(result.frames.size() == 2);
  CHECK(result.frames[0].pc == jit.at(0x10));
  CHECK(result.frames[0].cfa == kStack + 5 * 8);
  CHECK_FALSE(result.frames[0].from_scan);
  CHECK(result.frames[1].pc == return_address);
  CHECK(result.frames[1].from_scan);
  CHECK(result.frames[1].cfa > kStack + 5 * 8);
  CHECK(result.used_scan);
  std::ostringstream expected;
  expected << "no CFI for pc 0x" << std::hex << jit.at(0x10) << " in an anonymous executable mapping; scanned";
  CHECK(result.note == expected.str());
  CHECK(result.complete);  // the caller's return address reads as 0: the end

  SECTION("no return address anywhere above sp") {
    FakeMemory empty;
    empty.map(kStack, words({1, 2, 3}));
    UnwindResult none = unwinder.unwind(empty, regs);
    INFO(describe(symbols, none));
    REQUIRE(none.frames.size() == 1);
    CHECK_FALSE(none.complete);
    CHECK(none.used_scan);
    CHECK(none.note.find("the scan found no return address") != std::string::npos);
  }
}

TEST_CASE("a scanned return address into an rbp-based frame is kept, and the scan goes on", "[unwinder]") {
  JitPage jit;
  auto symbols = ProcessSymbols::load(getpid());
  Unwinder unwinder(symbols);
  const uint64_t rsp_based = unwinder_test_rsp_caller();
  const uint64_t rbp_based = unwinder_test_rbp_caller();
  REQUIRE((rbp_based > rsp_based + 8 || rbp_based + 8 < rsp_based));

  FakeMemory memory;
  memory.map(rsp_based - 8, own_bytes(rsp_based - 8, 8));
  memory.map(rbp_based - 8, own_bytes(rbp_based - 8, 8));
  constexpr uint64_t kStack = 0x7e0000005000;
  memory.map(kStack, words({rbp_based, rsp_based}, 512));
  user_regs_struct regs{};
  regs.rip = jit.at(0x20);
  regs.rsp = kStack;
  UnwindResult result = unwinder.unwind(memory, regs);
  INFO(describe(symbols, result));
  // After a scan only sp and pc are known, so the rbp-based frame cannot be checked with its
  // CFI: it is reported (a false positive costs a retry, a missed frame could cost safety)
  // and the scan continues above it.
  REQUIRE(result.frames.size() == 3);
  CHECK(result.frames[1].pc == rbp_based);
  CHECK(result.frames[1].from_scan);
  CHECK(result.frames[2].pc == rsp_based);
  CHECK(result.frames[2].from_scan);
  CHECK(result.used_scan);
  CHECK(result.note.find("is based on register 6, whose value is unknown; scanned") != std::string::npos);
  CHECK(result.complete);
}

TEST_CASE("a sigreturn trampoline without CFI is decoded from its ucontext_t", "[unwinder]") {
  JitPage jit;
  auto symbols = ProcessSymbols::load(getpid());
  Unwinder unwinder(symbols);
  const uint64_t interrupted = unwinder_test_rsp_caller();  // any pc with CFI will do

  FakeMemory memory;
  memory.map(jit.at(0x100), {0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05});
  constexpr uint64_t kContext = 0x7e0000010000, kInterruptedStack = 0x7e0000020000;
  ucontext_t context{};
  context.uc_mcontext.gregs[REG_RIP] = static_cast<greg_t>(interrupted);
  context.uc_mcontext.gregs[REG_RSP] = static_cast<greg_t>(kInterruptedStack);
  std::vector<uint8_t> bytes(sizeof context);
  std::memcpy(bytes.data(), &context, sizeof context);
  memory.map(kContext, bytes);
  memory.map(kInterruptedStack, words({}, 512));

  user_regs_struct regs{};
  regs.rip = jit.at(0x100);  // about to run rt_sigreturn, sp at the ucontext_t
  regs.rsp = kContext;
  UnwindResult result = unwinder.unwind(memory, regs);
  INFO(describe(symbols, result));
  REQUIRE(result.frames.size() == 2);
  CHECK(result.frames[0].pc == jit.at(0x100));
  CHECK(result.frames[0].cfa == kInterruptedStack);
  CHECK(result.frames[1].pc == interrupted);  // exact pc, not a return address
  CHECK_FALSE(result.frames[1].from_scan);
  CHECK_FALSE(result.used_scan);
  CHECK(result.complete);
}

TEST_CASE("code_ends_with_call recognises call encodings", "[unwinder]") {
  auto ends_with_call = [](std::vector<uint8_t> tail) {
    std::vector<uint8_t> code(7 - std::min<size_t>(7, tail.size()), 0x90);  // nop padding
    code.insert(code.end(), tail.begin(), tail.end());
    return polus::code_ends_with_call(code.data(), code.size());
  };
  CHECK(ends_with_call({0xe8, 0x10, 0x20, 0x30, 0x40}));              // call rel32
  CHECK(ends_with_call({0xff, 0xd0}));                                // call *%rax
  CHECK(ends_with_call({0x41, 0xff, 0xd3}));                          // call *%r11
  CHECK(ends_with_call({0xff, 0x10}));                                // call *(%rax)
  CHECK(ends_with_call({0xff, 0x50, 0x08}));                          // call *0x8(%rax)
  CHECK(ends_with_call({0xff, 0x14, 0x24}));                          // call *(%rsp)
  CHECK(ends_with_call({0xff, 0x54, 0x24, 0x08}));                    // call *0x8(%rsp)
  CHECK(ends_with_call({0xff, 0x15, 0x00, 0x10, 0x00, 0x00}));        // call *0x1000(%rip)
  CHECK(ends_with_call({0xff, 0x90, 0x00, 0x01, 0x00, 0x00}));        // call *0x100(%rax)
  CHECK(ends_with_call({0xff, 0x94, 0xc8, 0x00, 0x01, 0x00, 0x00}));  // call *0x100(%rax,%rcx,8)
  CHECK(ends_with_call({0xff, 0x14, 0xc5, 0x00, 0x01, 0x00, 0x00}));  // call *0x100(,%rax,8)
  CHECK_FALSE(ends_with_call({0xff, 0xe0}));                          // jmp *%rax
  CHECK_FALSE(ends_with_call({0xff, 0x25, 0x00, 0x10, 0x00, 0x00}));  // jmp *0x1000(%rip)
  CHECK_FALSE(ends_with_call({0xc3}));                                // ret
  CHECK_FALSE(ends_with_call({0x0f, 0x1f, 0x44, 0x00, 0x00}));        // nopl 0x0(%rax,%rax,1)
  CHECK_FALSE(ends_with_call({}));
  uint8_t short_code[] = {0xff, 0xd0};
  CHECK(polus::code_ends_with_call(short_code, 2));
  CHECK_FALSE(polus::code_ends_with_call(short_code, 1));
}
