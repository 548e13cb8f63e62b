#include "update/trap_commit.h"

#include <signal.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <set>
#include <thread>

#include <spdlog/spdlog.h>

#include "common/format.h"
#include "polus/stop_request.h"
#include "process/proc_files.h"
#include "process/process_maps.h"
#include "update/redirects.h"

namespace polus {

namespace {

constexpr uint8_t kInt3 = 0xcc;
constexpr uint64_t kSigtrapBit = 1ull << (SIGTRAP - 1);
// Threads stopped together for a look. Batches of 8 (each thread held about as long as the
// pause of an 8-thread target) were measured: the commit was hardly shorter, as most of its
// time is the look itself (registers, mask, stack), and the longest hold grew; one at a time.
constexpr size_t kBatch = 1;

RemotePtr<uint64_t> registry_word(const AgentLocation& agent, size_t offset) {
  return RemotePtr<uint64_t>(agent.registry.address() + offset);
}

RemotePtr<polus_trap_site> trap_slot(const AgentLocation& agent, uint32_t index) {
  return RemotePtr<polus_trap_site>(agent.registry.address() + offsetof(polus_agent_registry, traps) +
                                    index * sizeof(polus_trap_site));
}

/// Whether the byte at `site` is an int3 now.
bool holds_int3(ProcessMemory& memory, uint64_t site) {
  uint8_t byte = 0;
  return memory.read_bytes_fallible(RemoteAddr(site), &byte, 1) == 1 && byte == kInt3;
}

/// One jump as it is written: the site, its five bytes, what they replace, the slot before it.
struct SiteWrite {
  const TrapJump* jump = nullptr;
  uint64_t site = 0;
  std::vector<uint8_t> bytes;     // e9 rel32
  std::vector<uint8_t> original;  // the bytes they replace
  std::vector<JumpWrite> slots;   // trampoline slots written before the jump's tail
  uint32_t entry = 0;             // its index in registry.traps
  bool trapped = false;           // the int3 is written
};

class TrapCommit {
 public:
  TrapCommit(TargetContext& target, const AgentLocation& agent, uint64_t patch_id)
      : target_(target), session_(target.session()), memory_(target.memory()), agent_(agent), patch_id_(patch_id) {}

  TrapCommitCost run(pid_t armer, const std::vector<TrapJump>& jumps, const std::function<void()>& on_switch,
                     const std::function<void()>& on_written) {
    started_ = Clock::now();
    mark_ = started_;
    plan_writes(jumps);
    session_.attach_missing_threads();  // the threads let go while the load borrowed one
    if (armer && session_.has_thread(armer)) session_.resume_thread(armer);  // held since the load
    part("threads attached again");
    unblock_sigtrap_everywhere();
    part("SIGTRAP unblocked, one thread at a time");
    write_entries();
    try {
      for (SiteWrite& w : writes_) {
        memory_.write_bytes(RemoteAddr(w.site), &kInt3, 1);
        w.trapped = true;
      }
      part("int3 written at every site");
      check_every_thread();  // each thread stopped after the int3 was written: serialised too
      part("every thread checked, one at a time");
    } catch (...) {
      take_traps_out();
      throw;
    }
    // The commit point: from here on a thread at an int3 goes to the new function, and the
    // jumps are completed whatever happens (a failure now leaves int3s the agent follows, and
    // the record `applying`, which the next command undoes).
    on_switch();
    memory_.write(registry_word(agent_, offsetof(polus_agent_registry, trap_switched_patch)), patch_id_);
    for (SiteWrite& w : writes_) {
      for (const JumpWrite& slot : w.slots) memory_.write_bytes(RemoteAddr(slot.address), slot.bytes.data(), slot.bytes.size());
      memory_.write_bytes(RemoteAddr(w.site + 1), w.bytes.data() + 1, w.bytes.size() - 1);
    }
    part("the switch, trampoline slots and the jumps' last four bytes written");
    serialise_every_thread();
    part("every thread serialised, one at a time");
    // A processor that still sees an int3 traps; once the entry is cleared, the handler finds
    // the jump there and sends the thread to it (trap_sites.c).
    for (SiteWrite& w : writes_) memory_.write_bytes(RemoteAddr(w.site), w.bytes.data(), 1);
    on_written();
    clear_entries();
    part("the jumps' first bytes written, entries cleared");
    cost_.total_ns = elapsed_ns(started_);
    return cost_;
  }

