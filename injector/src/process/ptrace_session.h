// process/ptrace_session.h — every thread of one target, held through ptrace.
//
// Attaching uses PTRACE_SEIZE, never PTRACE_ATTACH: no SIGSTOP is sent, so the target's
// job-control state and signal counts are untouched. PTRACE_O_TRACECLONE makes the kernel
// attach threads created while we hold the process (kernel/ptrace.c, ptrace_event clone):
// they report a PTRACE_EVENT_STOP and join the session.
//
// Threads keep running unless the engine asks for them to stop. A thread stops with
// PTRACE_INTERRUPT (a PTRACE_EVENT_STOP, no signal involved). Signals that reach a thread
// while the session holds it are kept and delivered when the thread is let go, with their
// original siginfo when the kernel allows injecting it (from a signal-delivery-stop), or
// re-raised with tgkill otherwise: no signal is ever lost or swallowed.
#pragma once

#include <signal.h>
#include <sys/types.h>
#include <sys/user.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <vector>

#include "common/clock.h"

namespace polus {

/// Why a thread is in a ptrace-stop.
enum class StopKind {
  kNone,           // running
  kInterrupt,      // PTRACE_EVENT_STOP after PTRACE_INTERRUPT or a new thread's first stop
  kGroupStop,      // PTRACE_EVENT_STOP for a job-control stop signal
  kSignal,         // signal-delivery-stop
  kEvent,          // another ptrace event (clone, exec, ...)
  kSyscall,        // syscall-entry or -exit stop of a borrowed thread (PTRACE_SYSCALL)
};

/// How a borrowed thread stopped: a syscall stop, or a signal-delivery-stop of a synchronous
/// fault, SIGTRAP or a signal the thread raised itself (others are deferred, never returned).
struct BorrowedStop {
  StopKind kind = StopKind::kNone;
  int signal = 0;  // for kSignal
};

struct ThreadState {
  pid_t tid = 0;
  StopKind stop = StopKind::kNone;
  int stop_signal = 0;            // WSTOPSIG of the current stop
  bool held = false;              // the engine wants it stopped
  bool borrowed = false;          // running injected code: its signals are deferred
  uint64_t unblock_on_return = 0; // signals unblock_signals() cleared while it was borrowed
  std::deque<siginfo_t> deferred; // signals to deliver when it is let go
  pid_t last_clone = 0;           // the task its last clone made, as our pid namespace numbers it
};

class PtraceSession {
 public:
  /// Seizes every thread of `pid` (re-listing /proc/PID/task until no new thread appears).
  /// Threads keep running. Throws Error: kNoSuchProcess, kPermissionDenied, kAlreadyTraced.
  static PtraceSession seize(pid_t pid);

  PtraceSession(PtraceSession&&) noexcept;
  PtraceSession& operator=(PtraceSession&&) = delete;
  PtraceSession(const PtraceSession&) = delete;
  /// Detaches from every thread, delivering any signal that was kept for it.
  ~PtraceSession();

  pid_t pid() const { return pid_; }
  /// Whether the process has exited (seen while waiting for our events).
  bool process_exited() const { return process_exited_; }
  std::vector<pid_t> thread_ids() const;
  /// The task thread `tid`'s latest clone(2) made, numbered in our pid namespace (the
  /// PTRACE_EVENT_CLONE message): clone's own result is the number in the target's namespace,
  /// which differs for a target in a pid namespace of its own. 0 if none was seen.
  pid_t last_clone_of(pid_t tid) const;
  const ThreadState& thread(pid_t tid) const;
  bool has_thread(pid_t tid) const { return threads_.count(tid) != 0; }

  /// Seizes the threads of the process not traced yet (all of them after detach_all_except,
  /// and threads born since). They keep running. Throws as seize() does.
  void attach_missing_threads();

  /// Interrupts one thread and waits until it is in a ptrace-stop. Returns false if the
  /// thread exited meanwhile. Throws kTimeout / kTargetDied.
  bool stop_thread(pid_t tid, Clock::time_point deadline);

  /// Interrupts every thread and waits until all are stopped (threads born meanwhile too).
  void stop_all(Clock::time_point deadline);

  /// Lets one stopped thread run again, delivering the signals kept for it.
  void resume_thread(pid_t tid);

  /// Lets every held thread run again.
  void resume_all();

  /// Lets every held thread but `keep` run again (a borrowed thread stays ours, checked).
  void resume_all_except(pid_t keep);

