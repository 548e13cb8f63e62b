// Applying a patch: plan (files only, target untouched) -> load (one borrowed thread, the
// others keep running) -> commit (every thread stopped: pre-update callbacks, data
// initialised and protected, jumps written) -> record -> for data patches, sync until no
// thread runs old code that uses changed data.
#include "polus/engine.h"

#include <dlfcn.h>
#include <sys/mman.h>
#include <time.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>
#include <sstream>
#include <thread>

#include <spdlog/spdlog.h>

#include "polus/agent_abi.h"
#include "polus/error.h"
#include "common/format.h"
#include "update/patch_file.h"
#include "update/patch_trust.h"
#include "update/audit.h"
#include "update/patch_memfd.h"
#include "update/patch_signature.h"
#include "binary/prologue.h"
#include "update/registry.h"
#include "update/target.h"
#include "binary/unwinder.h"
#include "process/proc_files.h"
#include "update/abandon.h"
#include "update/data_update.h"
#include "update/redirects.h"
#include "update/call_original.h"
#include "update/reach_checks.h"
#include "update/rehearsal.h"
#include "update/seccomp_check.h"
#include "update/engine_internal.h"
#include "update/plan.h"

namespace polus {

namespace {


/// The patch file, checked as sshd's StrictModes does, parsed from the bytes of the file
/// checked and, when required, its signature verified over those same bytes.
PatchDescription read_checked_patch(const std::string& patch_path, const EngineOptions& options, AuditEvent& audit) {
  audit.patch_path = patch_path;
  PatchDescription patch = read_trusted_patch(patch_path, TrustOptions{options.allowed_owners});
  audit.patch_name = patch.name;
  audit.patch_path = patch.path;
  audit.sha256 = patch.content_sha256;
  if (options.signature.required) audit.signed_by = verify_patch_signature(patch, patch_path, options.signature).key_id;
  return patch;
}

class Applier {
 public:
  Applier(pid_t pid, const std::string& patch_path, const EngineOptions& options, AuditEvent& audit)
      : started_(Clock::now()),
        options_(options),
        patch_(read_checked_patch(patch_path, options, audit)),
        target_(pid, options.symbols, started_ + options.timeout) {}

  PatchInfo run() {
    // An operation cut short on this process is seen through before anything else.
    if (std::optional<PatchInfo> recovered = recover_interrupted(target_, options_)) {
      spdlog::warn("process {}: {} patch {} first, as an interrupted operation left it", target_.pid(),
                   recovered->state == "rolled-back" ? "rolled back" : "finished", recovered->name);
    }
    // An update whose sync function faulted while nothing drove it is abandoned first.
    if (std::optional<Abandoned> abandoned = abandon_if_faulted(target_, options_)) {
      spdlog::error("process {}: before applying {}: {}", target_.pid(), patch_.name, abandoned->message);
    }
    if (patch_.path.size() >= POLUS_PATH_BYTES) {
      throw Error(ErrorCode::kPatchMalformed, "patch path " + patch_.path + " is longer than " +
                                                  std::to_string(POLUS_PATH_BYTES - 1) + " bytes; move the patch to a shorter path");
    }
    check_build_ids(patch_, target_.symbols());
    resolve_imports();
    // Resolve the old data now, so a missing global is reported before anything changes.
    has_data_ = !plan_data_update(patch_, target_.symbols(), 0, POLUS_UPDATE_APPLY).empty();
    agent_ = locate_agent(target_.memory(), target_.symbols().maps());
    if (agent_) registry_ = read_registry(target_.memory(), *agent_);
    // The agent's bytes, checked and read once, for the copy and the target (update/patch_memfd.h).
    if (!agent_) agent_image_ = read_agent_image(options_.agent_path, options_.allowed_owners);
    if (const PatchRecordView* same = find_active_copy()) {
      if (same->header.state == POLUS_STATE_SYNCING && same->header.direction == POLUS_UPDATE_ROLLBACK) {
        // Not "already applied": it is on its way out, and apply cannot turn a rollback around.
        throw Error(ErrorCode::kUnsafeToPatch,
                    "patch " + patch_.name + " (id " + std::to_string(same->header.id) + ") is being rolled back from process " +
                        std::to_string(target_.pid()) + ": its rollback syncs until no thread runs its new code. Let it end "
                        "(`polusctl finish " + std::to_string(target_.pid()) + "`, or polusd does), then apply it again");
      }
      PatchInfo info = info_from_record(*same);
      info.already_applied = true;
      spdlog::info("patch {} (sha256 {}) is already applied to process {} as id {}; nothing changed", patch_.name,
                   patch_.content_sha256, target_.pid(), same->header.id);
      return info;
    }
    check_registry_accepts_patch(registry_, target_.pid());
    active_ = active_redirects(registry_);
    plans_ = plan_redirects(patch_, target_, active_);
    std::vector<Symbol> replaced;
    for (const PlannedRedirect& plan : plans_) replaced.push_back(plan.old_symbol);
    check_copies_reached(target_.symbols(), replaced, options_.force);

    target_.seize();
    check_seccomp_allows(target_, {.rehearsal = options_.rehearse, .data_update = has_data_});
    try {
      if (options_.rehearse) rehearse();
      load();
      commit();
    } catch (...) {
      undo_load();
      throw;
    }
    record_commit();
    if (has_data_) {
      target_.release();  // write tracking is on: never hold the target between inspections
      finish_sync();
    } else {
      run_post_update_callbacks();
    }
    PatchInfo info = info_from_record(record_view_);
    info.commit_pause_parts = pause_parts_;
    return info;
  }