 private:
  /// The step `what` is over: its length, and the longest hold of a thread in it.
  void part(const char* what) {
    auto now = Clock::now();
    cost_.parts.push_back({what, static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(now - mark_).count())});
    spdlog::debug("trap commit: {}: {} us, longest hold of a thread {} us", what, cost_.parts.back().ns / 1000,
                  step_longest_ns_ / 1000);
    step_longest_ns_ = 0;
    mark_ = now;
  }

  void plan_writes(const std::vector<TrapJump>& jumps) {
    polus_agent_registry reg = memory_.read(agent_.registry);
    uint32_t next = 0;
    for (const TrapJump& jump : jumps) {
      SiteWrite w;
      w.jump = &jump;
      for (JumpWrite& write : jump_writes(jump.plan->record)) {
        if (write.address == jump.plan->record.patch_site && write.bytes.size() == kJumpLength) {
          w.site = write.address;
          w.bytes = std::move(write.bytes);
          w.original = std::move(write.original);
        } else {
          w.slots.push_back(std::move(write));
        }
      }
      if (w.site == 0 || w.original.size() != kJumpLength || jump.before == 0) {
        throw TrapsUnavailable("redirect of " + std::string(jump.plan->record.old_name) + " is not a plain jump");
      }
      while (next < POLUS_MAX_TRAP_SITES && reg.traps[next].site != 0) ++next;
      if (next == POLUS_MAX_TRAP_SITES) throw TrapsUnavailable("the agent's table of trap sites is full");
      w.entry = next++;
      writes_.push_back(std::move(w));
    }
  }

  void note_hold(uint64_t held) {
    step_longest_ns_ = std::max(step_longest_ns_, held);
    cost_.longest_hold_ns = std::max(cost_.longest_hold_ns, held);
  }

  /// Runs `look` on every thread of the session not in `done`, kBatch at a time: a batch is
  /// stopped together, looked at and let go, and the next batch follows. A thread counts as
  /// held from the moment it is asked to stop (an upper bound, as the pause's length is). Threads born meanwhile are taken too.
  /// `look` returns whether the thread is done with.
  void in_batches(std::set<pid_t>& done, const std::function<bool(pid_t)>& look) {
    session_.poll_events();
    std::vector<pid_t> todo;
    for (pid_t tid : session_.thread_ids()) {
      if (!done.count(tid)) todo.push_back(tid);
    }
    for (size_t first = 0; first < todo.size(); first += kBatch) {
      std::vector<pid_t> batch(todo.begin() + static_cast<long>(first),
                               todo.begin() + static_cast<long>(std::min(todo.size(), first + kBatch)));
      const auto asked = Clock::now();
      std::vector<pid_t> stopped = session_.stop_threads(batch, step_deadline());
      const auto seen = Clock::now();
      std::vector<bool> finished(stopped.size());
      for (size_t i = 0; i < stopped.size(); ++i) finished[i] = look(stopped[i]);
      for (size_t i = 0; i < stopped.size(); ++i) {
        session_.resume_thread(stopped[i]);
        if (finished[i]) done.insert(stopped[i]);
      }
      note_hold(elapsed_ns(asked));
      cost_.longest_stopped_ns = std::max(cost_.longest_stopped_ns, elapsed_ns(seen));
      for (pid_t tid : batch) {
        if (std::find(stopped.begin(), stopped.end(), tid) == stopped.end()) done.insert(tid);  // exited
      }
      session_.poll_events();  // a SIGTRAP stop of a thread not in the batch is passed on at once
    }
  }

