#include "update/data_update.h"

#include "update/abandon.h"
#include "update/engine_internal.h"

#include <errno.h>
#include <signal.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <thread>

#include <spdlog/spdlog.h>

#include "polus/error.h"
#include "common/format.h"
#include "polus/stop_request.h"
#include "process/proc_files.h"
#include "binary/unwinder.h"

namespace polus {

namespace {

uint64_t runtime(uint64_t link_address, uint64_t bias) { return link_address ? link_address + bias : 0; }

/// The functions on side `side` that use data item `data_index` (F2D, plus D2F read backwards).
std::set<uint32_t> functions_using(const PatchDescription& patch, uint32_t data_index) {
  std::set<uint32_t> result;
  for (const auto& [fn, data] : patch.mappings_of(POLUS_MAP_F2D)) {
    if (data == data_index) result.insert(fn);
  }
  for (const auto& [data, fn] : patch.mappings_of(POLUS_MAP_D2F)) {
    if (data == data_index) result.insert(fn);
  }
  return result;
}

/// The size of a patch function without a dynamic symbol (a static one), from .symtab — of
/// the bytes that were validated and loaded, not of whatever file is at the path now.
uint64_t new_function_size(const PatchDescription& patch, uint64_t link_address) {
  if (!patch.bytes) return 0;
  for (const Symbol& s : read_elf_symbols(*patch.bytes, patch.path)) {
    if (s.address.address() == link_address && s.size) return s.size;
  }
  return 0;
}

}  // namespace

DataPlan plan_data_update(const PatchDescription& patch, const ProcessSymbols& symbols, uint64_t patch_bias,
                          uint32_t direction) {
  DataPlan plan;
  std::set<uint32_t> watched_functions;
  for (const auto& [old_index, new_index] : patch.mappings_of(POLUS_MAP_DATA)) {
    const PatchData& old_item = patch.data[old_index];
    const PatchData& new_item = patch.data[new_index];
    const uint32_t flags = old_item.flags | new_item.flags;
    if (flags & POLUS_DATA_READ_ONLY) continue;
    uint32_t retiring = direction == POLUS_UPDATE_APPLY ? old_index : new_index;
    for (uint32_t fn : functions_using(patch, retiring)) watched_functions.insert(fn);
    plan.has_heap_roots = plan.has_heap_roots || (flags & POLUS_DATA_HEAP_ROOT);
    if (flags & POLUS_DATA_HEAP_ROOT) continue;  // its nodes are registered by a callback
    Symbol symbol = symbols.resolve(old_item.name, SymbolKind::kData);
    TrackedPair pair;
    pair.old_index = old_index;
    pair.new_index = new_index;
    pair.old_name = symbol.qualified_name();
    pair.new_name = new_item.name;
    pair.old_address = symbol.address.address();
    pair.old_size = old_item.size ? old_item.size : symbol.size;
    if (pair.old_size == 0) {
      throw Error(ErrorCode::kPatchMalformed, "patch " + patch.name + ": the size of '" + old_item.name +
                                                  "' is unknown (its symbol has size 0); give it in the patch");
    }
    pair.new_address = runtime(new_item.address, patch_bias);
    pair.new_size = new_item.size;
    pair.old_post_sync = runtime(old_item.post_sync, patch_bias);
    pair.old_pre_sync = runtime(old_item.pre_sync, patch_bias);
    pair.new_post_sync = runtime(new_item.post_sync, patch_bias);
    pair.new_pre_sync = runtime(new_item.pre_sync, patch_bias);
    pair.new_writes_notified = (new_item.flags & POLUS_DATA_WRITES_NOTIFIED) != 0;
    plan.pairs.push_back(pair);
  }
  for (uint32_t index : watched_functions) {
    const PatchFunction& f = patch.functions[index];
    polus_watched_function w{};
    w.function_index = index;
    if (f.side == POLUS_OLD) {
      Symbol symbol = symbols.resolve(f.name, SymbolKind::kFunction);
      w.start = symbol.address.address();
      w.end = w.start + std::max<uint64_t>(symbol.size, 1);
      copy_name(w.name, symbol.qualified_name());
    } else {
      uint64_t size = f.size ? f.size : new_function_size(patch, f.address);
      if (size == 0) {
        throw Error(ErrorCode::kPatchMalformed, "patch " + patch.name + ": the size of new function '" + f.name +
                                                    "' is unknown (no symbol); build the patch with its symbol table");
      }
      w.start = f.address + patch_bias;
      w.end = w.start + size;
      copy_name(w.name, f.name);
    }
    plan.watched.push_back(w);
  }
  return plan;
}

void install_tracked_items(BorrowedThread& thread, ProcessMemory& memory, const AgentLocation& agent,
                           const DataPlan& plan) {
  if (!agent.sync_begin) {
    throw Error(ErrorCode::kLoadFailed, "the Polus agent in the target (" + agent.path +
                                            ") cannot track data writes; it predates data updates");
  }
  uint32_t count = static_cast<uint32_t>(plan.pairs.size() * 2);
  // Room for heap pairs a pre-update callback registers too (the agent grows it if needed).
  uint32_t capacity = std::max<uint32_t>(count, 64);
  uint64_t table = thread.call(agent.sync_reserve, {capacity});
  if (table == 0 || static_cast<int64_t>(table) < 0) {
    throw Error(ErrorCode::kLoadFailed, "the agent could not allocate its table of tracked data");
  }
  std::vector<polus_tracked_item> items;
  for (const TrackedPair& p : plan.pairs) {
    uint32_t at = static_cast<uint32_t>(items.size());
    items.push_back({p.old_address, p.old_size, p.old_post_sync, p.old_pre_sync, at + 1, POLUS_OLD, 0, 0});
    const uint32_t new_side = POLUS_NEW | (p.new_writes_notified ? POLUS_ITEM_WRITES_NOTIFIED : 0u);
    items.push_back({p.new_address, p.new_size, p.new_post_sync, p.new_pre_sync, at, new_side, 0, 0});
  }
  memory.write_bytes(RemoteAddr(table), items.data(), items.size() * sizeof(polus_tracked_item));
  auto sync_field = RemoteAddr(agent.registry.address() + offsetof(polus_agent_registry, sync));
  memory.write(RemotePtr<uint32_t>(sync_field.address() + offsetof(polus_sync_state, item_count)), count);
  // What write tracking needs that does not need the target stopped (the page table, read
  // from /proc/self/maps; shadows; the memfds of the pages' writable views), now, so that the
  // commit pause's sync_begin only protects and switches mappings. A failure here is not one:
  // sync_begin does it all again, and reports.
  if (agent.sync_prepare.address()) {
    int64_t prepared = static_cast<int32_t>(thread.call(agent.sync_prepare, {}));
    if (prepared != 0) spdlog::debug("the agent could not prepare write tracking ahead (error {})", -prepared);
  }
}

void initialize_counterparts(BorrowedThread& thread, ProcessMemory& memory, const DataPlan& plan, uint32_t direction) {
  constexpr uint64_t kRestoreLimit = 1 << 20;
  for (const TrackedPair& p : plan.pairs) {
    const bool apply = direction == POLUS_UPDATE_APPLY;
    const uint64_t sync = apply ? p.old_post_sync : p.new_post_sync;
    if (!sync) continue;
    const uint64_t written = apply ? p.old_address : p.new_address;
    const uint64_t counterpart = apply ? p.new_address : p.old_address;
    const uint64_t counterpart_size = apply ? p.new_size : p.old_size;
    std::vector<uint8_t> before(counterpart_size <= kRestoreLimit ? counterpart_size : 0);
    if (!before.empty()) memory.read_bytes(RemoteAddr(counterpart), before.data(), before.size());
    polus_sync_args args{reinterpret_cast<void*>(written), reinterpret_cast<void*>(counterpart), 0,
                         static_cast<uint64_t>(thread.tid())};
    // Half a conversion must not stay behind: the counterpart as it was (every other thread
    // is stopped).
    auto fault_record = [&](int signal, uint64_t pc, uint32_t flags) {
      if (!before.empty()) memory.write_bytes(RemoteAddr(counterpart), before.data(), before.size());
      polus_sync_fault record{};
      record.function = sync;
      record.item_address = written;
      record.pc = pc;
      record.tid = static_cast<uint64_t>(thread.tid());
      record.side = apply ? POLUS_OLD : POLUS_NEW;
      record.kind = POLUS_SYNC_FAULT_POST;
      record.signal = static_cast<uint32_t>(signal);
      record.flags = flags | (before.empty() ? 0 : POLUS_SYNC_FAULT_RESTORED);
      return SyncFunctionFault(record);
    };
    try {
      thread.call_with_block(RemoteAddr(sync), args);
    } catch (const CodeFault& fault) {
      throw fault_record(fault.signal(), fault.pc(), 0);
    } catch (const Error& e) {
      // It did not return: the call was given up, the thread put back as it was (it held
      // nothing of the agent's: the engine called it directly).
      if (e.code() != ErrorCode::kTimeout) throw;
      throw fault_record(0, 0, POLUS_SYNC_FAULT_TIMED_OUT);
    }
  }
}

std::string mask_reset_pending(PtraceSession& session) {
  constexpr uint64_t kGlibcInternal = (1ull << 31) | (1ull << 32);  // signals 32 and 33
  for (pid_t tid : session.thread_ids()) {
    std::optional<uint64_t> mask = session.signal_mask(tid);
    if (mask && (*mask & kGlibcInternal) == kGlibcInternal) {
      return "thread " + std::to_string(tid) + " is being created (or is inside glibc's all-signals-blocked "
             "section), so its signal mask is about to be reset";
    }
  }
  return "";
}

void unblock_fault_signals(PtraceSession& session, bool since_start) {
  constexpr uint64_t kFaultSignals = (1ull << (SIGSEGV - 1)) | (1ull << (SIGTRAP - 1));
  std::vector<pid_t> changed = session.unblock_signals(kFaultSignals);
  if (!changed.empty() && since_start) {
    std::string who;
    for (pid_t tid : changed) {
      who += (who.empty() ? "" : ", ") + std::to_string(tid) + " (" + task_name(session.pid(), tid) + ")";
    }
    spdlog::warn("process {}: thread(s) {} blocked SIGSEGV/SIGTRAP while the update synced (born since, or "
                 "blocked again); unblocked them — a tracked write in that state would have killed the process",
                 session.pid(), who);
  } else if (!changed.empty()) {
    spdlog::info("process {}: {} thread(s) blocked SIGSEGV/SIGTRAP; unblocked them so write tracking can handle "
                 "their faults (a blocked fault signal would kill the process)",
                 session.pid(), changed.size());
  }
}

void begin_sync(BorrowedThread& thread, const AgentLocation& agent) {
  int64_t result = static_cast<int32_t>(thread.call(agent.sync_begin, {}));
  if (result != 0) {
    throw Error(ErrorCode::kLoadFailed, "the agent could not start write tracking (error " + std::to_string(-result) + ")");
  }
}

bool end_sync(BorrowedThread& thread, const AgentLocation& agent) {
  int64_t result = static_cast<int32_t>(thread.call(agent.sync_end, {}));
  if (result == -ECANCELED) return false;  // a sync function faulted meanwhile
  if (result == 1) {
    spdlog::info("write tracking ended; the agent keeps its SIGSEGV handler in front (passing through) because "
                 "faults kept arriving");
  } else if (result != 0) {
    throw Error(ErrorCode::kInternal, "the agent could not end write tracking (error " + std::to_string(-result) + ")");
  }
  return true;
}

void watch_sync_functions(BorrowedThread& thread, SyncWatchdog& watchdog) {
  if (!watchdog.available()) return;
  thread.set_rescue([&watchdog](pid_t tid, int signal) { return watchdog.rescue(tid, signal); },
                    [&watchdog](pid_t tid) { return watchdog.stuck(tid); });
}

int run_callbacks(BorrowedThread& thread, const PatchDescription& patch, uint64_t patch_bias, uint32_t kind,
                  uint32_t index, uint64_t thread_id, uint32_t direction, const AgentLocation* agent) {
  const bool fenced = agent && agent->run_callback.address() && thread.passes_faults();
  for (const polus_callback& cb : patch.callbacks) {
    if (cb.kind != kind) continue;
    polus_callback_args args{kind, index, thread_id, direction == POLUS_UPDATE_ROLLBACK ? 1u : 0u, 0};
    uint64_t fn = reinterpret_cast<uint64_t>(cb.fn) + patch_bias;
    if (!fenced) {
      int result = static_cast<int32_t>(thread.call_with_block(RemoteAddr(fn), args));
      if (result != 0) return result;
      continue;
    }
    const int64_t result = static_cast<int64_t>(thread.call_with_block_after(agent->run_callback, fn, args));
    if (result == POLUS_CALLBACK_FAULTED) {
      const polus_agent_registry registry = thread.memory().read(agent->registry);
      const std::string where(registry.last_error, strnlen(registry.last_error, sizeof registry.last_error));
      throw CodeFault("the patch's callback at " + hex(fn) + " faulted (" + where +
                          ") while write tracking was on; the agent's fence stopped it there: the signal was not "
                          "delivered and the thread went on",
                      0, fn);
    }
    if (static_cast<int32_t>(result) != 0) return static_cast<int32_t>(result);
  }
  return 0;
}

namespace {

struct Inspection {
  std::vector<polus_holder> holders;
  uint32_t scanned_frames = 0;
};

/// With every thread stopped: which threads have a frame in a watched function.
Inspection inspect_stacks(TargetContext& target, Unwinder& unwinder, const std::vector<polus_watched_function>& watched) {
  Inspection result;
  std::vector<AddressRange> watched_ranges;
  for (const polus_watched_function& w : watched) watched_ranges.push_back({w.start, w.end, w.name});
  std::vector<MappedRegion> maps;
  for (pid_t tid : target.session().thread_ids()) {
    user_regs_struct regs = target.session().get_regs(tid);
    UnwindResult stack = unwinder.unwind(target.memory(), regs);
    std::set<uint64_t> seen;
    if (!stack.complete) {
      // The walk stopped early: what it did not see may still run a watched function. Fall
      // back to the conservative answer, every word of the live stack.
      if (maps.empty()) maps = read_process_maps(target.pid());
      ThreadSnapshot snap = snapshot_thread(target.memory(), maps, tid, regs);
      if (const AddressRange* hit = thread_touches(snap, watched_ranges); hit && result.holders.size() < POLUS_MAX_HOLDERS) {
        result.holders.push_back({static_cast<uint64_t>(tid), hit->start});
        seen.insert(hit->start);
      }
      ++result.scanned_frames;
    }
    for (size_t i = 0; i < stack.frames.size(); ++i) {
      const StackFrame& frame = stack.frames[i];
      if (frame.from_scan) ++result.scanned_frames;
      // A return address points after the call: look up the call itself.
      uint64_t pc = i == 0 ? frame.pc : frame.pc - 1;
      for (const polus_watched_function& w : watched) {
        if (pc >= w.start && pc < w.end && seen.insert(w.start).second && result.holders.size() < POLUS_MAX_HOLDERS) {
          result.holders.push_back({static_cast<uint64_t>(tid), w.start});
        }
      }
    }
  }
  return result;
}

void write_progress(ProcessMemory& memory, const PatchRecordView& record) {
  memory.write(record.address, record.header);
  if (!record.watched.empty()) {
    memory.write_bytes(record.watched_at(), record.watched.data(), record.watched.size() * sizeof(polus_watched_function));
  }
  if (!record.holders.empty()) {
    memory.write_bytes(record.holders_at(), record.holders.data(), record.holders.size() * sizeof(polus_holder));
  }
}

}  // namespace

namespace {

/// Who still holds the update, named for the operator (thread names read now, after the pause).
void report_progress(pid_t pid, const PatchRecordView& record, Clock::time_point began,
                     const std::function<void(const SyncProgress&)>& progress) {
  SyncProgress p;
  p.pid = pid;
  p.patch = std::string(record.header.name, strnlen(record.header.name, sizeof record.header.name));
  p.direction = record.header.direction == POLUS_UPDATE_ROLLBACK ? "rollback" : "apply";
  p.elapsed_ms = elapsed_ns(began) / 1000000;
  p.inspections = record.header.inspections;
  for (const polus_holder& h : record.holders) {
    auto w = std::find_if(record.watched.begin(), record.watched.end(),
                          [&](const polus_watched_function& x) { return x.start == h.function; });
    p.holders.push_back({static_cast<pid_t>(h.tid), task_name(pid, static_cast<pid_t>(h.tid)),
                         w != record.watched.end() ? std::string(w->name, strnlen(w->name, sizeof w->name)) : hex(h.function)});
  }
  try {
    progress(p);
  } catch (const std::exception& e) {
    spdlog::debug("the sync progress callback failed: {}", e.what());  // showing progress never stops the update
  }
}

}  // namespace

SyncOutcome drive_sync_to_end(TargetContext& target, const AgentLocation& agent, PatchRecordView& record,
                              const PatchDescription& patch, uint64_t patch_bias, Clock::time_point until,
                              uint64_t& max_pause_ns, const std::function<void(const SyncProgress&)>& progress) {
  const Clock::time_point began = Clock::now();
  // Fresh symbols: the agent and the patch (and their CFI) may have been loaded after this
  // operation began.
  target.reload_symbols();
  // The sync phase has its own time budget, whatever the apply or rollback already used.
  target.extend_deadline(until - Clock::now());
  Unwinder unwinder(target.symbols(), target.pid());
  const uint32_t direction = record.header.direction;
  SyncWatchdog watchdog(target, agent, kSyncFunctionLimit);
  for (;;) {
    target.seize();
    Inspection inspection;
    {
      Pause pause(target.session());
      unblock_fault_signals(target.session(), /*since_start=*/true);  // threads born since the last inspection
      inspection = inspect_stacks(target, unwinder, record.watched);
      // A sync function that has not returned for a second is sent out of its fence; the
      // agent records it as faulted, and the next inspection abandons the update.
      watchdog.rescue_stuck();
      max_pause_ns = std::max(max_pause_ns, pause.end());
    }
    // A sync function faulted (its fence in the agent recorded it): no more patch code, no
    // commit; the caller abandons the update. While it does, later faults change nothing.
    const polus_sync_state sync = read_sync_state(target.memory(), agent);
    if (fault_pending(sync)) {
      target.release();
      return SyncOutcome::kFaulted;
    }
    const bool abandoning = sync.abandoning != 0;

    // What changed since the last inspection: threads that left, functions and data now unused.
    std::vector<polus_holder> threads_left;
    for (const polus_holder& before : record.holders) {
      bool still = std::any_of(inspection.holders.begin(), inspection.holders.end(), [&](const polus_holder& h) {
        return h.tid == before.tid && h.function == before.function;
      });
      if (!still) threads_left.push_back(before);
    }
    auto left = [&](const polus_watched_function& w) { return (w.flags & POLUS_WATCH_LEFT) != 0; };
    auto data_unused = [&](uint32_t data_index) {
      std::set<uint32_t> users = functions_using(patch, data_index);
      return std::all_of(record.watched.begin(), record.watched.end(),
                         [&](const polus_watched_function& w) { return !users.count(w.function_index) || left(w); });
    };
    std::vector<uint32_t> retiring_data;
    for (const auto& [old_index, new_index] : patch.mappings_of(POLUS_MAP_DATA)) {
      retiring_data.push_back(direction == POLUS_UPDATE_APPLY ? old_index : new_index);
    }
    std::vector<uint32_t> data_before;
    for (uint32_t d : retiring_data) {
      if (data_unused(d)) data_before.push_back(d);
    }
    std::vector<uint32_t> functions_left;
    for (polus_watched_function& w : record.watched) {
      bool held = std::any_of(inspection.holders.begin(), inspection.holders.end(),
                              [&](const polus_holder& h) { return h.function == w.start; });
      if (!held && !left(w)) {
        w.flags |= POLUS_WATCH_LEFT;
        functions_left.push_back(w.function_index);
      }
    }
    std::vector<uint32_t> data_done;
    for (uint32_t d : retiring_data) {
      if (data_unused(d) && std::find(data_before.begin(), data_before.end(), d) == data_before.end()) {
        data_done.push_back(d);
      }
    }
    const bool done = inspection.holders.empty();
    record.holders = inspection.holders;
    record.header.holder_count = static_cast<uint32_t>(record.holders.size());
    record.header.inspections++;
    record.header.unwind_fallbacks = inspection.scanned_frames;
    write_progress(target.memory(), record);

    const bool has_callbacks = !patch.callbacks.empty() && !abandoning;
    bool faulted = false;
    if (done || (has_callbacks && (!threads_left.empty() || !functions_left.empty() || !data_done.empty()))) {
      BorrowedThread thread = target.borrow_safe_thread();
      thread.set_pass_faults(true);
      watch_sync_functions(thread, watchdog);
      auto fire = [&](uint32_t kind, uint32_t index, uint64_t about_thread) {
        if (!has_callbacks) return;
        try {
          run_callbacks(thread, patch, patch_bias, kind, index, about_thread, direction, &agent);
        } catch (const CodeFault& e) {
          // Contained by the agent's fence: the target goes on, and so does the update.
          spdlog::warn("process {}: {}", target.pid(), e.what());
        }
      };
      for (const polus_holder& h : threads_left) {
        auto w = std::find_if(record.watched.begin(), record.watched.end(),
                              [&](const polus_watched_function& x) { return x.start == h.function; });
        if (w != record.watched.end()) fire(POLUS_CB_THREAD, w->function_index, h.tid);
      }
      for (uint32_t f : functions_left) fire(POLUS_CB_FUNCTION, f, 0);
      for (uint32_t d : data_done) fire(POLUS_CB_DATA, d, 0);
      if (done) {
        fire(POLUS_CB_POST_UPDATE, ~0u, 0);
        // The agent puts the target's own SIGSEGV handler back once no fault is pending; a
        // fault held in one of our signal-delivery-stops would not look pending, so let go
        // of every other thread first.
        target.session().detach_all_except(thread.tid());
        if (!end_sync(thread, agent)) faulted = true;  // a fault since the inspection: refused
      }
    }
    target.release();
    if (faulted) return SyncOutcome::kFaulted;
    if (done) return SyncOutcome::kDone;
    if (progress) report_progress(target.pid(), record, began, progress);
    if (Clock::now() >= until) return SyncOutcome::kPending;
    if (int sig = stop_requested()) {  // the update stays syncing, recorded; `finish` takes it on
      spdlog::warn("stopped by {} while the update syncs; it stays syncing", strsignal(sig));
      return SyncOutcome::kPending;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

}  // namespace polus