 private:
  /// The name of the memfd the patch is loaded from (the record's id is the next one).
  std::string memfd_name() const {
    return patch_memfd_name(patch_.name, patch_.content_sha256, agent_ ? registry_.registry.next_patch_id : 1);
  }

  /// An active patch (committed, or its data update syncing) with these very bytes.
  const PatchRecordView* find_active_copy() const {
    for (const PatchRecordView& p : registry_.patches) {
      if ((p.header.state == POLUS_STATE_COMMITTED || p.header.state == POLUS_STATE_SYNCING) &&
          record_sha256(p.header) == patch_.content_sha256) {
        return &p;
      }
    }
    return nullptr;
  }

  void resolve_imports() {
    for (const PatchFunction& f : patch_.functions) {
      if (f.side == POLUS_OLD && f.resolved_slot) {
        slot_values_.emplace_back(f.resolved_slot, target_.symbols().resolve(f.name, SymbolKind::kFunction).address.address());
      }
    }
    for (const PatchData& d : patch_.data) {
      if (d.side == POLUS_OLD && d.resolved_slot) {
        slot_values_.emplace_back(d.resolved_slot, target_.symbols().resolve(d.name, SymbolKind::kData).address.address());
      }
    }
    for (const PatchImport& imp : patch_.imports) {
      slot_values_.emplace_back(imp.slot, target_.symbols().resolve(imp.name, SymbolKind::kAny).address.address());
    }
  }

  /// Whether `slot` is an OLD function's `resolved` slot (not a global's or an import's).
  bool is_old_function_slot(uint64_t slot) const {
    return std::any_of(patch_.functions.begin(), patch_.functions.end(),
                       [&](const PatchFunction& f) { return f.side == POLUS_OLD && f.resolved_slot == slot; });
  }

  /// The load tried first in a copy of the process (update/rehearsal.h).
  void rehearse() {
    rehearsal_ = rehearse_load(target_, patch_, agent_image_, agent_, memfd_name(), slot_values_);
  }