  /// Every thread goes through a ptrace-stop once, one at a time: it leaves the kernel again
  /// before it runs any more of its code, so it executes nothing it fetched before the write
  /// (the guarantee the pause relies on too; see "Serialising" in DESIGN.md).
  void serialise_every_thread() {
    std::set<pid_t> done;
    for (size_t before = SIZE_MAX; done.size() != before;) {
      before = done.size();
      in_batches(done, [](pid_t) { return true; });
    }
  }

  /// force_sig(SIGTRAP) on a thread that blocks it resets the handler and kills the process
  /// (kernel/signal.c, force_sig_info_to_task): every thread gets SIGTRAP unblocked before the
  /// first int3, threads born meanwhile too (a new thread inherits its creator's mask).
  void unblock_sigtrap_everywhere() {
    std::set<pid_t> done;
    for (size_t before = SIZE_MAX; done.size() != before;) {
      before = done.size();
      // Threads whose mask (SigBlk, read without stopping them) lets SIGTRAP through are left
      // running; a thread that blocks it later runs the same risk either way.
      session_.poll_events();
      for (pid_t tid : session_.thread_ids()) {
        std::optional<TaskStatus> status = read_task_status(target_.pid(), tid);
        if (!done.count(tid) && status && !(status->blocked & kSigtrapBit)) done.insert(tid);
      }
      in_batches(done, [&](pid_t tid) {
        if (std::optional<uint64_t> mask = session_.signal_mask(tid); mask && (*mask & kSigtrapBit)) {
          session_.set_signal_mask(tid, *mask & ~kSigtrapBit);
        }
        return true;
      });
    }
  }

  void write_entries() {
    for (const SiteWrite& w : writes_) {
      polus_trap_site entry{};
      entry.before = w.jump->before;
      entry.after = w.jump->plan->record.new_function;
      entry.patch_id = patch_id_;
      // The addresses first, the site last: the handler matches on the site alone.
      memory_.write(trap_slot(agent_, w.entry), entry);
      memory_.write(RemotePtr<uint64_t>(trap_slot(agent_, w.entry).address() + offsetof(polus_trap_site, site)), w.site);
    }
  }

  void clear_entries() {
    for (const SiteWrite& w : writes_) {
      memory_.write(RemotePtr<uint64_t>(trap_slot(agent_, w.entry).address() + offsetof(polus_trap_site, site)), uint64_t{0});
    }
  }

  /// The int3s out again (no thread went anywhere new: the switch was never made), then the
  /// entries: a trap still on its way finds the original byte and runs it.
  void take_traps_out() noexcept {
    try {
      for (const SiteWrite& w : writes_) {
        if (w.trapped) memory_.write_bytes(RemoteAddr(w.site), w.original.data(), 1);
      }
      clear_entries();  // a trap still on its way finds the original byte and runs it
    } catch (const std::exception& e) {
      spdlog::error("could not take the int3s of an abandoned commit out ({}); the agent keeps sending threads to "
                    "the original code, and the next command undoes the apply",
                    e.what());
    }
  }

  /// Why `snap` keeps the jumps from being completed now, or "".
  std::string busy_reason_of(const ThreadSnapshot& snap) const {
    for (const SiteWrite& w : writes_) {
      std::string reason = busy_reason(*w.jump->plan, snap);
      if (!reason.empty()) return reason;
    }
    return "";
  }

