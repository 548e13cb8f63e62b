#include "update/seccomp_check.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "polus/error.h"
#include "process/proc_files.h"
#include "process/seccomp_filter.h"

namespace polus {

namespace {

constexpr uint64_t kSomeAddress = 0x7f0000000000;  // a pointer argument's usual range

/// The calls every apply makes: our stubs (mmap of the arena and the record, munmap,
/// rt_sigreturn back to the thread's own context), the patch's sealed memfd
/// (update/patch_memfd: memfd_create, a descriptor duplicated upwards when its number names a
/// loaded library, close) and dlopen of a library (glibc 2.36's ld.so: openat, fstat,
/// pread/read of the headers, mmap of each segment, mprotect of RELRO and of the gap, close;
/// futex on the loader lock).
std::vector<SyscallProbe> load_calls() {
  return {
      {"memfd_create (the patch's sealed copy)", SYS_memfd_create, {kSomeAddress, MFD_ALLOW_SEALING | MFD_CLOEXEC | 0x0010 /* MFD_EXEC */}},
      {"fcntl (F_DUPFD_CLOEXEC of the patch's memfd)", SYS_fcntl, {3, F_DUPFD_CLOEXEC, 4}},
      {"mmap (Polus's scratch arena)", SYS_mmap, {kSomeAddress, 65536, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, ~0ull, 0}},
      {"mmap (anonymous memory)", SYS_mmap, {0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, ~0ull, 0}},
      {"munmap", SYS_munmap, {kSomeAddress, 4096}},
      {"rt_sigreturn", SYS_rt_sigreturn, {}},
      {"openat (the library file)", SYS_openat, {static_cast<uint64_t>(AT_FDCWD), kSomeAddress, O_RDONLY | O_CLOEXEC, 0}},
      {"read", SYS_read, {3, kSomeAddress, 832}},
      {"pread64", SYS_pread64, {3, kSomeAddress, 784, 64}},
      {"newfstatat", SYS_newfstatat, {3, kSomeAddress, kSomeAddress, AT_EMPTY_PATH}},
      {"fstat", SYS_fstat, {3, kSomeAddress}},
      {"mmap (a library's code)", SYS_mmap, {kSomeAddress, 8192, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_FIXED | MAP_DENYWRITE, 3, 4096}},
      {"mmap (a library's image)", SYS_mmap, {0, 16384, PROT_READ, MAP_PRIVATE | MAP_DENYWRITE, 3, 0}},
      {"mmap (a library's data)", SYS_mmap, {kSomeAddress, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED | MAP_DENYWRITE, 3, 8192}},
      {"mprotect (read-only after relocation)", SYS_mprotect, {kSomeAddress, 4096, PROT_READ}},
      {"mprotect (a library's gap)", SYS_mprotect, {kSomeAddress, 4096, PROT_NONE}},
      {"close", SYS_close, {3}},
      {"futex", SYS_futex, {kSomeAddress, 0x81 /* FUTEX_WAKE_PRIVATE */, 1}},
  };
}

/// The copy for the rehearsal: clone(flags 0) by our stub, then the target reaps it.
std::vector<SyscallProbe> rehearsal_calls() {
  return {
      {"clone (the rehearsal's copy of the process)", SYS_clone, {0, 0, 0, 0, 0}},
      {"wait4 (reaping the rehearsal's copy)", SYS_wait4, {1, 0, __WALL | WNOHANG, 0}},
  };
}

/// libpolus-agent.so: its write tracking, on any thread (fault handlers) and in its entry
/// points: handlers installed, pages protected, /proc/self/task read, stores emulated.
std::vector<SyscallProbe> agent_calls() {
  return {
      {"rt_sigaction (the agent's SIGSEGV handler)", SYS_rt_sigaction, {SIGSEGV, kSomeAddress, kSomeAddress, 8}},
      {"rt_sigaction (the agent's SIGTRAP handler)", SYS_rt_sigaction, {SIGTRAP, kSomeAddress, kSomeAddress, 8}},
      // the fence around sync functions: SIGBUS, SIGFPE and SIGILL handlers, the mask of an
      // entry point's caller (rt_sigprocmask SIG_BLOCK with no new set), the real-time clock
      {"rt_sigaction (the agent's SIGBUS handler)", SYS_rt_sigaction, {SIGBUS, kSomeAddress, kSomeAddress, 8}},
      {"rt_sigaction (the agent's SIGFPE handler)", SYS_rt_sigaction, {SIGFPE, kSomeAddress, kSomeAddress, 8}},
      {"rt_sigaction (the agent's SIGILL handler)", SYS_rt_sigaction, {SIGILL, kSomeAddress, kSomeAddress, 8}},
      {"rt_sigprocmask (reading the mask)", SYS_rt_sigprocmask, {SIG_BLOCK, 0, kSomeAddress, 8}},
      {"clock_gettime (the time of a sync function's fault)", SYS_clock_gettime, {0 /* CLOCK_REALTIME */, kSomeAddress}},
      {"rt_sigprocmask", SYS_rt_sigprocmask, {SIG_SETMASK, kSomeAddress, kSomeAddress, 8}},
      {"mprotect (write tracking)", SYS_mprotect, {kSomeAddress, 4096, PROT_READ}},
      {"mprotect (write tracking ends)", SYS_mprotect, {kSomeAddress, 4096, PROT_READ | PROT_WRITE}},
      {"openat (/proc/self, by the agent)", SYS_openat, {static_cast<uint64_t>(AT_FDCWD), kSomeAddress, O_RDONLY | O_CLOEXEC, 0}},
      {"openat (/proc/self/mem, by the agent)", SYS_openat, {static_cast<uint64_t>(AT_FDCWD), kSomeAddress, O_RDWR | O_CLOEXEC, 0}},
      {"getdents64", SYS_getdents64, {3, kSomeAddress, 2048}},
      {"pwrite64 (an emulated store)", SYS_pwrite64, {3, kSomeAddress, 8, kSomeAddress}},
      {"process_vm_readv", SYS_process_vm_readv, {1, kSomeAddress, 1, kSomeAddress, 1, 0}},
      {"nanosleep", SYS_nanosleep, {kSomeAddress, 0}},
      {"gettid", SYS_gettid, {}},
      {"getpid", SYS_getpid, {}},
      {"tgkill", SYS_tgkill, {1, 1, SIGSEGV}},
      {"clock_gettime", SYS_clock_gettime, {1, kSomeAddress}},
      {"mremap", SYS_mremap, {kSomeAddress, 4096, 8192, 1 /* MREMAP_MAYMOVE */}},
      {"fcntl", SYS_fcntl, {3, F_GETFL}},
      // the writable views of tracked pages (agent/src/page_views.c): a memfd per run of pages,
      // mapped twice, moved over the pages with mremap; and back at the end
      {"memfd_create (a tracked page's writable view)", SYS_memfd_create, {kSomeAddress, 1 /* MFD_CLOEXEC */}},
      {"ftruncate (the view's memfd)", SYS_ftruncate, {3, 4096}},
      {"mmap (the view, shared)", SYS_mmap, {0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, 3, 0}},
      {"mmap (the view at the page, read-only)", SYS_mmap, {0, 4096, PROT_READ, MAP_SHARED, 3, 0}},
      {"mmap (the private copy at the end)", SYS_mmap, {0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, static_cast<uint64_t>(-1), 0}},
      {"madvise (MADV_DONTFORK on the view)", SYS_madvise, {kSomeAddress, 4096, MADV_DONTFORK}},
      {"mremap (the view over the page)", SYS_mremap, {kSomeAddress, 4096, 4096, 3 /* MREMAP_MAYMOVE | MREMAP_FIXED */, kSomeAddress}},
      {"munmap (the view)", SYS_munmap, {kSomeAddress, 4096}},
      {"close (the view's memfd)", SYS_close, {3}},
  };
}

std::vector<SyscallProbe> planned_probes(const PlannedCalls& calls) {
  std::vector<SyscallProbe> probes = load_calls();
  if (calls.rehearsal) {
    for (const SyscallProbe& p : rehearsal_calls()) probes.push_back(p);
  }
  if (calls.data_update) {  // (loading the agent runs no code of its own: no constructor)
    for (const SyscallProbe& p : agent_calls()) probes.push_back(p);
  }
  return probes;
}

bool same_filters(const SeccompFilters& a, const SeccompFilters& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].size() != b[i].size() || std::memcmp(a[i].data(), b[i].data(), a[i].size() * sizeof(sock_filter)) != 0) {
      return false;
    }
  }
  return true;
}

}  // namespace