  /// Loads agent and patch through one borrowed thread while the others keep running.
  void load() {
    BorrowedThread thread = target_.borrow_safe_thread();
    borrower_ = thread.tid();
    if (agent_) adopt_arenas(target_.arena(), registry_);
    const LoadedObject& main = target_.symbols().main_executable();
    target_.arena().ensure(thread, main.text_start, main.text_end);
    if (!agent_) {
      // From a sealed memfd too: the bytes checked, whatever the target's mount namespace holds
      // at the agent's path (a container may have none there).
      agent_handle_ = load_agent_from_memfd(thread, target_.memory(), target_.pid(), dynamic_loader_debug(target_.symbols()),
                                            target_.libc_function("dlopen"), target_.libc_function("dlerror"), agent_image_);
      agent_ = locate_agent(target_.memory(), read_process_maps(target_.pid()));
      if (!agent_) {
        read_process_maps(target_.pid());  // throws kNoSuchProcess if the target died meanwhile
        throw Error(ErrorCode::kLoadFailed, "the Polus agent (" + agent_image_.path + ") was loaded into process " +
                                                std::to_string(target_.pid()) + ", but its registry is not in its mappings");
      }
      registry_ = read_registry(target_.memory(), *agent_);
    }

    // The bytes validated, from a sealed memfd: never the path again (update/patch_memfd.h).
    patch_handle_ = load_patch_from_memfd(thread, target_.memory(), target_.pid(), *agent_,
                                          dynamic_loader_debug(target_.symbols()), patch_, memfd_name());
    // dlopen of a file already loaded returns the same library: the same patch applied
    // twice. Its redirects would lead to themselves (a call of the version replaced would
    // recurse for good) and both records would unload one library.
    for (const PatchRecordView& p : registry_.patches) {
      if (p.header.dl_handle == patch_handle_) {
        throw Error(ErrorCode::kUnsafeToPatch, "patch " + patch_.name + " (" + patch_.path + ") is applied already, as id " +
                                                   std::to_string(p.header.id) + " (" + p.header.name +
                                                   "); the target is unchanged. Roll it back first, or build the "
                                                   "new version under another file name");
      }
    }
    patch_bias_ = target_.memory().read(RemotePtr<uint64_t>(patch_handle_));
    polus_patch loaded{};
    target_.memory().read_bytes(RemoteAddr(patch_bias_ + patch_.descriptor), &loaded, sizeof loaded);
    if (loaded.magic != POLUS_PATCH_MAGIC) {
      throw Error(ErrorCode::kLoadFailed, "the patch loaded in the target does not match " + patch_.path +
                                              " (was the file replaced while loading?)");
    }
    for (auto [slot, value] : slot_values_) {
      // The `resolved` slot of a function this patch redirects: code that runs the version
      // it replaces, not the entry (which is about to jump back into the patch).
      for (const PlannedRedirect& plan : plans_) {
        if (value == plan.old_symbol.address.address() && is_old_function_slot(slot)) {
          value = replaced_version_entry(target_, thread, plan.old_symbol, plan.analysis, plan.stacked_on);
        }
      }
      target_.memory().write(RemotePtr<uint64_t>(patch_bias_ + slot), value);
    }
    for (PlannedRedirect& plan : plans_) prepare_redirect(thread, plan);
    if (has_data_) {
      data_ = plan_data_update(patch_, target_.symbols(), patch_bias_, POLUS_UPDATE_APPLY);
      install_tracked_items(thread, target_.memory(), *agent_, data_);
    }

    // Room for the watched functions of either direction: at most every function of the patch.
    uint64_t bytes = PatchRecordView::bytes_for(static_cast<uint32_t>(plans_.size()),
                                                static_cast<uint32_t>(patch_.functions.size()));
    record_view_.address = RemotePtr<polus_patch_record>(thread.map_memory(0, 0, bytes, PROT_READ | PROT_WRITE));
    polus_patch_record& h = record_view_.header;
    h.magic = POLUS_AGENT_MAGIC;
    h.id = registry_.registry.next_patch_id;
    h.dl_handle = patch_handle_;
    h.descriptor = patch_bias_ + patch_.descriptor;
    h.record_bytes = bytes;
    h.state = POLUS_STATE_APPLYING;
    h.direction = POLUS_UPDATE_APPLY;
    copy_name(h.name, patch_.name);
    copy_name(h.path, patch_.path);
    set_record_sha256(h, patch_.content_sha256);
    h.code_start = patch_bias_ + patch_.text_start;
    h.code_end = patch_bias_ + patch_.text_end;
    h.applied_by_uid = options_.caller.uid;
    for (const PlannedRedirect& plan : plans_) record_view_.redirects.push_back(plan.record);
    record_view_.watched = data_.watched;
    h.redirect_count = static_cast<uint32_t>(record_view_.redirects.size());
    h.watch_count = static_cast<uint32_t>(record_view_.watched.size());
    write_record();
    list_in_registry();
  }