  /// Every thread, one at a time: not inside the bytes behind an int3, not on a slot this commit
  /// writes. Once the int3s are in place and the cores serialised, no thread can newly get
  /// there, so a thread found clean stays clean; one found in the way is looked at again.
  void check_every_thread() {
    std::set<pid_t> clean;
    std::string reason;
    const auto first = Clock::now();
    for (;;) {
      std::vector<MappedRegion> maps = read_process_maps(target_.pid());
      bool pending = false;
      in_batches(clean, [&](pid_t tid) {
        ++cost_.threads_checked;
        ThreadSnapshot snap = snapshot_thread(memory_, maps, tid, session_.get_regs(tid));
        if (std::optional<uint64_t> mask = session_.signal_mask(tid); mask && (*mask & kSigtrapBit)) {
          session_.set_signal_mask(tid, *mask & ~kSigtrapBit);  // blocked again since the first pass
        }
        std::string why = busy_reason_of(snap);
        if (why.empty()) return true;
        reason = why;
        pending = true;
        ++cost_.rechecks;
        return false;
      });
      if (!pending) {
        // Threads born during the pass were made by threads already clean or being looked at;
        // one more look at the list settles it.
        session_.poll_events();
        std::vector<pid_t> tids = session_.thread_ids();
        if (std::all_of(tids.begin(), tids.end(), [&](pid_t t) { return clean.count(t) != 0; })) return;
        continue;
      }
      if (int sig = stop_requested()) {
        throw Error(ErrorCode::kInterrupted, "cannot commit now: stopped by " + std::string(strsignal(sig)) +
                                                 " while waiting for a safe moment (" + reason + "); target unchanged");
      }
      if (Clock::now() >= target_.deadline()) {
        throw Error(ErrorCode::kUnsafeToPatch,
                    "cannot commit now: " + reason + "; gave up after " +
                        std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - first).count()) +
                        " ms, target unchanged");
      }
      std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
  }

  TargetContext& target_;
  PtraceSession& session_;
  ProcessMemory& memory_;
  const AgentLocation& agent_;
  uint64_t patch_id_;
  std::vector<SiteWrite> writes_;
  TrapCommitCost cost_;
  Clock::time_point started_, mark_;
  uint64_t step_longest_ns_ = 0;
};

}  // namespace

void arm_trap_sites(BorrowedThread& thread, const AgentLocation& agent) {
  if (!agent.arm_traps) throw TrapsUnavailable("the agent in the target has no trap sites");
  auto rc = static_cast<int64_t>(thread.call(agent.arm_traps, {}));
  if (rc != 0) {
    throw TrapsUnavailable("the agent could not put its SIGTRAP handler in place (" +
                           std::string(strerror(static_cast<int>(-rc))) + ")");
  }
}

std::string trap_sites_unavailable(const AgentLocation& agent, const polus_agent_registry& registry, size_t count) {
  if (!agent.arm_traps) return "the agent in the target has no trap sites";
  size_t free = 0;
  for (const polus_trap_site& t : registry.traps) free += t.site == 0;
  if (count > free) {
    return std::to_string(count) + " functions, and the agent has room for " + std::to_string(free) + " trap sites";
  }
  return "";
}

TrapCommitCost trap_commit(TargetContext& target, const AgentLocation& agent, uint64_t patch_id, pid_t armer,
                           const std::vector<TrapJump>& jumps, const std::function<void()>& on_switch,
                           const std::function<void()>& on_written) {
  return TrapCommit(target, agent, patch_id).run(armer, jumps, on_switch, on_written);
}

void clear_stale_trap_sites(ProcessMemory& memory, const AgentLocation& agent) {
  polus_agent_registry reg = memory.read(agent.registry);
  for (uint32_t k = 0; k < POLUS_MAX_TRAP_SITES; ++k) {
    uint64_t site = reg.traps[k].site;
    if (site == 0 || holds_int3(memory, site)) continue;
    spdlog::debug("clearing the entry of trap site {}: its commit is over", hex(site));
    memory.write(RemotePtr<uint64_t>(trap_slot(agent, k).address() + offsetof(polus_trap_site, site)), uint64_t{0});
  }
}

}  // namespace polus
