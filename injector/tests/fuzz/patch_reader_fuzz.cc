// patch_reader_fuzz.cc — libFuzzer target for the patch reader (update/patch_file.cc).
//
// Every input must come out of read_patch_bytes either as a PatchDescription or as
// polus::Error with code kPatchMalformed. Any other exception, a crash, a hang or a
// sanitizer report is a bug. Built with clang (-fsanitize=fuzzer,address,undefined) when
// POLUS_FUZZ=ON; bench/fuzz.sh runs it on injector/tests/fuzz/corpus/.
//
// With POLUS_FUZZ_LOAD=DIR set (bench/fuzz.sh sets it when it replays the corpus the run
// grew), every accepted input is also handed to the real dynamic loader: dlopen in a forked
// child, from a memfd. A child the loader kills (an assertion, a fault inside ld.so) means
// the reader accepted something the loader cannot take; the input is saved in DIR as
// loader-N.so and reported on stderr. Constructors run too, so a child killed in the
// patch's own code (damaged machine code, which no reader can judge) is reported apart, as
// patch-code-N.so.
#include <dlfcn.h>
#include <fcntl.h>
#include <ucontext.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "polus/error.h"
#include "update/patch_file.h"

namespace {

int last_status = 0;

// How the loading child ended.
enum LoadEnd { kLoaded = 0, kLoaderFault = 100, kPatchCodeFault = 101, kLoaderFatal = 127, kHung = 200, kOther = 201 };

/// In the child: a fault is the loader's (or libc's) unless the patch's own code is involved:
/// the faulting pc, or a return address near the top of the stack, inside the patch's
/// mapping (the memfd) - damaged code jumps anywhere. /proc/self/maps is read with plain
/// syscalls: the loader lock may be held, so nothing that takes it (dladdr) may run here.
struct Range {
  uint64_t from, to;
};
Range patch_ranges[16];
int patch_range_count = 0;

void find_patch_mappings() {
  static char maps[1 << 16];
  int fd = open("/proc/self/maps", O_RDONLY);
  ssize_t n = 0, got;
  while (fd >= 0 && n < static_cast<ssize_t>(sizeof maps) - 1 && (got = read(fd, maps + n, sizeof maps - 1 - n)) > 0) n += got;
  if (fd >= 0) close(fd);
  maps[n > 0 ? n : 0] = 0;
  patch_range_count = 0;
  for (char* line = maps; *line && patch_range_count < 16;) {
    char* end = std::strchr(line, '\n');
    if (end) *end = 0;
    const char* dash = std::strchr(line, '-');
    if (dash && std::strstr(line, "memfd:polus-fuzz-load")) {
      patch_ranges[patch_range_count++] = {std::strtoull(line, nullptr, 16), std::strtoull(dash + 1, nullptr, 16)};
    }
    if (!end) break;
    line = end + 1;
  }
}

bool in_patch(uint64_t address) {
  for (int i = 0; i < patch_range_count; ++i) {
    if (address >= patch_ranges[i].from && address < patch_ranges[i].to) return true;
  }
  return false;
}

void classify_fault(int, siginfo_t*, void* context) {
  const auto& regs = static_cast<ucontext_t*>(context)->uc_mcontext.gregs;
  find_patch_mappings();
  bool patch_code = in_patch(static_cast<uint64_t>(regs[REG_RIP]));
  // The stack through process_vm_readv: damaged code leaves the stack pointer anywhere, and
  // a wild one is itself the mark of it.
  uint64_t stack[64];
  iovec local{stack, sizeof stack}, remote{reinterpret_cast<void*>(regs[REG_RSP]), sizeof stack};
  if (process_vm_readv(getpid(), &local, 1, &remote, 1, 0) != static_cast<ssize_t>(sizeof stack)) patch_code = true;
  for (int i = 0; i < 64 && !patch_code; ++i) patch_code = in_patch(stack[i]);
  // A pc outside every mapped file (on a stack, in the heap, nowhere) is a wild jump: the
  // loader never jumps there, damaged code does.
  if (!patch_code) {
    static char maps[1 << 16];
    int fd = open("/proc/self/maps", O_RDONLY);
    ssize_t n = 0, got;
    while (fd >= 0 && n < static_cast<ssize_t>(sizeof maps) - 1 && (got = read(fd, maps + n, sizeof maps - 1 - n)) > 0) n += got;
    if (fd >= 0) close(fd);
    maps[n > 0 ? n : 0] = 0;
    uint64_t pc = static_cast<uint64_t>(regs[REG_RIP]);
    bool in_file = false;
    for (char* line = maps; *line && !in_file;) {
      char* end = std::strchr(line, '\n');
      if (end) *end = 0;
      const char* dash = std::strchr(line, '-');
      if (dash && pc >= std::strtoull(line, nullptr, 16) && pc < std::strtoull(dash + 1, nullptr, 16)) {
        in_file = std::strstr(line, " /") != nullptr && std::strstr(line, "[") == nullptr;
      }
      if (!end) break;
      line = end + 1;
    }
    patch_code = !in_file;
  }
  _exit(patch_code ? kPatchCodeFault : kLoaderFault);
}

/// dlopen of `data` (from a memfd) in a child; how it ended.
LoadEnd load_in_child(const uint8_t* data, size_t size) {
  int fd = memfd_create("polus-fuzz-load", MFD_CLOEXEC);
  if (fd < 0 || write(fd, data, size) != static_cast<ssize_t>(size)) return kLoaded;
  pid_t child = fork();
  if (child == 0) {
    // libFuzzer's and the sanitizers' handlers would report the child's death as the
    // fuzzer's own crash: take them out.
    // On a stack of its own: damaged code may leave the stack pointer anywhere, and a signal
    // that cannot be delivered kills the child as if the loader had.
    static char alternate[1 << 16];
    stack_t stack{};
    stack.ss_sp = alternate;
    stack.ss_size = sizeof alternate;
    sigaltstack(&stack, nullptr);
    struct sigaction fault {};
    fault.sa_sigaction = classify_fault;
    fault.sa_flags = SA_SIGINFO | SA_ONSTACK;
    for (int sig : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP, SIGABRT, SIGSYS}) sigaction(sig, &fault, nullptr);
    signal(SIGALRM, SIG_DFL);
    alarm(5);
    std::string path = "/proc/self/fd/" + std::to_string(fd);
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle) dlclose(handle);
    _exit(kLoaded);
  }
  int status = 0;
  waitpid(child, &status, 0);
  close(fd);
  last_status = status;
  if (WIFEXITED(status)) {
    int code = WEXITSTATUS(status);
    return code == kLoaded || code == kLoaderFault || code == kPatchCodeFault || code == kLoaderFatal ? LoadEnd(code) : kOther;
  }
  return WTERMSIG(status) == SIGALRM ? kHung : kOther;
}