  /// The intent, before the first byte of the target's code changes: the record (state
  /// `applying`, every redirect with the bytes it replaces) and the arenas mapped for it join
  /// the registry. An apply cut short from here on is undone by the next Polus command.
  void list_in_registry() {
    polus_agent_registry& reg = registry_.registry;
    reg.patches[reg.patch_count++] = record_view_.address.address();
    reg.next_patch_id++;
    for (uint64_t arena : target_.arena().new_arenas()) {
      if (reg.arena_count < POLUS_MAX_ARENAS) reg.arenas[reg.arena_count++] = polus_arena{arena, kArenaSize};
    }
    write_registry_bookkeeping(target_.memory(), *agent_, reg);
    listed_ = true;
  }

  /// Takes what list_in_registry() added out again (a failed apply, the target unchanged).
  void unlist_from_registry() {
    polus_agent_registry reg = target_.memory().read(agent_->registry);
    auto patch_end = std::remove(reg.patches, reg.patches + reg.patch_count, record_view_.address.address());
    reg.patch_count = static_cast<uint32_t>(patch_end - reg.patches);
    std::fill(patch_end, reg.patches + POLUS_MAX_PATCHES, 0);
    const std::vector<uint64_t>& mapped = target_.arena().new_arenas();
    auto arena_end = std::remove_if(reg.arenas, reg.arenas + reg.arena_count, [&](const polus_arena& a) {
      return std::find(mapped.begin(), mapped.end(), a.base) != mapped.end();
    });
    reg.arena_count = static_cast<uint32_t>(arena_end - reg.arenas);
    std::fill(arena_end, reg.arenas + POLUS_MAX_ARENAS, polus_arena{});
    write_registry_bookkeeping(target_.memory(), *agent_, reg);
    listed_ = false;
  }

  /// A trampoline slot within reach of `site` (ScratchArena::allocate_slot), near the
  /// object whose code it serves.
  uint64_t allocate_slot(BorrowedThread& thread, uint64_t site) {
    const LoadedObject* object = target_.symbols().object_containing(RemoteAddr(site));
    return target_.arena().allocate_slot(
        thread, [site](uint64_t slot) { return jump_reaches(site, slot); }, object ? object->text_start : site,
        object ? object->text_end : site + 1);
  }

  void prepare_redirect(BorrowedThread& thread, PlannedRedirect& plan) {
    polus_redirect_record& r = plan.record;
    r.old_function = plan.old_symbol.address.address();
    r.new_function = patch_bias_ + plan.new_link_address;
    copy_name(r.old_name, plan.old_symbol.qualified_name());
    copy_name(r.new_name, plan.new_name);
    if (plan.stacked_on) {
      r.patch_site = plan.stacked_on->patch_site;
      r.flags |= POLUS_REDIRECT_STACKED;
      r.previous_target = plan.stacked_on->new_function;
      if (plan.stacked_on->trampoline) {
        // Same slot, new target: the old function's jump bytes stay as they are.
        r.trampoline = plan.stacked_on->trampoline;
        r.flags |= POLUS_REDIRECT_VIA_TRAMPOLINE | POLUS_REDIRECT_REUSED_TRAMPOLINE;
      }
    } else {
      r.patch_site = plan.analysis.patch_site;
    }
    r.saved_length = kJumpLength;
    target_.memory().read_bytes(RemoteAddr(r.patch_site), r.saved_bytes, kJumpLength);
    if (!(r.flags & POLUS_REDIRECT_REUSED_TRAMPOLINE) && !jump_reaches(r.patch_site, r.new_function)) {
      r.trampoline = allocate_slot(thread, r.patch_site);  // written in the commit pause
      r.flags |= POLUS_REDIRECT_VIA_TRAMPOLINE;
    }
  }

