// Rolling back (paper §4.2.1: a rollback is an update run the other way, reusing the sync
// functions) and finishing updates left `syncing`.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstddef>
#include <optional>
#include <thread>

#include <spdlog/spdlog.h>

#include "update/abandon.h"
#include "update/data_update.h"
#include "update/engine_internal.h"
#include "polus/engine.h"
#include "polus/error.h"
#include "common/format.h"
#include "update/access_policy.h"
#include "update/audit.h"
#include "update/patch_file.h"
#include "update/patch_memfd.h"
#include "update/patch_trust.h"
#include "update/redirects.h"

namespace polus {

namespace {

/// The operation's view of the target's registry and newest patch.
struct RegistryContext {
  AgentLocation agent;
  RegistrySnapshot registry;
};

/// Drives the update of `record` (left syncing) to its end within this operation.
PatchInfo finish_in(TargetContext& target, RegistryContext& ctx, PatchRecordView& record, const EngineOptions& options);

RegistryContext open_registry(TargetContext& target, const char* nothing_message) {
  std::optional<AgentLocation> agent = locate_agent(target.pid(), target.symbols().maps());
  RegistryContext ctx;
  if (agent) ctx.registry = read_registry(target.memory(), *agent);
  if (!agent || ctx.registry.patches.empty()) {
    throw Error(ErrorCode::kNothingToRollBack, "process " + std::to_string(target.pid()) + " " + nothing_message);
  }
  ctx.agent = *agent;
  adopt_arenas(target.arena(), ctx.registry);
  return ctx;
}

/// The bytes the target loaded for `record`, read back from its sealed memfd through
/// /proc/PID/map_files (which needs root: CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE), if they
/// still have the recorded SHA-256.
std::optional<PatchDescription> read_loaded_copy(pid_t pid, const PatchRecordView& record) {
  const std::string sha256 = record_sha256(record.header);
  const std::string memfd = "/memfd:" + patch_memfd_name(record.header.name, sha256, record.header.id);
  for (const MappedRegion& region : read_process_maps(pid)) {
    if (region.path != memfd || !region.contains(record.header.code_start)) continue;
    // Only the map_files link, which reaches the mapped memfd itself: a file of that name in
    // the target's root is nothing of ours (and could be a FIFO that blocks the open).
    char range[64];
    std::snprintf(range, sizeof range, "/map_files/%llx-%llx", static_cast<unsigned long long>(region.start),
                  static_cast<unsigned long long>(region.end));
    int fd = ::open(("/proc/" + std::to_string(pid) + range).c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return std::nullopt;  // not root: the caller reads the named file instead
    std::vector<uint8_t> bytes;
    uint8_t buf[65536];
    for (ssize_t n; bytes.size() <= kMaxPatchFileBytes && (n = ::pread(fd, buf, sizeof buf, static_cast<off_t>(bytes.size()))) > 0;) {
      bytes.insert(bytes.end(), buf, buf + n);
    }
    ::close(fd);
    try {
      PatchDescription patch = read_patch_bytes(std::move(bytes), record.header.path);
      if (patch.content_sha256 == sha256) return patch;  // (a planted lookalike file fails here)
    } catch (const Error&) {
    }
    return std::nullopt;
  }
  return std::nullopt;
}

/// The description of the patch a record names: the very bytes the target loaded when they
/// can be read back, else the file the operator named — if it is still trusted (its sync and
/// callback addresses are run in the target, so a file others could swap is refused) and
/// still has the recorded SHA-256 (a rebuilt file describes other code).
std::optional<PatchDescription> read_recorded_patch(pid_t pid, const PatchRecordView& record, const EngineOptions& options) {
  if (std::optional<PatchDescription> loaded = read_loaded_copy(pid, record)) return loaded;
  // A data patch's sync functions and callbacks would run from a file now untrusted or
  // changed: say so. A code patch's rollback needs nothing of its file.
  const bool needed = !record.watched.empty();
  std::optional<PatchDescription> patch;
  try {
    patch = read_trusted_patch(record.header.path, TrustOptions{options.allowed_owners});
  } catch (const Error& e) {
    if (e.code() == ErrorCode::kPermissionDenied && needed) throw;
    spdlog::warn("cannot read the patch file of {}: {}", record.header.name, e.what());
    return std::nullopt;
  }
  const std::string applied = record_sha256(record.header);
  if (patch->content_sha256 != applied) {
    std::string message = "the file " + std::string(record.header.path) + " is no longer the patch " + record.header.name +
                          " that was applied (its SHA-256 is " + patch->content_sha256 + ", the applied one's " +
                          applied + ")";
    if (needed) {
      throw Error(ErrorCode::kPatchMalformed, message + "; its sync functions must come from the applied bytes: put "
                                              "the applied file back, or run as root (Polus then reads the loaded copy)");
    }
    spdlog::warn("{}; not needed to roll back a patch that changed no data", message);
    return std::nullopt;
  }
  return patch;
}

/// The patch an operation on `record` concerns, for the access policy.
PatchConcerned concerned(const PatchRecordView& record) {
  return PatchConcerned{record.header.id, record.header.name, record.header.applied_by_uid};
}

/// Names the record's patch in the audit record (before anything can fail).
void note_patch(AuditEvent& audit, const PatchRecordView& record) {
  audit.patch_name = record.header.name;
  audit.patch_path = record.header.path;
  audit.sha256 = record_sha256(record.header);
}

/// Rolls back a patch that changed no data: in one pause (after the rolling-back intent, when
/// `write_intent`) the original bytes go back; then the patch is unloaded if no thread runs it.
PatchInfo rollback_code_patch(TargetContext& target, RegistryContext& ctx, PatchRecordView& record,
                              Clock::time_point started, bool write_intent) {
  uint64_t pause_ns = 0;
  {
    Pause pause(target.session());
    if (write_intent) write_record_state(target.memory(), record, POLUS_STATE_ROLLING_BACK);
    restore_jumps(target.memory(), record);
    pause_ns = pause.end();
  }
  retire_patch(target, ctx.agent, record);
  PatchInfo info = info_from_record(record);
  info.state = patch_state_name(POLUS_STATE_ROLLED_BACK);
  info.pause_ns = pause_ns;
  info.apply_wall_ns = elapsed_ns(started);
  return info;
}

/// Rolls back a data patch: the new data syncs back into the old, the jumps come out, and the
/// update syncs until no thread runs new code that uses the new data.
PatchInfo rollback_data_patch(TargetContext& target, RegistryContext& ctx, PatchRecordView& record,
                              const PatchDescription& patch, const EngineOptions& options, Clock::time_point started) {
  const uint64_t bias = patch_load_bias(target.memory(), record.header);
  DataPlan plan = plan_data_update(patch, target.symbols(), bias, POLUS_UPDATE_ROLLBACK);
  const bool sync_active = ctx.registry.registry.sync.active != 0;
  // Completing an abandon cut short: no code of the patch runs any more.
  const bool abandoning = sync_active && ctx.registry.registry.sync.abandoning != 0;
  // Code runs in the pause unless the apply's sync phase is still on and the patch has no
  // pre-update callback: then the pause only puts the original bytes back. Requiring every
  // thread outside malloc, the loader and the agent's fault handler for nothing would make a
  // rollback under load wait for a moment that a busy server may never have.
  const bool run_code = !sync_active || (!abandoning && std::any_of(patch.callbacks.begin(), patch.callbacks.end(),
                                                                    [](const polus_callback& c) {
                                                                      return c.kind == POLUS_CB_PRE_UPDATE;
                                                                    }));
  pid_t borrower = 0;
  if (!sync_active) {
    BorrowedThread thread = target.borrow_safe_thread();
    borrower = thread.tid();
    install_tracked_items(thread, target.memory(), ctx.agent, plan);
  }
  const auto first_attempt = Clock::now();
  PauseRequest request;
  request.giving_up = "cannot start the rollback";
  // Attached while write tracking is on, every tracked write would wait in a
  // signal-delivery-stop for us: let go between attempts, and find a borrower each time.
  request.release_between_attempts = sync_active;
  request.prepare = [&] {
    if (sync_active) {
      target.seize();
      if (run_code) borrower = target.stop_thread_safe_to_borrow();
    }
    return borrower;
  };
  request.why_busy = [&] {
    if (run_code) {
      for (const ThreadSnapshot& thread : target.snapshot_threads(true)) {
        if (thread.tid == borrower) continue;
        if (std::optional<RangeHit> hit = target.lock_holder(thread)) return TargetContext::describe_hit(thread.tid, *hit);
      }
    }
    if (!sync_active && Clock::now() - first_attempt < kMaskResetWait) return mask_reset_pending(target.session());
    return std::string();
  };
  auto run_rollback_code = [&] {
    if (!run_code) return;
    BorrowedThread thread = target.borrow(borrower);
    thread.set_pass_faults(sync_active);
    SyncWatchdog watchdog(target, ctx.agent, kSyncFunctionLimit);
    if (sync_active) watch_sync_functions(thread, watchdog);
    run_callbacks(thread, patch, bias, POLUS_CB_PRE_UPDATE, ~0u, 0, POLUS_UPDATE_ROLLBACK, &ctx.agent);
    if (!sync_active) {
      try {
        initialize_counterparts(thread, target.memory(), plan, POLUS_UPDATE_ROLLBACK);
      } catch (const SyncFunctionFault& fault) {
        throw abandon_before_start(target, ctx.agent, record.header, POLUS_UPDATE_ROLLBACK, fault);
      }
      unblock_fault_signals(target.session());
      begin_sync(thread, ctx.agent);
    }
  };
  const uint32_t state_before = record.header.state;
  request.act = [&](const Pause&) {
    // The intent first: a rollback cut short from here on is completed by the next command.
    write_record_state(target.memory(), record, POLUS_STATE_ROLLING_BACK);
    try {
      run_rollback_code();
    } catch (...) {
      write_record_state(target.memory(), record, state_before);  // nothing was put back
      throw;
    }
    restore_jumps(target.memory(), record);
    // The outcome, still in the pause: the rollback now syncs, watching the new side's
    // functions (cut short, the record is either still rolling-back or wholly the rollback's).
    write_syncing_record(target.memory(), record, POLUS_UPDATE_ROLLBACK, plan.watched);
  };
  const uint64_t pause_ns = target.pause_when_free(request);
  target.release();  // write tracking is on: never hold the target between inspections

  uint64_t max_pause = pause_ns;
  SyncOutcome outcome = drive_sync_to_end(target, ctx.agent, record, patch, bias, Clock::now() + options.sync_timeout, max_pause, options.on_sync_progress);
  if (outcome == SyncOutcome::kFaulted) {
    throw Error(ErrorCode::kLoadFailed, abandon_update(target, ctx.agent, record, patch, options.sync_timeout).message);
  }
  const bool done = outcome == SyncOutcome::kDone;
  PatchInfo info = info_from_record(record);
  info.pause_ns = max_pause;
  info.apply_wall_ns = elapsed_ns(started);
  if (done) {
    retire_patch(target, ctx.agent, record);
    info.state = patch_state_name(POLUS_STATE_ROLLED_BACK);
  }
  return info;
}

}  // namespace

void retire_patch(TargetContext& target, const AgentLocation& agent, const PatchRecordView& record) {
  target.seize();
  // No jump leads into the patch any more; if no thread is inside its code right now, none
  // ever will be again and it can be unloaded. (Its code range is recorded: the patch is
  // mapped from a memfd, whose name in /proc/PID/maps is no file the operator knows.)
  std::vector<AddressRange> patch_code;
  if (record.header.code_end > record.header.code_start) {
    patch_code.push_back({record.header.code_start, record.header.code_end, record.header.name});
  }
  // A thread preempted on one of the patch's own trampoline slots (it took the old function's
  // jump before the rollback restored it) still goes on into the patch's code. (A slot reused
  // from an earlier patch now leads to that patch's function, which stays loaded.)
  for (const polus_redirect_record& r : record.redirects) {
    if (r.trampoline && !(r.flags & POLUS_REDIRECT_REUSED_TRAMPOLINE)) {
      patch_code.push_back({r.trampoline, r.trampoline + kTrampolineSlotSize, record.header.name + std::string(" (trampoline)")});
    }
  }
  std::string still_running;
  {
    Pause pause(target.session());
    for (const ThreadSnapshot& thread : target.snapshot_threads(true)) {
      if (thread_touches(thread, patch_code)) still_running = "thread " + std::to_string(thread.tid);
    }
    unlist_patch(target.memory(), agent, record.address.address());
  }

  BorrowedThread thread = target.borrow_safe_thread();
  if (still_running.empty()) {
    if (thread.call(agent.unload_patch, {record.header.dl_handle}) != 0) {
      spdlog::warn("dlclose of patch {} failed in the target; it stays loaded", record.header.name);
    }
  } else {
    spdlog::warn("patch {} stays loaded: {} was still running its code", record.header.name, still_running);
  }
  thread.unmap_memory(record.address.address(), record.header.record_bytes);
}

namespace {

/// Completes or undoes the operation on the newest record if one was cut short (its polusctl
/// or polusd killed): we hold the operation lock, so a record still `applying` or
/// `rolling-back` has nobody working on it. An apply is undone (the operator never saw it
/// succeed), a rollback is completed.
std::optional<PatchInfo> recover_in(TargetContext& target, RegistryContext& ctx, const EngineOptions& options) {
  // An apply cut short is always the newest record; a rollback cut short can be any record
  // (rollback --id), but only one operation runs at a time, so there is at most one.
  auto cut_short = std::find_if(ctx.registry.patches.begin(), ctx.registry.patches.end(), [](const PatchRecordView& p) {
    return p.header.state == POLUS_STATE_APPLYING || p.header.state == POLUS_STATE_ROLLING_BACK;
  });
  if (cut_short == ctx.registry.patches.end()) return std::nullopt;
  PatchRecordView record = *cut_short;
  const uint32_t state = record.header.state;
  const auto started = Clock::now();
  const bool applying = state == POLUS_STATE_APPLYING;
  // Completing someone else's interrupted operation acts on their patch.
  require_access(options.caller, target.pid(), applying ? Action::kApply : Action::kRollback, concerned(record));
  spdlog::warn("process {}: the {} of patch {} (id {}) was interrupted (the Polus process running it died); {} it",
               target.pid(), applying ? "apply" : "rollback", record.header.name, record.header.id,
               applying ? "undoing" : "completing");
  std::optional<PatchDescription> patch = read_recorded_patch(target.pid(), record, options);
  const bool has_data = patch && !patch->mappings_of(POLUS_MAP_DATA).empty();
  const bool sync_active = ctx.registry.registry.sync.active != 0;
  if (!patch && (sync_active || !record.watched.empty())) {
    throw Error(ErrorCode::kPatchMalformed, "patch " + std::string(record.header.name) + " was interrupted while "
                                                "changing data, and its file " + record.header.path +
                                                " is gone: its sync functions are needed to undo it; put the "
                                                "file back and run the command again");
  }
  target.seize();
  // Write tracking starts before the first jump is written and is this record's (one data
  // update at a time): the data rollback protocol takes it from there. A committed data patch
  // whose rollback was cut short before tracking began needs that protocol from the start.
  if (has_data && (sync_active || !applying)) return rollback_data_patch(target, ctx, record, *patch, options, started);
  // An apply cut short before tracking began wrote no jump yet (they are written after it);
  // putting the saved bytes back is harmless either way, and needs no rolling-back intent.
  return rollback_code_patch(target, ctx, record, started, /*write_intent=*/!applying);
}

/// Abandons the update in flight if one of its sync functions faulted while nothing drove it
/// (the agent's fence recorded it; update/abandon.h).
std::optional<Abandoned> abandon_faulted_in(TargetContext& target, RegistryContext& ctx, const EngineOptions& options) {
  const polus_sync_state& sync = ctx.registry.registry.sync;
  if (!sync.active || !fault_pending(sync)) return std::nullopt;
  auto syncing = std::find_if(ctx.registry.patches.rbegin(), ctx.registry.patches.rend(),
                              [](const PatchRecordView& p) { return p.header.state == POLUS_STATE_SYNCING; });
  if (syncing == ctx.registry.patches.rend()) return std::nullopt;
  PatchRecordView record = *syncing;
  require_access(options.caller, target.pid(), Action::kFinish, concerned(record));
  std::optional<PatchDescription> patch = read_recorded_patch(target.pid(), record, options);
  if (!patch) {
    throw Error(ErrorCode::kPatchMalformed, "a sync function of patch " + std::string(record.header.name) +
                                                " faulted, and its file " + record.header.path +
                                                " is gone: it is needed to abandon the update; put it back and run "
                                                "the command again");
  }
  return abandon_update(target, ctx.agent, record, *patch, options.sync_timeout);
}

}  // namespace

std::optional<Abandoned> abandon_if_faulted(TargetContext& target, const EngineOptions& options) {
  std::optional<AgentLocation> agent = locate_agent(target.pid(), target.symbols().maps());
  if (!agent) return std::nullopt;
  RegistryContext ctx{*agent, read_registry(target.memory(), *agent)};
  adopt_arenas(target.arena(), ctx.registry);
  std::optional<Abandoned> abandoned = abandon_faulted_in(target, ctx, options);
  if (abandoned) target.reload_symbols();  // the patch may be gone
  return abandoned;
}

std::optional<PatchInfo> recover_interrupted(TargetContext& target, const EngineOptions& options) {
  std::optional<AgentLocation> agent = locate_agent(target.pid(), target.symbols().maps());
  if (!agent) return std::nullopt;
  RegistryContext ctx{*agent, read_registry(target.memory(), *agent)};
  adopt_arenas(target.arena(), ctx.registry);
  std::optional<PatchInfo> info = recover_in(target, ctx, options);
  if (info) target.reload_symbols();  // the patch is gone
  return info;
}

namespace {

/// Refuses to roll back `record` while a later patch builds on it: replaces a function it
/// replaces (its jump leads through this patch's record) or one of its new functions, or
/// while another patch's data update syncs and this one changes data too.
void check_nothing_builds_on(TargetContext& target, const RegistrySnapshot& registry, const PatchRecordView& record) {
  std::vector<AddressRange> own;
  for (const MappedRegion& region : target.symbols().maps()) {
    if (region.executable && region.path == record.header.path) own.push_back({region.start, region.end, ""});
  }
  bool later = false;
  for (const PatchRecordView& p : registry.patches) {
    if (p.address == record.address) {
      later = true;
      continue;
    }
    if (!later) continue;
    for (const polus_redirect_record& r : p.redirects) {
      bool same_function = std::any_of(record.redirects.begin(), record.redirects.end(),
                                       [&](const polus_redirect_record& mine) { return mine.old_function == r.old_function; });
      bool into_mine = std::any_of(own.begin(), own.end(), [&](const AddressRange& a) { return a.contains(r.old_function); });
      if (same_function || into_mine) {
        throw Error(ErrorCode::kUnsafeToPatch,
                    "patch " + std::string(p.header.name) + " (id " + std::to_string(p.header.id) + ") builds on patch " +
                        record.header.name + " (id " + std::to_string(record.header.id) + "): it replaces " + r.old_name +
                        (same_function ? " too" : ", a function of that patch") + "; roll back id " +
                        std::to_string(p.header.id) + " first. Nothing was changed");
      }
    }
  }
}

/// Rolls back `record` (recovery already done, the registry read under the lock).
PatchInfo rollback_record(TargetContext& target, RegistryContext& ctx, PatchRecordView record, const EngineOptions& options,
                          Clock::time_point started);

}  // namespace

PatchInfo run_rollback(pid_t pid, const EngineOptions& options, AuditEvent& audit) {
  auto started = Clock::now();
  TargetContext target(pid, options.symbols, started + options.timeout);
  RegistryContext ctx = open_registry(target, "has no applied Polus patch to roll back");
  note_patch(audit, ctx.registry.patches.back());
  // An interrupted operation on the newest patch is seen through first: that is the rollback.
  if (std::optional<PatchInfo> recovered = recover_in(target, ctx, options)) return *recovered;
  // So is an update whose sync function faulted: abandoning it is the outcome to report.
  if (std::optional<Abandoned> abandoned = abandon_faulted_in(target, ctx, options)) {
    throw Error(ErrorCode::kLoadFailed, abandoned->message);
  }
  return rollback_record(target, ctx, ctx.registry.patches.back(), options, started);
}

PatchInfo run_rollback(pid_t pid, uint64_t patch_id, const EngineOptions& options, AuditEvent& audit) {
  auto started = Clock::now();
  TargetContext target(pid, options.symbols, started + options.timeout);
  RegistryContext ctx = open_registry(target, "has no applied Polus patch to roll back");
  if (std::optional<PatchInfo> recovered = recover_in(target, ctx, options)) {
    if (recovered->id == patch_id) return *recovered;  // that was the one, cut short
    target.reload_symbols();  // the recovered patch may be unloaded
    ctx.registry = read_registry(target.memory(), ctx.agent);
  }
  if (std::optional<Abandoned> abandoned = abandon_faulted_in(target, ctx, options)) {
    throw Error(ErrorCode::kLoadFailed, abandoned->message);
  }
  auto found = std::find_if(ctx.registry.patches.begin(), ctx.registry.patches.end(),
                            [&](const PatchRecordView& p) { return p.header.id == patch_id; });
  if (found == ctx.registry.patches.end()) {
    throw Error(ErrorCode::kNothingToRollBack, "process " + std::to_string(pid) + " has no applied patch with id " +
                                                   std::to_string(patch_id) + " (`polusctl status " +
                                                   std::to_string(pid) + "` lists them)");
  }
  note_patch(audit, *found);
  check_nothing_builds_on(target, ctx.registry, *found);
  return rollback_record(target, ctx, *found, options, started);
}

namespace {

PatchInfo rollback_record(TargetContext& target, RegistryContext& ctx, PatchRecordView record, const EngineOptions& options,
                          Clock::time_point started) {
  const pid_t pid = target.pid();
  require_access(options.caller, pid, Action::kRollback, concerned(record));
  if (record.header.state == POLUS_STATE_SYNCING && record.header.direction == POLUS_UPDATE_ROLLBACK) {
    return finish_in(target, ctx, record, options);  // a rollback already under way: see it through
  }
  std::optional<PatchDescription> patch = read_recorded_patch(pid, record, options);
  const bool has_data = patch && !patch->mappings_of(POLUS_MAP_DATA).empty();
  if (!patch && !record.watched.empty()) {
    throw Error(ErrorCode::kPatchMalformed, "patch " + std::string(record.header.name) +
                                                " changed data, and its file " + record.header.path +
                                                " is gone: its sync functions' description is needed to roll back");
  }
  if (has_data && record.header.state != POLUS_STATE_SYNCING) {
    for (const PatchRecordView& other : ctx.registry.patches) {
      if (other.header.state == POLUS_STATE_SYNCING) {
        throw Error(ErrorCode::kUnsafeToPatch, "patch " + std::string(other.header.name) + " (id " +
                                                   std::to_string(other.header.id) + ") is still syncing its data update, and " +
                                                   "one data update runs at a time; run `polusctl finish " +
                                                   std::to_string(pid) + "` first");
      }
    }
  }
  target.seize();
  if (has_data) return rollback_data_patch(target, ctx, record, *patch, options, started);
  PatchInfo info = rollback_code_patch(target, ctx, record, started, /*write_intent=*/true);
  spdlog::info("rolled back patch {} in process {}: pause {} us", info.name, pid, info.pause_ns / 1000);
  return info;
}

}  // namespace

PatchInfo run_finish(pid_t pid, const EngineOptions& options, AuditEvent& audit) {
  TargetContext target(pid, options.symbols, Clock::now() + options.timeout);
  RegistryContext ctx = open_registry(target, "has no Polus update in flight");
  note_patch(audit, ctx.registry.patches.back());
  if (std::optional<PatchInfo> recovered = recover_in(target, ctx, options)) return *recovered;
  if (std::optional<Abandoned> abandoned = abandon_faulted_in(target, ctx, options)) {
    throw Error(ErrorCode::kLoadFailed, abandoned->message);
  }
  auto syncing = std::find_if(ctx.registry.patches.begin(), ctx.registry.patches.end(),
                              [](const PatchRecordView& p) { return p.header.state == POLUS_STATE_SYNCING; });
  if (syncing == ctx.registry.patches.end()) {
    throw Error(ErrorCode::kNothingToRollBack, "process " + std::to_string(pid) + " has no Polus update in flight");
  }
  PatchRecordView record = *syncing;
  note_patch(audit, record);
  require_access(options.caller, pid, Action::kFinish, concerned(record));
  return finish_in(target, ctx, record, options);
}

namespace {

PatchInfo finish_in(TargetContext& target, RegistryContext& ctx, PatchRecordView& record, const EngineOptions& options) {
  std::optional<PatchDescription> patch = read_recorded_patch(target.pid(), record, options);
  if (!patch) {
    throw Error(ErrorCode::kPatchMalformed, "the file of patch " + std::string(record.header.name) + " (" +
                                                record.header.path + ") is gone; it is needed to finish the update");
  }
  target.seize();
  const uint64_t bias = patch_load_bias(target.memory(), record.header);
  uint64_t max_pause = 0;
  SyncOutcome outcome = drive_sync_to_end(target, ctx.agent, record, *patch, bias, Clock::now() + options.sync_timeout, max_pause, options.on_sync_progress);
  if (outcome == SyncOutcome::kFaulted) {
    throw Error(ErrorCode::kLoadFailed, abandon_update(target, ctx.agent, record, *patch, options.sync_timeout).message);
  }
  const bool done = outcome == SyncOutcome::kDone;
  PatchInfo info = info_from_record(record);
  if (done && record.header.direction == POLUS_UPDATE_ROLLBACK) {
    retire_patch(target, ctx.agent, record);
    info.state = patch_state_name(POLUS_STATE_ROLLED_BACK);
  } else if (done) {
    record.header.state = POLUS_STATE_COMMITTED;
    record.header.committed_at_unix_ns = unix_now_ns();
    target.memory().write(record.address, record.header);
    info = info_from_record(record);
  }
  return info;
}

}  // namespace

}  // namespace polus