  /// Removes `signals` (a mask of 1 << (signo - 1) bits) from the signal mask of every
  /// stopped thread that blocks any of them (PTRACE_GETSIGMASK / PTRACE_SETSIGMASK).
  /// PTRACE_SETSIGMASK also clears the flag that would make a sigsuspend/ppoll/pselect in
  /// progress restore its saved mask (kernel/ptrace.c), so the change lasts. Returns the
  /// threads changed.
  std::vector<pid_t> unblock_signals(uint64_t signals);

  /// The signal mask of a stopped thread (PTRACE_GETSIGMASK); nullopt if it cannot be read.
  std::optional<uint64_t> signal_mask(pid_t tid) const;

  /// Registers read/written only while the thread is stopped.
  user_regs_struct get_regs(pid_t tid) const;
  void set_regs(pid_t tid, const user_regs_struct& regs);

  /// Marks a stopped thread as running injected code: signals that reach it are deferred.
  void set_borrowed(pid_t tid, bool borrowed);

  /// Continues a borrowed thread with PTRACE_SYSCALL and waits for its next syscall stop or
  /// fault (signals other than synchronous faults and SIGTRAP are deferred, delivered when it
  /// is let go). `inject` is a signal to deliver as it resumes (a fault passed on to the
  /// target's handler). Throws kTargetDied / kTimeout.
  /// `interrupt_if`, when given, is asked about every 100 ms while the thread runs; once it
  /// says yes the thread is interrupted, and its interrupt stop is returned as such (kInterrupt):
  /// a clean point to look at it (BorrowedThread::set_rescue).
  BorrowedStop run_borrowed(pid_t tid, Clock::time_point deadline, int inject = 0,
                            const std::function<bool()>& interrupt_if = {});

  /// Sets the signal mask of a stopped thread (PTRACE_SETSIGMASK). False if it is gone.
  bool set_signal_mask(pid_t tid, uint64_t mask);

  /// Takes `child` — a copy of the process cloned by a borrowed thread, which
  /// PTRACE_O_TRACECLONE attached as if it were one more thread — out of this session into a
  /// session of its own (its only thread held).
  PtraceSession split_off_process(pid_t child);

  /// Kills the whole process with SIGKILL and reaps its threads as their tracer (for a
  /// process copy: its real parent, the target, still has to reap the zombie). Bounded wait.
  void kill_and_reap() noexcept;

  /// Handles pending wait events without blocking (new threads, signals to pass on).
  void poll_events();

  /// Lets go of every thread but `keep`, delivering what was kept for them. Used before
  /// injected code changes signal dispositions: a fault signal must never sit in one of our
  /// signal-delivery-stops while its handler is swapped.
  void detach_all_except(pid_t keep);

 private:
  explicit PtraceSession(pid_t pid) : pid_(pid) {}
  void seize_thread(pid_t tid, bool fail_if_traced);
  /// Waits for one event from any thread (or `only_tid`) until `deadline`; returns its tid or 0.
  pid_t wait_event(Clock::time_point deadline, pid_t only_tid = -1);
  void handle_event(pid_t tid, int status);
  void continue_thread(pid_t tid, int signal);
  void detach_all() noexcept { detach_where([](pid_t) { return true; }); }
  void detach_where(const std::function<bool(pid_t)>& which) noexcept;
  /// One round of detach_where over the threads the session lists.
  void detach_known(const std::function<bool(pid_t)>& which) noexcept;
  /// Takes into threads_ every thread of the process traced by us that it does not list;
  /// returns how many.
  size_t adopt_strays();
  /// A borrowed thread that has been quiet for a while may be in a ptrace-stop whose wait
  /// report we never collected: looks (PTRACE_GETSIGINFO works only on a stopped tracee), and
  /// records the stop if so. Returns whether it found one.
  bool probe_unreported_stop(pid_t tid);
  /// Waits for threads that could not be detached because they were dying, so the kernel can
  /// release them (and report the process to its parent); gives up at `deadline`.
  void reap_dying_tracees(std::vector<pid_t> tids, Clock::time_point deadline) noexcept;

  pid_t pid_;
  std::map<pid_t, ThreadState> threads_;
  bool process_exited_ = false;
  int exit_status_ = 0;
  /// " (it called exit with status N)" / " (killed by SIG...)" once the process has exited
  /// and its leader's wait status was seen; "" otherwise.
  std::string how_it_ended() const;
  bool moved_from_ = false;
};

}  // namespace polus