  void write_record() {
    target_.memory().write(record_view_.address, record_view_.header);
    if (!record_view_.redirects.empty()) {
      target_.memory().write_bytes(record_view_.redirects_at(), record_view_.redirects.data(),
                                   record_view_.redirects.size() * sizeof(polus_redirect_record));
    }
    if (!record_view_.watched.empty()) {
      target_.memory().write_bytes(record_view_.watched_at(), record_view_.watched.data(),
                                   record_view_.watched.size() * sizeof(polus_watched_function));
    }
  }

  /// Stops every thread, and when no thread is in the way: runs pre-update callbacks,
  /// initialises and protects the new data, writes the jumps; then resumes. The only time
  /// the whole target is stopped; it reads /proc/PID/maps for the stack checks but no symbol tables.
  void commit() {
    commit_started_ = Clock::now();
    const bool run_code = has_data_ || std::any_of(patch_.callbacks.begin(), patch_.callbacks.end(), [](const polus_callback& c) {
      return c.kind == POLUS_CB_PRE_UPDATE;
    });
    // Stacks are read whenever a jump goes over live code: a signal frame on a stack can hold
    // any interrupted pc, including one inside the bytes the jump replaces.
    bool need_stacks = run_code || std::any_of(plans_.begin(), plans_.end(), [](const PlannedRedirect& p) {
      return !p.stacked_on || writes_new_slot(p);
    });
    // Slots before the jumps that lead to them; both while every thread is stopped and none
    // is on the slot (busy_reason), since a freed slot may be handed out again. Each with what
    // it replaces: a write that fails (the mapping gone, say) puts the ones before it back, so
    // no jump leads into a patch that the failed apply unloads.
    std::vector<JumpWrite> writes;
    for (const PlannedRedirect& plan : plans_) {
      for (JumpWrite& write : jump_writes(plan.record)) writes.push_back(std::move(write));
    }
    PauseRequest request;
    request.giving_up = "cannot commit now";
    request.prepare = [&] { return run_code ? borrower_ : 0; };  // a borrower found safe stays ours
    uint64_t check_ns = 0;  // the last check's: the part of the pause before `act` that is not stopping threads
    request.why_busy = [&] {
      auto start = Clock::now();
      std::string reason = busy_reason_now(need_stacks, run_code);
      check_ns = elapsed_ns(start);
      return reason;
    };
    uint64_t acted_ns = 0;
    request.act = [&](const Pause& pause) {
      pause_parts_.clear();
      uint64_t checked_ns = pause.elapsed();
      const uint64_t checks = std::min(check_ns, checked_ns);
      pause_parts_.push_back({"stop every thread", checked_ns - checks});
      pause_parts_.push_back({"check stacks, locks and masks", checks});
      if (run_code) run_code_in_pause(pause);
      uint64_t code_ns = pause.elapsed();
      write_all(target_.memory(), writes);
      // The outcome, still in the pause: cut short after this, the record says what is true.
      write_record_state(target_.memory(), record_view_, has_data_ ? POLUS_STATE_SYNCING : POLUS_STATE_COMMITTED);
      committed_ = true;
      acted_ns = pause.elapsed();
      pause_parts_.push_back({"jumps and record written", acted_ns - code_ns});
      spdlog::debug("commit pause: checked at {} us, code run at {} us", checked_ns / 1000, code_ns / 1000);
    };
    pause_ns_ = target_.pause_when_free(request);
    if (pause_ns_ > acted_ns) pause_parts_.push_back({"threads resumed", pause_ns_ - acted_ns});
    spdlog::debug("commit pause {} us", pause_ns_ / 1000);
  }

