#include "process/ptrace_session.h"

#include <dirent.h>
#include <errno.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>
#include <functional>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include <spdlog/spdlog.h>

#include "polus/error.h"
#include "process/process_maps.h"
#include "process/proc_files.h"

namespace polus {

namespace {

/// Who already traces the process or thread (0 if nobody).
pid_t tracer_of(pid_t pid, pid_t tid = 0) {
  std::optional<TaskStatus> status = read_task_status(pid, tid);
  return status ? status->tracer : 0;
}

bool is_job_control_stop(int sig) { return sig == SIGSTOP || sig == SIGTSTP || sig == SIGTTIN || sig == SIGTTOU; }

bool is_synchronous_fault(int sig) { return sig == SIGSEGV || sig == SIGBUS || sig == SIGILL || sig == SIGFPE; }

void tgkill(pid_t tgid, pid_t tid, int sig) { ::syscall(SYS_tgkill, tgid, tid, sig); }

/// System calls the kernel aborts with a plain -EINTR (not -ERESTART*) when their thread
/// merely enters a ptrace-stop, with no signal handler involved (signal(7), "Interruption
/// of system calls and library functions by stop signals"; fs/eventpoll.c ep_poll returns
/// -EINTR on signal_pending). Left alone, the application would see EINTR because we
/// looked at it.
bool returns_eintr_on_stop(long syscall_number) {
  switch (syscall_number) {
    case SYS_epoll_wait:
    case SYS_epoll_pwait:
#ifdef SYS_epoll_pwait2
    case SYS_epoll_pwait2:
#endif
    case SYS_semop:
    case SYS_semtimedop:
    case SYS_rt_sigtimedwait:
    case SYS_io_getevents:
#ifdef SYS_io_pgetevents
    case SYS_io_pgetevents:
#endif
      return true;
    default:
      return false;
  }
}

/// If `tid` stopped right after one of those calls returned -EINTR because of our
/// PTRACE_INTERRUPT, rewind it so the call is made again on resume, exactly as the kernel
/// does itself for -ERESTARTNOHAND: rax = orig_rax, rip back over the 2-byte `syscall`.
/// Whether a signal the thread does not block is pending for it (thread or process queue):
/// then EINTR is the call's true outcome, after that signal's handler.
bool unblocked_signal_pending(pid_t tid) {
  std::optional<TaskStatus> status = read_task_status(tid);
  return status && ((status->pending | status->shared_pending) & ~status->blocked) != 0;
}

void restart_call_aborted_by_stop(pid_t tid) {
  user_regs_struct regs{};
  if (::ptrace(PTRACE_GETREGS, tid, nullptr, &regs) != 0) return;
  long number = static_cast<long>(regs.orig_rax);
  if (number < 0 || static_cast<long>(regs.rax) != -EINTR || !returns_eintr_on_stop(number)) return;
  errno = 0;
  long word = ::ptrace(PTRACE_PEEKTEXT, tid, reinterpret_cast<void*>(regs.rip - 2), nullptr);
  if (errno != 0 || (word & 0xffff) != 0x050f) return;  // not right after a `syscall` instruction
  if (unblocked_signal_pending(tid)) return;               // a real signal interrupted it too
  regs.rax = regs.orig_rax;
  regs.rip -= 2;
  if (::ptrace(PTRACE_SETREGS, tid, nullptr, &regs) == 0) {
    spdlog::debug("thread {}: system call {} interrupted by our stop will be restarted", tid, number);
  }
}

}  // namespace

PtraceSession PtraceSession::seize(pid_t pid) {
  if (pid <= 0 || (::kill(pid, 0) != 0 && errno == ESRCH)) {
    throw Error(ErrorCode::kNoSuchProcess, "process " + std::to_string(pid) + " does not exist; check the pid");
  }
  if (pid_t tracer = tracer_of(pid); tracer != 0) {
    throw Error(ErrorCode::kAlreadyTraced, "process " + std::to_string(pid) + " is already traced by process " +
                                               std::to_string(tracer) + " (" + task_name(tracer) +
                                               "); detach that debugger and try again");
  }
  PtraceSession session(pid);
  session.seize_thread(pid, true);  // only the leader's failure means the process is gone
  session.attach_missing_threads();
  spdlog::debug("seized {} threads of process {}", session.threads_.size(), pid);
  return session;
}

void PtraceSession::attach_missing_threads() {
  // Re-list until stable: a thread cloned by a thread we do not trace is not auto-attached
  // (PTRACE_O_TRACECLONE follows only our tracees' clones).
  for (bool added = true; added;) {
    added = false;
    for (pid_t tid : list_tasks(pid_)) {
      if (threads_.count(tid)) continue;
      const size_t before = threads_.size();
      seize_thread(tid, false);
      added = added || threads_.size() != before;  // an exiting thread is skipped, not retried
    }
  }
}

void PtraceSession::seize_thread(pid_t tid, bool first) {
  // TRACESYSGOOD: a borrowed thread run with PTRACE_SYSCALL reports SIGTRAP|0x80 at its
  // syscall stops, which cannot be mistaken for a real SIGTRAP (ptrace(2)).
  constexpr long kOptions = PTRACE_O_TRACECLONE | PTRACE_O_TRACESYSGOOD;
  if (::ptrace(PTRACE_SEIZE, tid, nullptr, reinterpret_cast<void*>(kOptions)) == 0) {
    threads_[tid].tid = tid;
    return;
  }
  int err = errno;
  if (err == ESRCH && !first) return;  // the thread exited between listing and seizing
  if (err == ESRCH) throw Error(ErrorCode::kNoSuchProcess, "process " + std::to_string(pid_) + " does not exist");
  // A thread that is exiting refuses to be seized with EPERM (kernel/ptrace.c): skip it.
  if (err == EPERM && !first && task_exited(pid_, tid)) return;
  // Born from a thread we already hold: PTRACE_O_TRACECLONE attached it to us already.
  // (TracerPid is the tracing thread's id: ptrace belongs to a thread, not a process.)
  if (err == EPERM && !first && tracer_of(pid_, tid) == ::gettid()) {
    threads_[tid].tid = tid;
    return;
  }
  if (err == EPERM && task_exited(pid_)) {
    throw Error(ErrorCode::kNoSuchProcess, "process " + std::to_string(pid_) + " has exited (its parent has not reaped it yet)");
  }
  if (err == EPERM) {
    if (pid_t tracer = tracer_of(pid_); tracer != 0 && tracer != ::gettid()) {
      throw Error(ErrorCode::kAlreadyTraced, "process " + std::to_string(pid_) + " is already traced by process " +
                                                 std::to_string(tracer) + " (" + task_name(tracer) +
                                                 "); detach that debugger and try again");
    }
    throw Error(ErrorCode::kPermissionDenied,
                "not allowed to ptrace process " + std::to_string(pid_) +
                    ": run polusctl as the target's user or as root, and check "
                    "/proc/sys/kernel/yama/ptrace_scope");
  }
  throw_errno("PTRACE_SEIZE of thread " + std::to_string(tid), err);
}

PtraceSession::PtraceSession(PtraceSession&& other) noexcept
    : pid_(other.pid_),
      threads_(std::move(other.threads_)),
      process_exited_(other.process_exited_),
      exit_status_(other.exit_status_) {
  other.moved_from_ = true;
}

PtraceSession::~PtraceSession() {
  if (!moved_from_) detach_all();
}

std::vector<pid_t> PtraceSession::thread_ids() const {
  std::vector<pid_t> tids;
  for (const auto& [tid, state] : threads_) tids.push_back(tid);
  return tids;
}

const ThreadState& PtraceSession::thread(pid_t tid) const {
  auto it = threads_.find(tid);
  if (it == threads_.end()) throw Error(ErrorCode::kInternal, "thread " + std::to_string(tid) + " is not traced");
  return it->second;
}

void PtraceSession::continue_thread(pid_t tid, int signal) {
  ThreadState& t = threads_.at(tid);
  __ptrace_request request = (t.stop == StopKind::kGroupStop && signal == 0) ? PTRACE_LISTEN : PTRACE_CONT;
  if (::ptrace(request, tid, nullptr, reinterpret_cast<void*>(static_cast<long>(signal))) != 0 && errno != ESRCH) {
    spdlog::warn("cannot continue thread {}: {}", tid, std::strerror(errno));
  }
  t.stop = StopKind::kNone;
  t.stop_signal = 0;
}

void PtraceSession::handle_event(pid_t tid, int status) {
  auto it = threads_.find(tid);
  if (it == threads_.end()) {
    it = threads_.emplace(tid, ThreadState{}).first;
    it->second.tid = tid;
    // Reported before its creator's clone event: a thread of the target runs on like its
    // siblings, but a process copy made for a rehearsal must never run on its own.
    it->second.held = list_tasks(pid_).count(tid) == 0;
  }
  ThreadState& t = it->second;

  if (WIFEXITED(status) || WIFSIGNALED(status)) {
    if (tid == pid_) {
      process_exited_ = true;
      exit_status_ = status;
    }
    threads_.erase(it);
    if (threads_.empty()) process_exited_ = true;
    return;
  }
  if (!WIFSTOPPED(status)) return;

  int sig = WSTOPSIG(status);
  int event = status >> 16;
  if (event == PTRACE_EVENT_CLONE) {
    unsigned long child = 0;
    ::ptrace(PTRACE_GETEVENTMSG, tid, nullptr, &child);
    pid_t child_tid = static_cast<pid_t>(child);
    if (!threads_.count(child_tid)) threads_[child_tid].tid = child_tid;
    // A thread born while we hold the process stays stopped with the others.
    threads_[child_tid].held = t.held;
    t.last_clone = child_tid;
    t.stop = StopKind::kEvent;
    t.stop_signal = sig;
    if (!t.held && !t.borrowed) continue_thread(tid, 0);
    return;
  }
  if (event == PTRACE_EVENT_STOP) {
    t.stop = is_job_control_stop(sig) ? StopKind::kGroupStop : StopKind::kInterrupt;
    if (t.stop == StopKind::kInterrupt) restart_call_aborted_by_stop(tid);
    t.stop_signal = sig;
    if (!t.held && !t.borrowed) continue_thread(tid, 0);
    return;
  }
  if (event != 0) {
    t.stop = StopKind::kEvent;
    t.stop_signal = sig;
    if (!t.held && !t.borrowed) continue_thread(tid, 0);
    return;
  }
  if (sig == (SIGTRAP | 0x80)) {  // a syscall stop (only borrowed threads run with PTRACE_SYSCALL)
    t.stop = StopKind::kSyscall;
    t.stop_signal = 0;
    if (!t.held && !t.borrowed) continue_thread(tid, 0);
    return;
  }
  // A signal-delivery-stop.
  t.stop = StopKind::kSignal;
  t.stop_signal = sig;
  if (!t.held && !t.borrowed) {
    continue_thread(tid, sig);  // a thread we do not hold gets its signal at once
  }
}

pid_t PtraceSession::wait_event(Clock::time_point deadline, pid_t only_tid) {
  // We wait on each traced tid, never on -1: the caller (a test, polusd) may have children
  // of its own whose exit statuses are not ours to reap.
  auto backoff = std::chrono::microseconds(0);
  for (;;) {
    std::vector<pid_t> tids = only_tid > 0 ? std::vector<pid_t>{only_tid} : thread_ids();
    for (pid_t tid : tids) {
      int status = 0;
      pid_t got = ::waitpid(tid, &status, __WALL | WNOHANG);
      if (got == tid) {
        handle_event(tid, status);
        return tid;
      }
      if (got < 0 && errno == ECHILD) {
        // Not traced any more: it exited and was reaped (e.g. by its parent, if we are not it).
        threads_.erase(tid);
        if (threads_.empty() || tid == pid_) process_exited_ = process_exited_ || ::kill(pid_, 0) != 0;
        return tid;
      }
    }
    if (process_exited_) return 0;
    if (Clock::now() >= deadline) return 0;
    // Spin briefly (a stop usually lands within microseconds), then sleep with backoff.
    if (backoff.count() == 0) {
      std::this_thread::yield();
      backoff = std::chrono::microseconds(5);
    } else {
      std::this_thread::sleep_for(backoff);
      backoff = std::min(backoff * 2, std::chrono::microseconds(1000));
    }
  }
}

void PtraceSession::poll_events() { wait_event(Clock::now()); }

bool PtraceSession::stop_thread(pid_t tid, Clock::time_point deadline) {
  auto it = threads_.find(tid);
  if (it == threads_.end()) return false;
  it->second.held = true;
  if (it->second.stop != StopKind::kNone) return true;
  if (::ptrace(PTRACE_INTERRUPT, tid, nullptr, nullptr) != 0 && errno != ESRCH) {
    throw_errno("PTRACE_INTERRUPT of thread " + std::to_string(tid), errno);
  }
  for (;;) {
    auto found = threads_.find(tid);
    if (found == threads_.end()) return false;
    if (found->second.stop != StopKind::kNone) return true;
    if (process_exited_) {
      throw Error(ErrorCode::kTargetDied, "process " + std::to_string(pid_) + " exited while Polus held it");
    }
    if (Clock::now() >= deadline) {
      throw Error(ErrorCode::kTimeout, "thread " + std::to_string(tid) + " of process " + std::to_string(pid_) +
                                           " did not stop in time (uninterruptible sleep?); try again");
    }
    wait_event(deadline);
  }
}

void PtraceSession::stop_all(Clock::time_point deadline) {
  for (auto& [tid, t] : threads_) {
    t.held = true;
    if (t.stop == StopKind::kNone && ::ptrace(PTRACE_INTERRUPT, tid, nullptr, nullptr) != 0 && errno != ESRCH) {
      throw_errno("PTRACE_INTERRUPT of thread " + std::to_string(tid), errno);
    }
  }
  for (;;) {
    bool all_stopped = true;
    for (auto& [tid, t] : threads_) {
      if (!t.held) {  // born from a thread that was running when we started
        t.held = true;
        if (t.stop == StopKind::kNone) ::ptrace(PTRACE_INTERRUPT, tid, nullptr, nullptr);
      }
      if (t.stop == StopKind::kNone) all_stopped = false;
    }
    if (all_stopped) return;
    if (process_exited_) {
      throw Error(ErrorCode::kTargetDied, "process " + std::to_string(pid_) + " exited while Polus held it");
    }
    if (Clock::now() >= deadline) {
      throw Error(ErrorCode::kTimeout, "not every thread of process " + std::to_string(pid_) +
                                           " stopped in time (uninterruptible sleep?); try again");
    }
    wait_event(deadline);
  }
}

void PtraceSession::resume_thread(pid_t tid) {
  auto it = threads_.find(tid);
  if (it == threads_.end()) return;
  ThreadState& t = it->second;
  t.held = false;
  t.borrowed = false;
  t.unblock_on_return = 0;
  if (t.stop == StopKind::kNone) return;
  int inject = 0;
  if (t.stop == StopKind::kSignal) {
    if (t.stop_signal != 0) {
      inject = t.stop_signal;  // a signal that arrived while held: the kernel still has its siginfo
    } else if (!t.deferred.empty()) {
      siginfo_t info = t.deferred.front();
      t.deferred.pop_front();
      if (::ptrace(PTRACE_SETSIGINFO, tid, nullptr, &info) == 0) inject = info.si_signo;
      else t.deferred.push_front(info);
    }
  }
  std::deque<siginfo_t> rest = std::move(t.deferred);
  t.deferred.clear();
  continue_thread(tid, inject);
  // The kernel injects only from a signal-delivery-stop; anything else is raised again.
  for (const siginfo_t& info : rest) tgkill(pid_, tid, info.si_signo);
}

void PtraceSession::resume_all() {
  for (pid_t tid : thread_ids()) resume_thread(tid);
}

std::optional<uint64_t> PtraceSession::signal_mask(pid_t tid) const {
  uint64_t mask = 0;
  if (::ptrace(PTRACE_GETSIGMASK, tid, sizeof mask, &mask) != 0) return std::nullopt;
  return mask;
}

std::vector<pid_t> PtraceSession::unblock_signals(uint64_t signals) {
  std::vector<pid_t> changed;
  for (auto& [tid, t] : threads_) {
    if (t.stop == StopKind::kNone) continue;
    // A borrowed thread runs with a mask of ours; its own comes back from its signal frame.
    if (t.borrowed) t.unblock_on_return |= signals;
    uint64_t mask = 0;
    if (::ptrace(PTRACE_GETSIGMASK, tid, sizeof mask, &mask) != 0) {
      if (errno == ESRCH) continue;  // exited meanwhile
      throw_errno("PTRACE_GETSIGMASK of thread " + std::to_string(tid), errno);
    }
    if (!(mask & signals)) continue;
    uint64_t unblocked = mask & ~signals;
    if (::ptrace(PTRACE_SETSIGMASK, tid, sizeof unblocked, &unblocked) != 0) {
      if (errno == ESRCH) continue;
      throw_errno("PTRACE_SETSIGMASK of thread " + std::to_string(tid), errno);
    }
    changed.push_back(tid);
  }
  return changed;
}

void PtraceSession::resume_all_except(pid_t keep) {
  for (pid_t tid : thread_ids()) {
    if (tid != keep) resume_thread(tid);
  }
}

user_regs_struct PtraceSession::get_regs(pid_t tid) const {
  user_regs_struct regs{};
  if (::ptrace(PTRACE_GETREGS, tid, nullptr, &regs) != 0) {
    throw_errno("PTRACE_GETREGS of thread " + std::to_string(tid), errno);
  }
  return regs;
}

void PtraceSession::set_regs(pid_t tid, const user_regs_struct& regs) {
  if (::ptrace(PTRACE_SETREGS, tid, nullptr, &regs) != 0) {
    throw_errno("PTRACE_SETREGS of thread " + std::to_string(tid), errno);
  }
}

void PtraceSession::set_borrowed(pid_t tid, bool borrowed) {
  ThreadState& t = threads_.at(tid);
  t.borrowed = borrowed;
  if (borrowed && t.stop == StopKind::kSignal && t.stop_signal != 0) {
    // The thread was stopped for a signal of its own: keep it for later, with its siginfo.
    siginfo_t info{};
    if (::ptrace(PTRACE_GETSIGINFO, tid, nullptr, &info) == 0) t.deferred.push_back(info);
    t.stop_signal = 0;
  }
}

namespace {
/// "state D, in the kernel at synchronize_rcu_normal": what a thread is doing, for messages.
}  // namespace

BorrowedStop PtraceSession::run_borrowed(pid_t tid, Clock::time_point deadline, int inject,
                                         const std::function<bool()>& interrupt_if) {
  constexpr auto kAskEvery = std::chrono::milliseconds(100);
  ThreadState* t = &threads_.at(tid);
  bool interrupted = false;
  auto asked = Clock::now();
  for (;;) {
    if (::ptrace(PTRACE_SYSCALL, tid, nullptr, reinterpret_cast<void*>(static_cast<long>(inject))) != 0) {
      if (errno == ESRCH && task_exited(pid_, tid)) {
        throw Error(ErrorCode::kTargetDied, "process " + std::to_string(pid_) + " (or its thread " +
                                                std::to_string(tid) + ") exited while running code injected by Polus" +
                                                how_it_ended());
      }
      throw_errno("resuming borrowed thread", errno);
    }
    inject = 0;
    t->stop = StopKind::kNone;
    t->stop_signal = 0;
    const auto resumed = Clock::now();
    for (;;) {
      if (process_exited_ || !threads_.count(tid)) {
        throw Error(ErrorCode::kTargetDied,
                    "process " + std::to_string(pid_) + " (or its thread " + std::to_string(tid) +
                        ") exited while running code injected by Polus" + how_it_ended());
      }
      t = &threads_.at(tid);
      if (t->stop != StopKind::kNone) break;
      if (Clock::now() - resumed > std::chrono::milliseconds(250) && probe_unreported_stop(tid)) {
        t = &threads_.at(tid);
        break;
      }
      if (Clock::now() >= deadline) {
        throw Error(ErrorCode::kTimeout, "code injected into thread " + std::to_string(tid) +
                                             " did not finish in time (" + describe_wait(pid_, tid) + ")");
      }
      if (interrupt_if && !interrupted && Clock::now() - asked >= kAskEvery) {
        asked = Clock::now();
        if (interrupt_if()) {
          interrupted = ::ptrace(PTRACE_INTERRUPT, tid, nullptr, nullptr) == 0;
        }
      }
      // All threads: others' signals must not wait for our code to finish.
      wait_event(interrupt_if && !interrupted ? std::min(deadline, Clock::now() + kAskEvery) : deadline);
    }
    if (t->stop == StopKind::kSyscall) return {StopKind::kSyscall, 0};
    // Our interrupt (an earlier stop may have come first: then it is a stale one, below).
    if (t->stop == StopKind::kInterrupt && interrupted) return {StopKind::kInterrupt, 0};
    if (t->stop != StopKind::kSignal) continue;  // a stale interrupt or event stop: go on
    int sig = t->stop_signal;
    if (sig == SIGTRAP || is_synchronous_fault(sig)) {
      t->stop_signal = 0;  // ours to interpret; never delivered to the target as is
      return {StopKind::kSignal, sig};
    }
    siginfo_t info{};
    bool have_info = ::ptrace(PTRACE_GETSIGINFO, tid, nullptr, &info) == 0;
    // The thread blocks every other signal while our code runs, so a signal it sent itself
    // that reaches it now was raised by that code after unblocking it (abort() in a patch's
    // constructor): a crash of our code, never to be delivered as the target's own.
    if (have_info && info.si_pid == pid_ && (info.si_code == SI_TKILL || info.si_code == SI_USER) &&
        !is_job_control_stop(sig)) {
      t->stop_signal = 0;
      return {StopKind::kSignal, sig};
    }
    if (have_info) t->deferred.push_back(info);
    t->stop_signal = 0;
    spdlog::debug("deferred signal {} for borrowed thread {}", sig, tid);
  }
}

std::string PtraceSession::how_it_ended() const {
  if (!process_exited_ || exit_status_ == 0) return "";
  if (WIFEXITED(exit_status_)) return " (it called exit with status " + std::to_string(WEXITSTATUS(exit_status_)) + ")";
  if (WIFSIGNALED(exit_status_)) return std::string(" (killed by ") + strsignal(WTERMSIG(exit_status_)) + ")";
  return "";
}

bool PtraceSession::probe_unreported_stop(pid_t tid) {
  // ptrace requests other than a few succeed only on a tracee in a ptrace-stop (ptrace(2)).
  siginfo_t info{};
  if (::ptrace(PTRACE_GETSIGINFO, tid, nullptr, &info) != 0) return false;  // running: nothing missed
  int status = 0;
  if (::waitpid(tid, &status, __WALL | WNOHANG) == tid) {  // the report had not been collected
    handle_event(tid, status);
    return threads_.count(tid) && threads_.at(tid).stop != StopKind::kNone;
  }
  // Stopped, but no wait report left to collect: someone else in this process took it.
  // What kind of stop, from the siginfo the kernel made for it (kernel/ptrace.c,
  // ptrace_do_notify: si_code is the reported status, SIGTRAP|0x80 for a syscall-stop,
  // SIGTRAP | event << 8 for an event stop).
  ThreadState& t = threads_.at(tid);
  if ((info.si_code >> 8) == PTRACE_EVENT_STOP) {  // si_signo is the group-stop's signal, or SIGTRAP
    t.stop = is_job_control_stop(info.si_signo) ? StopKind::kGroupStop : StopKind::kInterrupt;
    t.stop_signal = info.si_signo;
  } else if (info.si_signo == SIGTRAP && info.si_code == (SIGTRAP | 0x80)) {
    t.stop = StopKind::kSyscall;
    t.stop_signal = 0;
  } else if (info.si_signo == SIGTRAP && (info.si_code & 0xff) == SIGTRAP && (info.si_code >> 8) != 0) {
    t.stop = StopKind::kEvent;
    t.stop_signal = SIGTRAP;
  } else {
    t.stop = StopKind::kSignal;
    t.stop_signal = info.si_signo;
  }
  spdlog::warn("thread {}: found in a ptrace-stop (signal {}, code {:#x}) whose wait report never reached Polus; "
               "going on from it",
               tid, info.si_signo, info.si_code);
  return true;
}

bool PtraceSession::set_signal_mask(pid_t tid, uint64_t mask) {
  if (::ptrace(PTRACE_SETSIGMASK, tid, sizeof mask, &mask) == 0) return true;
  if (errno == ESRCH) return false;
  throw_errno("PTRACE_SETSIGMASK of thread " + std::to_string(tid), errno);
}

void PtraceSession::detach_all_except(pid_t keep) {
  detach_where([keep](pid_t tid) { return tid != keep; });
}

size_t PtraceSession::adopt_strays() {
  // A thread cloned by a tracee is attached to us by PTRACE_O_TRACECLONE as it is born, and
  // starts in a ptrace-stop; if its creator was let go before we collected the clone event,
  // we would not know it, and it would stay stopped (a lock it takes later held for good)
  // for as long as this process lives — polusd, a test. Threads of the process traced by us
  // that the session does not list are taken in, so the detach that follows covers them.
  size_t adopted = 0;
  for (pid_t tid : list_tasks(pid_)) {
    if (threads_.count(tid) || tracer_of(pid_, tid) != ::gettid()) continue;  // TracerPid: a thread id
    spdlog::debug("thread {} of process {} is traced by us but was not known (born as its creator was let go)", tid, pid_);
    threads_[tid].tid = tid;
    ++adopted;
  }
  return adopted;
}

void PtraceSession::detach_where(const std::function<bool(pid_t)>& which) noexcept {
  // Threads born to the ones we let go may be attached to us meanwhile: a few rounds.
  for (int round = 0; round < 4; ++round) {
    try {
      if (adopt_strays() == 0 && round > 0) return;
    } catch (...) {
      // Reading /proc failed: detach what we know.
    }
    detach_known(which);
  }
}

void PtraceSession::detach_known(const std::function<bool(pid_t)>& which) noexcept {
  try {
    // PTRACE_DETACH needs a stopped tracee; stop the running ones briefly.
    auto deadline = Clock::now() + std::chrono::seconds(2);
    for (auto& [tid, t] : threads_) {
      if (!which(tid)) continue;
      if (t.stop == StopKind::kNone) ::ptrace(PTRACE_INTERRUPT, tid, nullptr, nullptr);
      t.held = true;
    }
    while (!process_exited_ && Clock::now() < deadline) {
      bool all = true;
      for (auto& [tid, t] : threads_) all = all && (!which(tid) || t.stop != StopKind::kNone);
      if (all) break;
      wait_event(deadline);
    }
    std::vector<pid_t> not_in_a_stop;
    for (auto it = threads_.begin(); it != threads_.end();) {
      auto& [tid, t] = *it;
      if (!which(tid)) {
        ++it;
        continue;
      }
      int inject = 0;
      std::deque<siginfo_t> rest = std::move(t.deferred);
      if (t.stop == StopKind::kSignal) {
        if (t.stop_signal != 0) {
          inject = t.stop_signal;
        } else if (!rest.empty() && ::ptrace(PTRACE_SETSIGINFO, tid, nullptr, &rest.front()) == 0) {
          inject = rest.front().si_signo;
          rest.pop_front();
        }
      }
      // A detach from a stop other than signal-delivery-stop ignores the signal: raise it.
      if (::ptrace(PTRACE_DETACH, tid, nullptr, reinterpret_cast<void*>(static_cast<long>(inject))) != 0) {
        if (errno == ESRCH) {
          not_in_a_stop.push_back(tid);  // dying (SIGKILL woke it from the stop) or already dead
        } else {
          spdlog::warn("cannot detach from thread {}: {}", tid, std::strerror(errno));
        }
      }
      for (const siginfo_t& info : rest) tgkill(pid_, tid, info.si_signo);
      it = threads_.erase(it);
    }
    reap_dying_tracees(not_in_a_stop, Clock::now() + std::chrono::seconds(1));
  } catch (...) {
    // Destructors must not throw; the kernel detaches every tracee when we exit anyway.
  }
}

void PtraceSession::reap_dying_tracees(std::vector<pid_t> tids, Clock::time_point deadline) noexcept {
  // A traced thread that dies stays a zombie until its tracer reaps it; and the kernel reports
  // the thread-group leader to its parent only once every other thread is released
  // (kernel/exit.c: delay_group_leader, release_task). Forgetting a dead tracee would leave the
  // target's real parent (systemd, a shell) waiting forever while we live, as polusd does. The
  // tracer's wait on a zombie that is not its own child hands it back to the real parent
  // (wait_task_zombie -> ptrace_unlink), so reaping here takes nothing from the parent. Only
  // when we are the leader's parent ourselves is the leader left for our own child handling.
  auto own_child = [this](pid_t tid) {
    std::optional<TaskStat> stat = tid == pid_ ? read_task_stat(pid_) : std::nullopt;
    return stat && stat->parent == ::getpid();
  };
  // The leader last: it becomes reportable only after the others are gone.
  std::stable_partition(tids.begin(), tids.end(), [this](pid_t tid) { return tid != pid_; });
  std::erase_if(tids, own_child);
  auto backoff = std::chrono::microseconds(20);
  while (!tids.empty()) {
    std::erase_if(tids, [this](pid_t tid) {
      int status = 0;
      pid_t got = ::waitpid(tid, &status, __WALL | WNOHANG);
      if (got < 0) return true;  // ECHILD: not ours any more
      if (got == 0) return false;  // still on its way out: a SIGKILL woke it from the stop
      if (WIFEXITED(status) || WIFSIGNALED(status)) return true;
      // A stop after all (it was only running): detach now, handing a signal-delivery-stop
      // its signal (no event bits) rather than dropping it.
      int signal = WIFSTOPPED(status) && (status >> 16) == 0 ? WSTOPSIG(status) : 0;
      return ::ptrace(PTRACE_DETACH, tid, nullptr, reinterpret_cast<void*>(static_cast<long>(signal))) == 0;
    });
    if (tids.empty() || Clock::now() >= deadline) break;
    std::this_thread::sleep_for(backoff);
    backoff = std::min(backoff * 2, std::chrono::microseconds(2000));
  }
  for (pid_t tid : tids) {
    spdlog::warn("thread {} of process {} could not be detached or reaped in time ({}); it stays traced until "
                 "this program exits",
                 tid, pid_, task_exited(pid_, tid) ? "exited" : "still running, e.g. in uninterruptible sleep");
  }
}

pid_t PtraceSession::last_clone_of(pid_t tid) const {
  auto it = threads_.find(tid);
  return it == threads_.end() ? 0 : it->second.last_clone;
}

PtraceSession PtraceSession::split_off_process(pid_t child) {
  PtraceSession copy(child);
  ThreadState state;
  if (auto it = threads_.find(child); it != threads_.end()) {
    state = it->second;  // its first stop may already have been seen
    threads_.erase(it);
  }
  state.tid = child;
  state.held = true;
  state.borrowed = false;
  state.deferred.clear();
  copy.threads_[child] = state;
  return copy;
}

void PtraceSession::kill_and_reap() noexcept {
  ::kill(pid_, SIGKILL);
  const auto deadline = Clock::now() + std::chrono::seconds(2);
  for (pid_t tid : thread_ids()) {
    for (;;) {
      int status = 0;
      pid_t got = ::waitpid(tid, &status, __WALL | WNOHANG);
      if (got < 0 || (got == tid && (WIFEXITED(status) || WIFSIGNALED(status)))) break;
      if (Clock::now() >= deadline) {
        spdlog::warn("process {} did not die within 2 s of SIGKILL", pid_);
        break;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  threads_.clear();
  process_exited_ = true;
}

}  // namespace polus