void check_with_loader(const uint8_t* data, size_t size, const char* dir) {
  static int found = 0, in_patch_code = 0;
  LoadEnd end = load_in_child(data, size);
  if (end == kLoaded) return;
  const char* what = end == kLoaderFault    ? "the loader faulted"
                     : end == kLoaderFatal  ? "the loader stopped the process (an assertion or fatal error)"
                     : end == kHung         ? "loading hung for 5 s"
                     : end == kPatchCodeFault ? "the patch's own code faulted (damaged machine code: no reader can tell)"
                                              : "the child ended oddly";
  if (end == kOther) std::fprintf(stderr, "polus-fuzz: (child status %d)\n", last_status);
  bool code = end == kPatchCodeFault;
  if (code && ++in_patch_code > 20) {  // enough examples of what no reader can catch: count only
    std::fprintf(stderr, "polus-fuzz: %s on an input the reader accepted\n", what);
    return;
  }
  std::string path = std::string(dir) + (code ? "/patch-code-" : "/loader-") + std::to_string(found++) + ".so";
  if (FILE* out = std::fopen(path.c_str(), "wb")) {
    std::fwrite(data, 1, size, out);
    std::fclose(out);
  }
  std::fprintf(stderr, "polus-fuzz: %s on an input the reader accepted; saved as %s\n", what, path.c_str());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    polus::PatchDescription patch = polus::read_patch_bytes(std::vector<uint8_t>(data, data + size), "fuzz-input.so");
    if (!patch.bytes || patch.bytes->size() != size || patch.content_sha256.size() != 64) {
      std::fprintf(stderr, "accepted input described wrongly (bytes or SHA-256 missing)\n");
      std::abort();
    }
    if (const char* dir = std::getenv("POLUS_FUZZ_LOAD")) check_with_loader(data, size, dir);
  } catch (const polus::Error& e) {
    if (e.code() != polus::ErrorCode::kPatchMalformed) {
      std::fprintf(stderr, "read_patch_bytes threw %s, not patch-malformed: %s\n", polus::error_code_name(e.code()), e.what());
      std::abort();
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "read_patch_bytes threw a non-Polus exception: %s\n", e.what());
    std::abort();
  } catch (...) {
    std::fprintf(stderr, "read_patch_bytes threw something that is not an exception\n");
    std::abort();
  }
  return 0;
}