  /// Why the commit must wait: a thread in the bytes a jump replaces, or — when code runs in
  /// the pause — a stopped thread that may hold a lock that code could need.
  std::string busy_reason_now(bool need_stacks, bool run_code) {
    for (const ThreadSnapshot& thread : target_.snapshot_threads(need_stacks)) {
      for (const PlannedRedirect& plan : plans_) {
        std::string reason = busy_reason(plan, thread);
        if (!reason.empty()) return reason;
      }
      if (run_code && thread.tid != borrower_) {
        if (std::optional<RangeHit> hit = target_.lock_holder(thread)) return TargetContext::describe_hit(thread.tid, *hit);
      }
    }
    // Bounded: a thread being created leaves that section within microseconds; one that
    // blocks glibc's signals for its own reasons must not hold the update back for good.
    if (has_data_ && Clock::now() - commit_started_ < kMaskResetWait) return mask_reset_pending(target_.session());
    return "";
  }

  /// With every other thread stopped: pre-update callbacks, then the new data starts as a
  /// copy of the old and both are protected — atomically with respect to the application.
  void run_code_in_pause(const Pause& pause) {
    uint64_t mark = pause.elapsed();
    auto part = [&](const char* what) {
      uint64_t now = pause.elapsed();
      pause_parts_.push_back({what, now - mark});
      mark = now;
    };
    BorrowedThread thread = target_.borrow(borrower_);
    part("borrow a thread");
    int refused = run_callbacks(thread, patch_, patch_bias_, POLUS_CB_PRE_UPDATE, ~0u, 0, POLUS_UPDATE_APPLY);
    part("pre-update callbacks");
    if (refused != 0) {
      throw Error(ErrorCode::kUnsafeToPatch, "the patch's pre-update callback refused the update (returned " +
                                                 std::to_string(refused) + "); the target is unchanged");
    }
    if (has_data_) {
      auto start = Clock::now();
      try {
        initialize_counterparts(thread, target_.memory(), data_, POLUS_UPDATE_APPLY);
      } catch (const SyncFunctionFault& fault) {
        failure_recorded_ = true;  // the agent keeps the record for status
        throw abandon_before_start(target_, *agent_, record_view_.header, POLUS_UPDATE_APPLY, fault);
      }
      uint64_t init_ns = elapsed_ns(start);
      part("initial syncs (old -> new)");
      unblock_fault_signals(target_.session());
      part("SIGSEGV/SIGTRAP unblocked in every thread");
      begin_sync(thread, *agent_);
      part("write tracking started (agent: protect, shadows, views)");
      spdlog::debug("in the pause: sync functions {} us, write tracking started {} us", init_ns / 1000,
                    (elapsed_ns(start) - init_ns) / 1000);
    }
  }

  void record_commit() {
    polus_patch_record& h = record_view_.header;
    h.applied_at_unix_ns = unix_now_ns();
    // The longest time the target stood still: the commit, or the rehearsal's copy of a
    // big process.
    h.pause_ns = std::max(pause_ns_, rehearsal_.pause_ns);
    h.apply_wall_ns = elapsed_ns(started_);
    h.state = has_data_ ? POLUS_STATE_SYNCING : POLUS_STATE_COMMITTED;
    if (!has_data_) h.committed_at_unix_ns = h.applied_at_unix_ns;
    write_record();
    spdlog::info("applied patch {} to process {}: {} functions, {} data pairs, pause {} us, total {} ms", patch_.name,
                 target_.pid(), plans_.size(), data_.pairs.size(), h.pause_ns / 1000, h.apply_wall_ns / 1000000);
    if (rehearsal_.pause_ns > pause_ns_ && rehearsal_.pause_ns > 10'000'000) {
      spdlog::warn("process {} stood still {} ms while the copy for the rehearsal was made (clone copies its page "
                   "tables; see RELIABILITY.md); --no-rehearsal skips the copy",
                   target_.pid(), rehearsal_.pause_ns / 1000000);
    }
  }

  /// A code-only patch's post-update callbacks, once it is committed, on a borrowed thread
  /// while the others run (a data patch's run when its sync phase ends). Their result
  /// cannot undo the commit: a failure is reported as a warning.
  void run_post_update_callbacks() {
    if (std::none_of(patch_.callbacks.begin(), patch_.callbacks.end(),
                     [](const polus_callback& c) { return c.kind == POLUS_CB_POST_UPDATE; })) {
      return;
    }
    try {
      BorrowedThread thread = target_.borrow_safe_thread();
      run_callbacks(thread, patch_, patch_bias_, POLUS_CB_POST_UPDATE, ~0u, 0, POLUS_UPDATE_APPLY);
    } catch (const Error& e) {
      spdlog::warn("patch {} is applied, but its post-update callback did not run to its end: {}", patch_.name, e.what());
    }
  }

