#include "update/trap_commit.h"

#include <signal.h>
#include <sys/syscall.h>

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
// linux/membarrier.h
constexpr uint64_t kMembarrierSyncCore = 1u << 5;  // MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE
constexpr uint64_t kSigtrapBit = 1ull << (SIGTRAP - 1);

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
      sync_cores();
      part("int3 written at every site, cores serialised");
      check_every_thread();
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
    sync_cores();
    for (SiteWrite& w : writes_) memory_.write_bytes(RemoteAddr(w.site), w.bytes.data(), 1);
    on_written();
    sync_cores();
    clear_entries();
    part("jumps written (tail, barrier, first byte, barrier), entries cleared");
    cost_.total_ns = elapsed_ns(started_);
    return cost_;
  }

 private:
  void part(const char* what) {
    step_ = what;
    auto now = Clock::now();
    cost_.parts.push_back({what, static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(now - mark_).count())});
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

  /// Stops `tid` for a look, returning false if it exited. Counts the time it is held.
  bool stop(pid_t tid) {
    held_since_ = Clock::now();
    return session_.stop_thread(tid, Clock::now() + std::chrono::milliseconds(200));
  }
  void resume(pid_t tid) {
    session_.resume_thread(tid);
    uint64_t held = elapsed_ns(held_since_);
    if (held > cost_.longest_hold_ns) {
      cost_.longest_hold_ns = held;
      spdlog::trace("trap commit: thread {} held {} us ({})", tid, held / 1000, step_);
    }
  }

  /// membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE) made by one of the target's threads:
  /// every thread of it runs a core-serialising instruction before it next runs user code, so
  /// none executes bytes it fetched before the write (Intel SDM vol. 3, 8.1.3, cross-modifying
  /// code). Any thread stopped cleanly will do; it is held only for the call.
  void sync_cores() {
    for (int round = 0; round < 1000; ++round) {
      session_.poll_events();
      for (pid_t tid : session_.thread_ids()) {
        if (!stop(tid)) continue;
        const ThreadState& state = session_.thread(tid);
        std::optional<TaskStatus> status = read_task_status(target_.pid(), tid);
        // A thread with a signal to take (our int3's SIGTRAP among them) must take it first.
        if (state.stop != StopKind::kInterrupt || !status || (status->pending & kSigtrapBit)) {
          resume(tid);
          continue;
        }
        int64_t rc = 0;
        {
          BorrowedThread thread = target_.borrow(tid);
          rc = thread.syscall(SYS_membarrier, {kMembarrierSyncCore, 0, 0});
        }
        resume(tid);
        if (rc != 0) throw Error(ErrorCode::kInternal, "membarrier(SYNC_CORE) failed in the target: " + std::string(strerror(static_cast<int>(-rc))));
        return;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    throw Error(ErrorCode::kTimeout, "no thread of process " + std::to_string(target_.pid()) +
                                         " could be stopped cleanly to serialise the cores");
  }

  /// force_sig(SIGTRAP) on a thread that blocks it resets the handler and kills the process
  /// (kernel/signal.c, force_sig_info_to_task): every thread gets SIGTRAP unblocked before the
  /// first int3, threads born meanwhile too (a new thread inherits its creator's mask).
  void unblock_sigtrap_everywhere() {
    std::set<pid_t> done;
    for (bool found = true; found;) {
      found = false;
      session_.poll_events();
      for (pid_t tid : session_.thread_ids()) {
        if (!done.insert(tid).second) continue;
        found = true;
        if (!stop(tid)) continue;
        if (std::optional<uint64_t> mask = session_.signal_mask(tid); mask && (*mask & kSigtrapBit)) {
          session_.set_signal_mask(tid, *mask & ~kSigtrapBit);
        }
        resume(tid);
      }
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
      try {
        sync_cores();
      } catch (const std::exception& e) {
        spdlog::warn("could not serialise the cores after taking the int3s out: {}", e.what());
      }
      clear_entries();
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
      session_.poll_events();
      for (pid_t tid : session_.thread_ids()) {
        if (clean.count(tid)) continue;
        if (!stop(tid)) continue;  // exited
        ++cost_.threads_checked;
        ThreadSnapshot snap = snapshot_thread(memory_, maps, tid, session_.get_regs(tid));
        if (std::optional<uint64_t> mask = session_.signal_mask(tid); mask && (*mask & kSigtrapBit)) {
          session_.set_signal_mask(tid, *mask & ~kSigtrapBit);  // blocked again since the first pass
        }
        std::string why = busy_reason_of(snap);
        resume(tid);
        if (why.empty()) {
          clean.insert(tid);
        } else {
          reason = why;
          pending = true;
          ++cost_.rechecks;
        }
      }
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
  Clock::time_point started_, mark_, held_since_;
  const char* step_ = "start";
};

}  // namespace

void arm_trap_sites(BorrowedThread& thread, const AgentLocation& agent) {
  if (!agent.arm_traps) throw TrapsUnavailable("the agent in the target has no trap sites");
  auto rc = static_cast<int64_t>(thread.call(agent.arm_traps, {}));
  if (rc != 0) {
    throw TrapsUnavailable("the agent could not arm trap sites (" + std::string(strerror(static_cast<int>(-rc))) +
                           "; membarrier SYNC_CORE needs Linux 4.16)");
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
