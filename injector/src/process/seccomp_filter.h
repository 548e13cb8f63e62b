// process/seccomp_filter.h — what a thread's seccomp filters would do to a system call.
//
// A target confined by seccomp (systemd's SystemCallFilter=, container runtimes, Chrome-like
// sandboxes) is killed, or sent SIGSYS, for a system call its filter does not allow — and
// loading a patch makes system calls the target itself may never make (openat of a library,
// mmap with PROT_EXEC, clone for the rehearsal, the agent's rt_sigaction). So before Polus
// makes any of them in the target it reads the filters (PTRACE_SECCOMP_GET_FILTER: classic
// BPF, needs CAP_SYS_ADMIN and a thread in a ptrace-stop) and runs them here on the calls it
// will make, the way the kernel would (kernel/seccomp.c: every filter runs, the action of
// highest precedence wins).
#pragma once

#include <linux/filter.h>
#include <sys/types.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace polus {

/// One system call as a filter sees it (struct seccomp_data without the instruction pointer,
/// which no filter we know of tests).
struct SyscallProbe {
  const char* name;  // for messages
  int number;
  std::array<uint64_t, 6> args{};
};

/// The filters installed on one thread, most recent first (as the kernel numbers them).
using SeccompFilters = std::vector<std::vector<sock_filter>>;

/// Reads every filter of ptrace-stopped thread `tid`. Returns nullopt with `why` set when the
/// kernel will not hand them out (EACCES: not CAP_SYS_ADMIN, or a parent's seccomp/ns rules).
std::optional<SeccompFilters> read_seccomp_filters(pid_t tid, std::string& why);

/// The action (SECCOMP_RET_* with its data) `filters` return for `probe` on x86-64:
/// the one of highest precedence among all filters. A malformed program counts as KILL.
uint32_t seccomp_action(const SeccompFilters& filters, const SyscallProbe& probe);

/// "kills the process", "returns EPERM", ...: what `action` does, for messages.
std::string describe_seccomp_action(uint32_t action);

/// Whether `action` lets the call run as made (ALLOW, LOG).
bool seccomp_allows(uint32_t action);

}  // namespace polus