void check_seccomp_allows(TargetContext& target, const PlannedCalls& calls) {
  const pid_t pid = target.pid();
  const std::vector<SyscallProbe> probes = planned_probes(calls);
  std::vector<SeccompFilters> checked;  // identical filter sets are checked once (TSYNC)
  for (pid_t tid : target.session().thread_ids()) {
    std::optional<TaskStatus> status = read_task_status(pid, tid);
    if (!status || status->seccomp == 0) continue;
    if (status->seccomp == 1) {
      throw Error(ErrorCode::kUnsafeToPatch,
                  "thread " + std::to_string(tid) + " of process " + std::to_string(pid) +
                      " runs in seccomp strict mode (only read, write, _exit and sigreturn): loading a patch there "
                      "would kill the process. Nothing was changed; this process cannot be patched");
    }
    std::string why;
    std::optional<SeccompFilters> filters;
    {
      if (!target.session().stop_thread(tid, step_deadline())) continue;  // exited
      filters = read_seccomp_filters(tid, why);
      target.session().resume_thread(tid);
    }
    if (!filters) {
      throw Error(ErrorCode::kUnsafeToPatch,
                  "process " + std::to_string(pid) + " runs under a seccomp filter that Polus could not read (" + why +
                      "), so it cannot tell whether loading a patch would get the process killed. Nothing was changed; "
                      "run polusctl as root");
    }
    if (std::any_of(checked.begin(), checked.end(), [&](const SeccompFilters& f) { return same_filters(f, *filters); })) {
      continue;
    }
    for (const SyscallProbe& probe : probes) {
      const uint32_t action = seccomp_action(*filters, probe);
      if (seccomp_allows(action)) continue;
      throw Error(ErrorCode::kUnsafeToPatch,
                  "process " + std::to_string(pid) + " runs under a seccomp filter that " + describe_seccomp_action(action) +
                      " for " + probe.name + " (on thread " + std::to_string(tid) + "), a system call that applying this "
                      "patch makes in the process. Nothing was changed; the process cannot be patched under that filter"
                      + (calls.rehearsal && probe.number == SYS_clone ? " with a rehearsal (--no-rehearsal skips the copy)" : ""));
    }
    checked.push_back(std::move(*filters));
  }
  if (!checked.empty()) {
    spdlog::debug("process {}: {} seccomp filter set(s) allow the {} system calls of this apply", pid, checked.size(),
                  probes.size());
  }
}

}  // namespace polus
