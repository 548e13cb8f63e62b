#include "process/seccomp_filter.h"

#include <errno.h>
#include <linux/audit.h>
#include <linux/seccomp.h>
#include <sys/ptrace.h>

#include <cstring>

namespace polus {

namespace {

/// Precedence of an action, higher wins (seccomp(2): "the action value with the highest
/// precedence"; KILL_PROCESS first, ALLOW last).
int precedence(uint32_t action) {
  switch (action & SECCOMP_RET_ACTION_FULL) {
    case SECCOMP_RET_KILL_PROCESS: return 8;
    case SECCOMP_RET_KILL_THREAD: return 7;
    case SECCOMP_RET_TRAP: return 6;
    case SECCOMP_RET_ERRNO: return 5;
    case SECCOMP_RET_USER_NOTIF: return 4;
    case SECCOMP_RET_TRACE: return 3;
    case SECCOMP_RET_LOG: return 2;
    case SECCOMP_RET_ALLOW: return 1;
    default: return 8;  // unknown actions are treated as KILL_PROCESS by the kernel
  }
}

/// The 64-byte struct seccomp_data a filter loads from, as 32-bit words.
struct Data {
  uint32_t words[16]{};
  explicit Data(const SyscallProbe& probe) {
    words[0] = static_cast<uint32_t>(probe.number);
    words[1] = AUDIT_ARCH_X86_64;
    // words[2..3]: instruction_pointer, left 0
    for (int i = 0; i < 6; ++i) {
      words[4 + 2 * i] = static_cast<uint32_t>(probe.args[i]);
      words[5 + 2 * i] = static_cast<uint32_t>(probe.args[i] >> 32);
    }
  }
};

/// Runs one classic BPF program the way seccomp's checker allows them (the subset
/// net/core/filter.c: seccomp_check_filter accepts). Returns KILL_PROCESS for anything malformed.
uint32_t run_program(const std::vector<sock_filter>& program, const Data& data) {
  uint32_t a = 0, x = 0, mem[BPF_MEMWORDS]{};
  const size_t n = program.size();
  for (size_t pc = 0, steps = 0; pc < n && steps < 4096; ++pc, ++steps) {
    const sock_filter& f = program[pc];
    const uint32_t k = f.k;
    switch (f.code) {
      case BPF_LD | BPF_W | BPF_ABS:
        if (k % 4 != 0 || k >= sizeof data.words) return SECCOMP_RET_KILL_PROCESS;
        a = data.words[k / 4];
        break;
      case BPF_LD | BPF_W | BPF_LEN: a = sizeof data.words; break;
      case BPF_LDX | BPF_W | BPF_LEN: x = sizeof data.words; break;
      case BPF_LD | BPF_IMM: a = k; break;
      case BPF_LDX | BPF_IMM: x = k; break;
      case BPF_LD | BPF_MEM:
        if (k >= BPF_MEMWORDS) return SECCOMP_RET_KILL_PROCESS;
        a = mem[k];
        break;
      case BPF_LDX | BPF_MEM:
        if (k >= BPF_MEMWORDS) return SECCOMP_RET_KILL_PROCESS;
        x = mem[k];
        break;
      case BPF_ST:
        if (k >= BPF_MEMWORDS) return SECCOMP_RET_KILL_PROCESS;
        mem[k] = a;
        break;
      case BPF_STX:
        if (k >= BPF_MEMWORDS) return SECCOMP_RET_KILL_PROCESS;
        mem[k] = x;
        break;
      case BPF_ALU | BPF_ADD | BPF_K: a += k; break;
      case BPF_ALU | BPF_ADD | BPF_X: a += x; break;
      case BPF_ALU | BPF_SUB | BPF_K: a -= k; break;
      case BPF_ALU | BPF_SUB | BPF_X: a -= x; break;
      case BPF_ALU | BPF_MUL | BPF_K: a *= k; break;
      case BPF_ALU | BPF_MUL | BPF_X: a *= x; break;
      case BPF_ALU | BPF_DIV | BPF_K:
        if (k == 0) return SECCOMP_RET_KILL_PROCESS;
        a /= k;
        break;
      case BPF_ALU | BPF_DIV | BPF_X:
        if (x == 0) return SECCOMP_RET_KILL_PROCESS;  // the kernel's program returns 0: KILL
        a /= x;
        break;
      case BPF_ALU | BPF_MOD | BPF_K:
        if (k == 0) return SECCOMP_RET_KILL_PROCESS;
        a %= k;
        break;
      case BPF_ALU | BPF_MOD | BPF_X:
        if (x == 0) return SECCOMP_RET_KILL_PROCESS;
        a %= x;
        break;
      case BPF_ALU | BPF_AND | BPF_K: a &= k; break;
      case BPF_ALU | BPF_AND | BPF_X: a &= x; break;
      case BPF_ALU | BPF_OR | BPF_K: a |= k; break;
      case BPF_ALU | BPF_OR | BPF_X: a |= x; break;
      case BPF_ALU | BPF_XOR | BPF_K: a ^= k; break;
      case BPF_ALU | BPF_XOR | BPF_X: a ^= x; break;
      case BPF_ALU | BPF_LSH | BPF_K: a = k < 32 ? a << k : 0; break;
      case BPF_ALU | BPF_LSH | BPF_X: a = x < 32 ? a << x : 0; break;
      case BPF_ALU | BPF_RSH | BPF_K: a = k < 32 ? a >> k : 0; break;
      case BPF_ALU | BPF_RSH | BPF_X: a = x < 32 ? a >> x : 0; break;
      case BPF_ALU | BPF_NEG: a = 0u - a; break;
      case BPF_JMP | BPF_JA: pc += k; break;
      case BPF_JMP | BPF_JEQ | BPF_K: pc += (a == k) ? f.jt : f.jf; break;
      case BPF_JMP | BPF_JEQ | BPF_X: pc += (a == x) ? f.jt : f.jf; break;
      case BPF_JMP | BPF_JGT | BPF_K: pc += (a > k) ? f.jt : f.jf; break;
      case BPF_JMP | BPF_JGT | BPF_X: pc += (a > x) ? f.jt : f.jf; break;
      case BPF_JMP | BPF_JGE | BPF_K: pc += (a >= k) ? f.jt : f.jf; break;
      case BPF_JMP | BPF_JGE | BPF_X: pc += (a >= x) ? f.jt : f.jf; break;
      case BPF_JMP | BPF_JSET | BPF_K: pc += (a & k) ? f.jt : f.jf; break;
      case BPF_JMP | BPF_JSET | BPF_X: pc += (a & x) ? f.jt : f.jf; break;
      case BPF_RET | BPF_K: return k;
      case BPF_RET | BPF_A: return a;
      case BPF_MISC | BPF_TAX: x = a; break;
      case BPF_MISC | BPF_TXA: a = x; break;
      default: return SECCOMP_RET_KILL_PROCESS;  // an instruction seccomp does not accept
    }
  }
  return SECCOMP_RET_KILL_PROCESS;  // ran off the end (the kernel's checker forbids it)
}

}  // namespace

std::optional<SeccompFilters> read_seccomp_filters(pid_t tid, std::string& why) {
  SeccompFilters filters;
  for (unsigned long index = 0;; ++index) {
    long count = ::ptrace(PTRACE_SECCOMP_GET_FILTER, tid, reinterpret_cast<void*>(index), nullptr);
    if (count < 0) {
      if (errno == ENOENT) return filters;  // no filter at that depth: all read
      why = std::string("PTRACE_SECCOMP_GET_FILTER: ") + std::strerror(errno);
      if (errno == EACCES) why += " (it needs CAP_SYS_ADMIN)";
      return std::nullopt;
    }
    std::vector<sock_filter> program(static_cast<size_t>(count));
    if (::ptrace(PTRACE_SECCOMP_GET_FILTER, tid, reinterpret_cast<void*>(index), program.data()) != count) {
      why = std::string("PTRACE_SECCOMP_GET_FILTER: ") + std::strerror(errno);
      return std::nullopt;
    }
    filters.push_back(std::move(program));
  }
}

uint32_t seccomp_action(const SeccompFilters& filters, const SyscallProbe& probe) {
  const Data data(probe);
  uint32_t verdict = SECCOMP_RET_ALLOW;
  for (const std::vector<sock_filter>& program : filters) {
    const uint32_t action = run_program(program, data);
    if (precedence(action) > precedence(verdict)) verdict = action;
  }
  return verdict;
}

std::string describe_seccomp_action(uint32_t action) {
  switch (action & SECCOMP_RET_ACTION_FULL) {
    case SECCOMP_RET_KILL_PROCESS: return "kills the process";
    case SECCOMP_RET_KILL_THREAD: return "kills the calling thread";
    case SECCOMP_RET_TRAP: return "sends SIGSYS";
    case SECCOMP_RET_ERRNO: return "fails it with errno " + std::to_string(action & SECCOMP_RET_DATA);
    case SECCOMP_RET_USER_NOTIF: return "hands it to a user-space supervisor";
    case SECCOMP_RET_TRACE: return "hands it to a seccomp tracer";
    case SECCOMP_RET_LOG: return "logs and allows it";
    case SECCOMP_RET_ALLOW: return "allows it";
    default: return "returns an unknown action (treated as kill)";
  }
}

bool seccomp_allows(uint32_t action) {
  const uint32_t kind = action & SECCOMP_RET_ACTION_FULL;
  return kind == SECCOMP_RET_ALLOW || kind == SECCOMP_RET_LOG;
}

}  // namespace polus