  /// Waits for old code using changed data to drain, then commits the data update.
  void finish_sync() {
    uint64_t max_pause = record_view_.header.pause_ns;
    SyncOutcome outcome = drive_sync_to_end(target_, *agent_, record_view_, patch_, patch_bias_,
                                            Clock::now() + options_.sync_timeout, max_pause, options_.on_sync_progress);
    if (outcome == SyncOutcome::kFaulted) {
      throw Error(ErrorCode::kLoadFailed, abandon_update(target_, *agent_, record_view_, patch_, options_.sync_timeout).message);
    }
    const bool done = outcome == SyncOutcome::kDone;
    polus_patch_record& h = record_view_.header;
    h.pause_ns = max_pause;
    h.apply_wall_ns = elapsed_ns(started_);
    if (done) {
      h.state = POLUS_STATE_COMMITTED;
      h.committed_at_unix_ns = unix_now_ns();
    }
    target_.memory().write(record_view_.address, h);
  }

  /// Puts the target back as it was after a failure between load and commit.
  void undo_load() noexcept {
    if (committed_) return;
    try {
      const std::vector<uint64_t>& new_arenas = target_.arena().new_arenas();
      if (patch_handle_ == 0 && agent_handle_ == 0 && new_arenas.empty() && !record_view_.address) return;
      target_.extend_deadline(std::chrono::seconds(5));
      target_.ignore_stop_requests();
      if (listed_) unlist_from_registry();
      target_.session().resume_all();
      BorrowedThread thread = target_.borrow_safe_thread();
      if (patch_handle_ && agent_) thread.call(agent_->unload_patch, {patch_handle_});
      if (agent_handle_ && !failure_recorded_) thread.call(target_.libc_function("dlclose"), {agent_handle_});
      if (record_view_.address) thread.unmap_memory(record_view_.address.address(), record_view_.header.record_bytes);
      // The scratch arena last: the calls above return to its trap.
      for (auto arena = new_arenas.rbegin(); arena != new_arenas.rend(); ++arena) thread.unmap_memory(*arena, kArenaSize);
    } catch (const std::exception& e) {
      spdlog::error("could not fully clean up after a failed apply: {}", e.what());
    }
  }

  Clock::time_point started_;
  EngineOptions options_;
  PatchDescription patch_;
  TargetContext target_;
  std::optional<AgentLocation> agent_;
  AgentImage agent_image_;  // read when the target has no agent yet
  RegistrySnapshot registry_;
  std::map<uint64_t, const polus_redirect_record*> active_;
  std::vector<PlannedRedirect> plans_;
  DataPlan data_;
  bool has_data_ = false;
  PatchRecordView record_view_;
  std::vector<std::pair<uint64_t, uint64_t>> slot_values_;  // (link-time slot, value)
  Clock::time_point commit_started_;
  pid_t borrower_ = 0;
  uint64_t agent_handle_ = 0;
  uint64_t patch_handle_ = 0;
  uint64_t patch_bias_ = 0;
  uint64_t pause_ns_ = 0;
  std::vector<PausePart> pause_parts_;
  RehearsalCost rehearsal_;
  bool committed_ = false;
  bool listed_ = false;  // the record is in the registry
  bool failure_recorded_ = false;  // patch code faulted: the agent, loaded or not by us, stays for status
};

}  // namespace

uint64_t patch_load_bias(ProcessMemory& memory, const polus_patch_record& header) {
  return memory.read(RemotePtr<uint64_t>(header.dl_handle));  // struct link_map's l_addr
}

PatchInfo run_apply(pid_t pid, const std::string& patch_path, const EngineOptions& options, AuditEvent& audit) {
  return Applier(pid, patch_path, options, audit).run();
}

}  // namespace polus
