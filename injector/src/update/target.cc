#include "update/target.h"

#include "update/registry.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <sys/syscall.h>

#include <signal.h>

#include <algorithm>
#include <fstream>
#include <cstring>
#include <sstream>
#include <thread>

#include <spdlog/spdlog.h>

#include "polus/error.h"
#include "common/format.h"
#include "polus/stop_request.h"
#include "binary/tail_calls.h"
#include "process/proc_files.h"

namespace polus {

namespace {


// Entry points that take locks dlopen also needs (the malloc arenas, the loader's lock,
// fork's atfork lock). A thread stopped anywhere below them must not be made to dlopen.
constexpr const char* kLockHoldingFunctions[] = {
    "malloc", "free", "calloc", "realloc", "reallocarray", "posix_memalign", "aligned_alloc", "memalign",
    "valloc", "pvalloc", "malloc_trim", "malloc_stats", "malloc_info", "mallinfo", "mallinfo2",
    "dl_iterate_phdr", "dlopen", "dlmopen", "dlclose", "dlsym", "dlvsym", "dladdr", "dladdr1", "dlinfo",
    "fork", "_Fork", "vfork", "pthread_create", "pthread_exit", "exit", "__libc_malloc", "__libc_free",
    "__libc_calloc", "__libc_realloc", "__libc_memalign", "__libc_dlopen_mode", "__libc_dlclose",
};

/// Whether a synchronous fault signal (SIGSEGV, SIGTRAP, SIGBUS) is queued for `tid`.
bool has_pending_fault(pid_t pid, pid_t tid) {
  std::optional<TaskStatus> status = read_task_status(pid, tid);
  auto bit = [](int sig) { return 1ull << (sig - 1); };
  return status && (status->pending & (bit(SIGSEGV) | bit(SIGTRAP) | bit(SIGBUS)));
}

}  // namespace

TargetContext::TargetContext(pid_t pid, const SymbolOptions& options, Clock::time_point deadline)
    : pid_(pid), deadline_(deadline), lock_(pid, deadline), symbol_options_(options), symbols_(ProcessSymbols::load(pid, options)), memory_(pid) {}

void TargetContext::reload_symbols() {
  symbols_ = ProcessSymbols::load(pid_, symbol_options_);
  lock_holding_ranges_.clear();
  unwinder_.reset();  // its CFI cache and object list describe the old mappings
}

namespace {

/// What to tell the operator about a process stopped by SIGSTOP & co. (`at_start`: before
/// Polus did anything to it).
std::string stopped_message(pid_t pid, bool at_start) {
  const std::string n = std::to_string(pid);
  return "process " + n + (at_start ? " is stopped" : " was stopped while Polus worked on it") +
         " (SIGSTOP, or another stop signal: SIGTSTP, SIGTTIN, SIGTTOU); Polus runs code on one of its threads, which "
         "a stopped process cannot do. Continue it (kill -CONT " + n + ") and run the command again, or wait until "
         "whoever stopped it continues it" + (at_start ? "; nothing was changed" : "");
}

}  // namespace

void TargetContext::seize() {
  if (session_) return;
  // A stopped process stays stopped under PTRACE_SEIZE (its threads report group-stops): no
  // thread could be borrowed, and waiting for one would only end at the timeout.
  if (std::optional<TaskStatus> status = read_task_status(pid_); status && status->state == 'T') {
    throw Error(ErrorCode::kUnsafeToPatch, stopped_message(pid_, true));
  }
  if (std::optional<TaskStatus> status = read_task_status(pid_); status && status->shadow_stack) {
    // A call's `ret` to our stub and our rt_sigreturn frame carry no shadow-stack entries:
    // the thread would fault at the first return.
    throw Error(ErrorCode::kUnsafeToPatch, "process " + std::to_string(pid_) + " runs with CET shadow stacks "
                                           "(x86_Thread_features: shstk), which Polus cannot run code under yet; "
                                           "nothing was changed");
  }
  session_.emplace(PtraceSession::seize(pid_));
}

const LoadedObject& TargetContext::libc() const {
  for (const LoadedObject& object : symbols_.objects()) {
    if (basename_of(object.path).rfind("libc.so", 0) == 0) return object;
  }
  throw Error(ErrorCode::kLoadFailed, "process " + std::to_string(pid_) +
                                          " does not use the GNU C library (no libc.so mapped); Polus needs its "
                                          "dlopen to load code");
}

RemoteAddr TargetContext::libc_function(const std::string& name) {
  // Exports only: libc's full (debug) symbol table is not needed to call dlopen.
  std::vector<Symbol> found = symbols_.exported_functions(libc(), {name});
  if (found.empty()) {
    throw Error(ErrorCode::kSymbolNotFound, libc().path + " of process " + std::to_string(pid_) +
                                                " exports no function '" + name + "', which Polus calls to load code");
  }
  return found.front().address;
}

const std::vector<AddressRange>& TargetContext::lock_holding_ranges() {
  if (!lock_holding_ranges_.empty()) return lock_holding_ranges_;
  std::vector<AddressRange>& ranges = lock_holding_ranges_;
  for (const LoadedObject& object : symbols_.objects()) {
    if (basename_of(object.path).rfind("ld-", 0) == 0) {
      ranges.push_back({object.text_start, object.text_end, "the dynamic loader"});
    }
  }
  // A thread inside the agent's fault handler holds its sync lock or its items' locks, and
  // may be on the fast path: ending tracking on it would free the tables it is using. From
  // the maps, not the objects: the agent comes from a memfd, whose file a caller without
  // root cannot open (then it is no object of ours at all).
  for (const MappedRegion& region : symbols_.maps()) {
    if (region.executable && is_agent_mapping(region.path)) {
      ranges.push_back({region.start, region.end, "the Polus agent's write tracking"});
    }
  }
  // Their exported entry points, and the code they jump to: a thread deeper inside (e.g. in
  // _int_malloc) has the entry point's frame on its stack, which lock_holder() finds, unless
  // the entry point ended in a jump there (free ends in `jmp _int_free`) and left no frame.
  const std::vector<std::string_view> names(std::begin(kLockHoldingFunctions), std::end(kLockHoldingFunctions));
  const size_t first_libc_range = ranges.size();
  for (const Symbol& s : symbols_.exported_functions(libc(), names)) {
    if (s.size > 0) ranges.push_back({s.address.address(), s.address.address() + s.size, s.name});
  }
  add_tail_call_targets(ranges, first_libc_range, libc());
  return lock_holding_ranges_;
}

void TargetContext::add_tail_call_targets(std::vector<AddressRange>& ranges, size_t first, const LoadedObject& object) {
  const std::vector<uint64_t>& starts = symbols_.function_starts(object);
  if (starts.empty()) {
    spdlog::warn("{} has no .eh_frame_hdr table: code its malloc & co. jump to is not recognised as theirs", object.path);
    return;
  }
  constexpr size_t kMaxAdded = 256;  // glibc's allocator jumps to a handful of functions
  size_t added = 0;
  for (size_t next = first; next < ranges.size() && added < kMaxAdded; ++next) {
    const AddressRange range = ranges[next];
    std::vector<uint8_t> code(range.end - range.start);
    code.resize(memory_.read_bytes_fallible(RemoteAddr(range.start), code.data(), code.size()));
    for (uint64_t target : jump_targets_outside(code, range.start)) {
      if (target < object.text_start || target >= object.text_end) continue;
      if (std::any_of(ranges.begin(), ranges.end(), [&](const AddressRange& r) { return r.contains(target); })) continue;
      auto [start, end] = function_extent(starts, target);
      if (start == 0 || end - start > (1u << 20)) continue;
      spdlog::debug("{} jumps to {} ({}..{}): counted as {}", range.what, hex(target), hex(start), hex(end), range.what);
      ranges.push_back({start, end, range.what});
      ++added;
    }
  }
}

std::optional<RangeHit> TargetContext::lock_holder(const ThreadSnapshot& thread) {
  return lock_holder(thread, lock_holding_ranges());
}

std::optional<RangeHit> TargetContext::lock_holder(const ThreadSnapshot& thread, const std::vector<AddressRange>& ranges) {
  if (!unwinder_) unwinder_ = std::make_unique<Unwinder>(symbols_, pid_);
  return thread_inside(thread, ranges, *unwinder_, memory_, symbols_);
}

std::string TargetContext::describe_hit(pid_t tid, const RangeHit& hit) {
  return "thread " + std::to_string(tid) + (hit.certain ? " is inside " : " may be inside ") + hit.range->what + " (" +
         hit.detail + ")";
}

pid_t TargetContext::stop_thread_safe_to_borrow() {
  // Why the last candidate was passed over, and what waiting longer could change.
  std::string last_reason;
  std::string advice;
  for (;;) {
    session_->poll_events();
    std::vector<pid_t> tids = session_->thread_ids();
    if (tids.empty() || ::kill(pid_, 0) != 0) {
      throw Error(ErrorCode::kTargetDied, "process " + std::to_string(pid_) + " exited while Polus held it");
    }
    // Prefer threads other than the main one: the main thread is often the one a
    // signal-driven or event-loop target needs most.
    std::stable_partition(tids.begin(), tids.end(), [&](pid_t t) { return t != pid_; });
    size_t group_stopped = 0;
    for (pid_t tid : tids) {
      try {
        if (!session_->stop_thread(tid, Clock::now() + std::chrono::milliseconds(200))) continue;
      } catch (const Error& e) {
        if (e.code() != ErrorCode::kTimeout) throw;
        last_reason = "thread " + std::to_string(tid) + " did not stop (uninterruptible sleep?)";
        advice = "A longer --timeout helps only if it wakes.";
        continue;  // try the others; it stops (and is let go) whenever it can
      }
      const ThreadState& state = session_->thread(tid);
      // A thread stopped with a signal of its own gets it now rather than after our code ran:
      // a fault signal handled late could meet a handler that changed meanwhile.
      if (state.stop == StopKind::kGroupStop) {
        // Stopped by SIGSTOP & co. since we attached: it stays stopped (PTRACE_LISTEN).
        session_->resume_thread(tid);
        last_reason = stopped_message(pid_, false);
        advice.clear();
        ++group_stopped;
        continue;
      }
      if (state.stop == StopKind::kEvent || (state.stop == StopKind::kSignal && state.stop_signal != 0)) {
        session_->resume_thread(tid);
        continue;
      }
      // A fault already queued for it would be delivered inside our code.
      if (has_pending_fault(pid_, tid)) {
        last_reason = "thread " + std::to_string(tid) + " has a fault signal pending";
        advice = "It is delivered once the thread runs.";
        session_->resume_thread(tid);
        continue;
      }
      ThreadSnapshot snap = snapshot_thread(memory_, symbols_.maps(), tid, session_->get_regs(tid));
      if (!snap.stack_complete) {
        last_reason = "the stack of thread " + std::to_string(tid) + " (sp " + hex(snap.sp) +
                      ") is not in a readable mapping or is larger than 8 MiB";
        advice = "Polus cannot tell what such a thread holds.";
        session_->resume_thread(tid);
        continue;
      }
      std::optional<RangeHit> hit = lock_holder(snap);
      if (!hit) {
        spdlog::debug("borrowing thread {} (pc {})", tid, hex(snap.pc));
        return tid;
      }
      last_reason = describe_hit(tid, *hit);
      advice = hit->certain ? "Its frames showed it really there; a longer --timeout waits longer for a moment "
                              "when no thread is."
                            : "Retrying does not help while that word stays where it is, as it does on the stack "
                              "of a thread that waits.";
      session_->resume_thread(tid);
    }
    // Every thread in a group-stop: the process is stopped, and stays so until continued.
    if (group_stopped == tids.size()) throw Error(ErrorCode::kUnsafeToPatch, last_reason);
    if (int sig = honour_stop_requests_ ? stop_requested() : 0) {
      throw Error(ErrorCode::kInterrupted, "stopped by " + std::string(strsignal(sig)) +
                                               " while looking for a thread to borrow; target unchanged");
    }
    if (Clock::now() >= deadline_) {
      if (last_reason.empty()) {
        throw Error(ErrorCode::kTimeout, "no thread of process " + std::to_string(pid_) +
                                             " could be stopped for Polus to run code on (threads kept exiting or "
                                             "stopped with signals of their own); the target is unchanged, try again");
      }
      if (advice.empty()) throw Error(ErrorCode::kUnsafeToPatch, last_reason);  // stopped
      throw Error(ErrorCode::kTimeout, "no thread of process " + std::to_string(pid_) +
                                           " reached a point where it can safely run code: " + last_reason +
                                           "; the target is unchanged. " + advice);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

BorrowedThread TargetContext::borrow_safe_thread() {
  const pid_t tid = stop_thread_safe_to_borrow();
  session_->detach_all_except(tid);
  return borrow(tid);
}

BorrowedThread TargetContext::borrow(pid_t tid) {
  return BorrowedThread(*session_, memory_, tid, arena_, [this] { return bootstrap_entries(); });
}

uint64_t TargetContext::pause_when_free(const PauseRequest& request) {
  const auto first_attempt = Clock::now();
  for (;;) {
    pid_t keep = request.prepare();
    std::string reason;
    {
      Pause pause(*session_);
      reason = request.why_busy();
      if (reason.empty()) {
        request.act(pause);
        return pause.end();
      }
      // Retry later; the kept thread (a borrower found safe) stays stopped where it is.
      pause.end(request.release_between_attempts ? 0 : keep);
    }
    if (request.release_between_attempts) release();
    if (int sig = honour_stop_requests_ ? stop_requested() : 0) {
      throw Error(ErrorCode::kInterrupted, request.giving_up + ": stopped by " + strsignal(sig) +
                                               " while waiting for a safe moment (" + reason + "); target unchanged");
    }
    if (Clock::now() >= deadline_) {
      throw Error(ErrorCode::kUnsafeToPatch,
                  request.giving_up + ": " + reason + "; gave up after " +
                      std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - first_attempt).count()) +
                      " ms, target unchanged");
    }
    spdlog::debug("{}: {}; retrying", request.giving_up, reason);
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

const BootstrapEntries& TargetContext::bootstrap_entries() {
  if (bootstrap_) return *bootstrap_;
  // glibc's sa_restorer for rt_sigaction: `mov $15,%rax; syscall` (sysdeps/unix/sysv/linux/
  // x86_64/libc_sigaction.c, RESTORE). Any copy of these bytes would do as well.
  constexpr uint8_t kRestorer[] = {0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05};
  const LoadedObject& c = libc();
  std::vector<uint8_t> chunk(64 * 1024);
  for (uint64_t at = c.text_start; at < c.text_end; at += chunk.size() - sizeof kRestorer) {
    size_t got = memory_.read_bytes_fallible(RemoteAddr(at), chunk.data(), std::min<uint64_t>(chunk.size(), c.text_end - at));
    if (got == 0 && memory_.target_gone()) {
      throw Error(ErrorCode::kTargetDied, "process " + std::to_string(pid_) + " exited while Polus held it");
    }
    auto found = std::search(chunk.begin(), chunk.begin() + static_cast<long>(got), std::begin(kRestorer), std::end(kRestorer));
    if (found != chunk.begin() + static_cast<long>(got)) {
      bootstrap_ = BootstrapEntries{libc_function("mmap"), libc_function("munmap"),
                                    RemoteAddr(at + static_cast<uint64_t>(found - chunk.begin()))};
      return *bootstrap_;
    }
    if (got < chunk.size()) break;
  }
  throw Error(ErrorCode::kLoadFailed, c.path + " has no rt_sigreturn restorer (__restore_rt); Polus cannot run "
                                      "code in process " + std::to_string(pid_) + " safely");
}

std::vector<ThreadSnapshot> TargetContext::snapshot_threads(bool with_stacks) {
  std::vector<ThreadSnapshot> snaps;
  std::vector<MappedRegion> maps = with_stacks ? read_process_maps(pid_) : std::vector<MappedRegion>{};
  for (pid_t tid : session_->thread_ids()) {
    user_regs_struct regs = session_->get_regs(tid);
    if (with_stacks) {
      snaps.push_back(snapshot_thread(memory_, maps, tid, regs));
    } else {
      snaps.push_back(ThreadSnapshot{.tid = tid, .pc = regs.rip, .sp = regs.rsp, .stack_words = {}, .stack_complete = true, .regs = regs});
    }
  }
  return snaps;
}

}  // namespace polus
