// The update state machine for code patches: plan (no ptrace) -> load (one borrowed
// thread) -> commit (all threads stopped, jumps written) -> record.
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
#include "polus/format.h"
#include "polus/patch_file.h"
#include "polus/prologue.h"
#include "polus/registry.h"
#include "polus/target.h"

namespace polus {

namespace {


uint64_t unix_now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

uint64_t elapsed_ns(Clock::time_point since) {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - since).count());
}

/// One function to redirect, as planned before the target is touched.
struct PlannedRedirect {
  Symbol old_symbol;
  std::string new_name;
  uint64_t new_link_address = 0;  // in the patch file
  PrologueAnalysis analysis;      // fresh redirects only
  const polus_redirect_record* stacked_on = nullptr;  // the active redirect of an older patch
  polus_redirect_record record{};  // filled while loading
};

PatchInfo info_from_record(const polus_patch_record& header, const std::vector<polus_redirect_record>& redirects) {
  PatchInfo info;
  info.id = header.id;
  info.name = header.name;
  info.path = header.path;
  info.state = patch_state_name(header.state);
  info.applied_at_unix_ns = header.applied_at_unix_ns;
  info.apply_wall_ns = header.apply_wall_ns;
  info.pause_ns = header.pause_ns;
  for (const polus_redirect_record& r : redirects) {
    info.redirects.push_back(RedirectInfo{r.old_name, r.new_name, r.old_function, r.new_function, r.patch_site,
                                          r.trampoline, (r.flags & POLUS_REDIRECT_STACKED) != 0});
  }
  return info;
}

void check_build_ids(const PatchDescription& patch, const ProcessSymbols& symbols) {
  for (const PatchBuildId& want : patch.build_ids) {
    const LoadedObject* object = want.object.empty() ? &symbols.main_executable() : symbols.find_object(want.object);
    if (!object) {
      throw Error(ErrorCode::kBuildMismatch, "patch " + patch.name + " was made for a process that maps '" +
                                                 want.object + "', which process does not; wrong target?");
    }
    if (object->build_id_hex != want.hex) {
      throw Error(ErrorCode::kBuildMismatch,
                  "patch " + patch.name + " was made for " + (want.object.empty() ? "an executable" : want.object) +
                      " with build-id " + want.hex + ", but the process runs " + object->path + " with build-id " +
                      (object->build_id_hex.empty() ? "(none)" : object->build_id_hex) +
                      "; use the patch built for this version");
    }
  }
}

/// The newest active redirect of every already-patched function.
std::map<uint64_t, const polus_redirect_record*> active_redirects(const RegistrySnapshot& registry) {
  std::map<uint64_t, const polus_redirect_record*> active;
  for (const PatchRecordView& patch : registry.patches) {
    if (patch.header.state != POLUS_STATE_COMMITTED && patch.header.state != POLUS_STATE_SYNCING) continue;
    for (const polus_redirect_record& r : patch.redirects) active[r.old_function] = &r;
  }
  return active;
}

uint64_t next_symbol_after(const ProcessSymbols& symbols, const Symbol& symbol) {
  uint64_t next = 0;
  for (const LoadedObject& object : symbols.objects()) {
    if (object.path != symbol.object_path) continue;
    for (const Symbol& s : object.symbols) {
      uint64_t a = s.address.address();
      if (a > symbol.address.address() && (next == 0 || a < next)) next = a;
    }
  }
  return next;
}

/// Plans every redirect from the file and the target's memory, without stopping anything.
std::vector<PlannedRedirect> plan_redirects(const PatchDescription& patch, TargetContext& target,
                                            const std::map<uint64_t, const polus_redirect_record*>& active) {
  std::vector<PlannedRedirect> plans;
  for (const auto& [old_index, new_index] : patch.function_replacements()) {
    PlannedRedirect plan;
    plan.old_symbol = target.symbols().resolve(patch.functions[old_index].name, SymbolKind::kFunction);
    plan.new_name = patch.functions[new_index].name;
    plan.new_link_address = patch.functions[new_index].address;
    for (const PlannedRedirect& other : plans) {
      if (other.old_symbol.address == plan.old_symbol.address) {
        throw Error(ErrorCode::kPatchMalformed, "patch " + patch.name + " replaces " + plan.old_symbol.qualified_name() +
                                                    " twice (under two names)");
      }
    }
    if (auto it = active.find(plan.old_symbol.address.address()); it != active.end()) {
      plan.stacked_on = it->second;
    } else {
      uint64_t address = plan.old_symbol.address.address();
      std::vector<uint8_t> code(plan.old_symbol.size + 16);
      code.resize(target.memory().read_bytes_fallible(RemoteAddr(address), code.data(), code.size()));
      plan.analysis = analyze_prologue(code, address, plan.old_symbol.size,
                                       next_symbol_after(target.symbols(), plan.old_symbol),
                                       plan.old_symbol.qualified_name());
    }
    plans.push_back(std::move(plan));
  }
  return plans;
}

/// Why a thread keeps us from writing a redirect's jump now, or "" if nothing does.
std::string busy_reason(const PlannedRedirect& plan, const ThreadSnapshot& thread) {
  if (plan.stacked_on) return "";  // only a jump target changes: any pc is fine
  const PrologueAnalysis& a = plan.analysis;
  const std::string name = plan.old_symbol.qualified_name();
  const std::string who = "thread " + std::to_string(thread.tid);
  if (std::find(a.interior_boundaries.begin(), a.interior_boundaries.end(), thread.pc) != a.interior_boundaries.end()) {
    return who + " is executing the first bytes of " + name;
  }
  if (a.call_in_overwritten && thread_has_address(thread, a.interior_boundaries)) {
    return who + " will return into the first bytes of " + name;
  }
  if (a.requires_inactive_function) {
    AddressRange whole{a.function, a.function + std::max<uint64_t>(a.function_size, 1), name};
    if (thread_touches(thread, {whole})) return who + " is inside " + name + " and " + a.inactive_reason;
  }
  return "";
}

class Applier {
 public:
  Applier(pid_t pid, const std::string& patch_path, const EngineOptions& options)
      : started_(Clock::now()),
        options_(options),
        patch_(read_patch_file(patch_path)),
        target_(pid, options.symbols, started_ + options.timeout) {}

  PatchInfo run() {
    check_build_ids(patch_, target_.symbols());
    if (!patch_.data.empty()) {
      throw Error(ErrorCode::kUnsafeToPatch, "patch " + patch_.name + " changes data (" + std::to_string(patch_.data.size()) +
                                                 " items); this Polus applies code-only patches so far");
    }
    resolve_imports();
    agent_ = locate_agent(target_.pid(), target_.symbols().maps());
    if (agent_) registry_ = read_registry(target_.memory(), *agent_);
    if (registry_.registry.patch_count >= POLUS_MAX_PATCHES) {
      throw Error(ErrorCode::kUnsafeToPatch, "process " + std::to_string(target_.pid()) + " already carries " +
                                                 std::to_string(POLUS_MAX_PATCHES) + " patches; roll some back first");
    }
    active_ = active_redirects(registry_);
    plans_ = plan_redirects(patch_, target_, active_);

    target_.seize();
    try {
      load();
      commit();
    } catch (...) {
      undo_load();
      throw;
    }
    return record_commit();
  }

 private:
  void resolve_imports() {
    for (const PatchFunction& f : patch_.functions) {
      if (f.side == POLUS_OLD && f.resolved_slot) {
        slot_values_.emplace_back(f.resolved_slot, target_.symbols().resolve(f.name, SymbolKind::kFunction).address.address());
      }
    }
    for (const PatchImport& imp : patch_.imports) {
      slot_values_.emplace_back(imp.slot, target_.symbols().resolve(imp.name, SymbolKind::kAny).address.address());
    }
  }

  RemoteAddr trap() const { return RemoteAddr(scratch_arena_); }
  RemoteAddr scratch_string(const std::string& text) {
    if (text.size() + 1 > kArenaScratchBytes - kArenaStringOffset) {
      throw Error(ErrorCode::kPatchMalformed, "path too long: " + text);
    }
    RemoteAddr at(scratch_arena_ + kArenaStringOffset);
    target_.memory().write_bytes(at, text.c_str(), text.size() + 1);
    return at;
  }

  /// Loads agent and patch through one borrowed thread while the others keep running.
  void load() {
    pid_t tid = target_.stop_thread_safe_to_borrow();
    BorrowedThread thread(target_.session(), target_.memory(), tid, target_.syscall_instruction());
    const uint64_t main_text_start = target_.symbols().main_executable().text_start;
    const uint64_t main_text_end = target_.symbols().main_executable().text_end;

    if (agent_) {
      scratch_arena_ = registry_.registry.arena_count > 0 ? registry_.registry.arenas[0].base : 0;
    }
    if (scratch_arena_ == 0) {
      scratch_arena_ = target_.map_memory(thread, main_text_start, main_text_end, kArenaSize, PROT_READ | PROT_EXEC);
      new_arenas_.push_back(scratch_arena_);
      std::vector<uint8_t> traps(16, 0xcc);
      target_.memory().write_bytes(RemoteAddr(scratch_arena_), traps.data(), traps.size());
    }
    if (!agent_) {
      RemoteAddr path = scratch_string(options_.agent_path);
      uint64_t handle = thread.call(target_.libc_function("dlopen"), {path.address(), RTLD_NOW | RTLD_GLOBAL}, trap(),
                                    TargetContext::step_deadline());
      if (handle == 0) {
        uint64_t message = thread.call(target_.libc_function("dlerror"), {}, trap(), TargetContext::step_deadline());
        throw Error(ErrorCode::kLoadFailed, "cannot load the Polus agent " + options_.agent_path + " into process " +
                                                std::to_string(target_.pid()) + ": " +
                                                target_.memory().read_c_string(RemoteAddr(message), 1024));
      }
      agent_handle_ = handle;
      agent_ = agent_location_at(options_.agent_path, target_.memory().read(RemotePtr<uint64_t>(handle)));
      registry_ = read_registry(target_.memory(), *agent_);
    }

    RemoteAddr path = scratch_string(patch_.path);
    patch_handle_ = thread.call(agent_->load_patch, {path.address()}, trap(), TargetContext::step_deadline());
    if (patch_handle_ == 0) {
      polus_agent_registry registry = target_.memory().read(agent_->registry);
      std::string error(registry.last_error, strnlen(registry.last_error, sizeof registry.last_error));
      throw Error(ErrorCode::kLoadFailed, "dlopen of patch " + patch_.path + " failed in process " +
                                              std::to_string(target_.pid()) + ": " + error);
    }
    patch_bias_ = target_.memory().read(RemotePtr<uint64_t>(patch_handle_));
    polus_patch loaded{};
    target_.memory().read_bytes(RemoteAddr(patch_bias_ + patch_.descriptor), &loaded, sizeof loaded);
    if (loaded.magic != POLUS_PATCH_MAGIC) {
      throw Error(ErrorCode::kLoadFailed, "the patch loaded in the target does not match " + patch_.path +
                                              " (was the file replaced while loading?)");
    }
    for (const auto& [slot, value] : slot_values_) {
      target_.memory().write(RemotePtr<uint64_t>(patch_bias_ + slot), value);
    }
    for (PlannedRedirect& plan : plans_) prepare_redirect(thread, plan);

    record_bytes_ = (sizeof(polus_patch_record) + plans_.size() * sizeof(polus_redirect_record) + 4095) & ~4095ull;
    record_ = target_.map_memory(thread, 0, 0, record_bytes_, PROT_READ | PROT_WRITE);
    write_record(POLUS_STATE_APPLYING);
    run_callbacks(thread, POLUS_CB_PRE_UPDATE);
  }

  void run_callbacks(BorrowedThread& thread, uint32_t kind) {
    for (size_t i = 0; i < patch_.callbacks.size(); ++i) {
      if (patch_.callbacks[i].kind != kind) continue;
      // The arguments live in the scratch page, after the strings.
      polus_callback_args args{kind, ~0u, static_cast<uint64_t>(thread.tid()), 0, 0};
      RemoteAddr at(scratch_arena_ + kArenaScratchBytes - sizeof args);
      target_.memory().write_bytes(at, &args, sizeof args);
      uint64_t fn = patch_bias_ + reinterpret_cast<uint64_t>(patch_.callbacks[i].fn);
      int64_t result = static_cast<int32_t>(thread.call(RemoteAddr(fn), {at.address()}, trap(), TargetContext::step_deadline()));
      if (result != 0 && kind == POLUS_CB_PRE_UPDATE) {
        throw Error(ErrorCode::kUnsafeToPatch, "the patch's pre-update callback refused the update (returned " +
                                                   std::to_string(result) + "); the target is unchanged");
      }
    }
  }

  /// A trampoline slot within reach of `site`: a free one of an existing arena, or a new arena.
  uint64_t allocate_slot(BorrowedThread& thread, uint64_t site) {
    std::vector<uint64_t> used;
    for (const PatchRecordView& p : registry_.patches) {
      for (const polus_redirect_record& r : p.redirects) used.push_back(r.trampoline);
    }
    for (const PlannedRedirect& plan : plans_) used.push_back(plan.record.trampoline);
    std::vector<uint64_t> arenas(new_arenas_);
    for (uint32_t i = 0; i < registry_.registry.arena_count; ++i) arenas.push_back(registry_.registry.arenas[i].base);
    for (uint64_t arena : arenas) {
      for (uint64_t slot = arena + kArenaScratchBytes; slot + kTrampolineSlotSize <= arena + kArenaSize;
           slot += kTrampolineSlotSize) {
        if (!jump_reaches(site, slot)) break;
        if (std::find(used.begin(), used.end(), slot) == used.end()) return slot;
      }
    }
    const LoadedObject* object = target_.symbols().object_containing(RemoteAddr(site));
    uint64_t arena = target_.map_memory(thread, object ? object->text_start : site, object ? object->text_end : site + 1,
                                        kArenaSize, PROT_READ | PROT_EXEC);
    new_arenas_.push_back(arena);
    return arena + kArenaScratchBytes;
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
      r.trampoline = allocate_slot(thread, r.patch_site);
      r.flags |= POLUS_REDIRECT_VIA_TRAMPOLINE;
      std::vector<uint8_t> slot = encode_trampoline(r.new_function);
      target_.memory().write_bytes(RemoteAddr(r.trampoline), slot.data(), slot.size());
    }
  }

  void write_record(uint32_t state) {
    polus_patch_record header{};
    header.magic = POLUS_AGENT_MAGIC;
    header.id = registry_.registry.next_patch_id;
    header.dl_handle = patch_handle_;
    header.descriptor = patch_bias_ + patch_.descriptor;
    header.record_bytes = record_bytes_;
    header.applied_at_unix_ns = applied_at_unix_ns_;
    header.apply_wall_ns = apply_wall_ns_;
    header.pause_ns = pause_ns_;
    header.state = state;
    header.redirect_count = static_cast<uint32_t>(plans_.size());
    copy_name(header.name, patch_.name);
    copy_name(header.path, patch_.path);
    target_.memory().write(RemotePtr<polus_patch_record>(record_), header);
    for (size_t i = 0; i < plans_.size(); ++i) {
      target_.memory().write(RemotePtr<polus_redirect_record>(record_ + sizeof header) + static_cast<int64_t>(i),
                             plans_[i].record);
    }
  }

  /// Stops every thread, writes the jumps when no thread is in the way, resumes. The only
  /// time the whole target is stopped; it holds no file I/O and no symbol work.
  void commit() {
    bool need_stacks = std::any_of(plans_.begin(), plans_.end(), [](const PlannedRedirect& p) {
      return !p.stacked_on && (p.analysis.call_in_overwritten || p.analysis.requires_inactive_function);
    });
    std::vector<std::pair<uint64_t, std::vector<uint8_t>>> writes;
    for (const PlannedRedirect& plan : plans_) {
      const polus_redirect_record& r = plan.record;
      if (r.flags & POLUS_REDIRECT_REUSED_TRAMPOLINE) {
        std::vector<uint8_t> target(8);
        std::memcpy(target.data(), &r.new_function, 8);
        writes.emplace_back(r.trampoline + 6, target);  // the .quad of `jmp *0(%rip)`
      } else {
        writes.emplace_back(r.patch_site, encode_jump(r.patch_site, r.trampoline ? r.trampoline : r.new_function));
      }
    }
    std::string reason;
    for (;;) {
      auto pause_start = Clock::now();
      target_.session().stop_all(TargetContext::step_deadline());
      reason.clear();
      for (const ThreadSnapshot& thread : target_.snapshot_threads(need_stacks)) {
        for (const PlannedRedirect& plan : plans_) {
          reason = busy_reason(plan, thread);
          if (!reason.empty()) break;
        }
        if (!reason.empty()) break;
      }
      if (reason.empty()) {
        for (const auto& [address, bytes] : writes) target_.memory().write_bytes(RemoteAddr(address), bytes.data(), bytes.size());
        committed_ = true;
        target_.session().resume_all();
        pause_ns_ = elapsed_ns(pause_start);
        applied_at_unix_ns_ = unix_now_ns();
        return;
      }
      target_.session().resume_all();
      if (Clock::now() >= target_.deadline()) {
        throw Error(ErrorCode::kUnsafeToPatch, "cannot redirect now: " + reason + "; gave up after " +
                                                   std::to_string(options_.timeout.count()) + " ms, target unchanged");
      }
      spdlog::debug("commit postponed: {}", reason);
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }

  PatchInfo record_commit() {
    apply_wall_ns_ = elapsed_ns(started_);
    write_record(POLUS_STATE_COMMITTED);
    polus_agent_registry& reg = registry_.registry;
    reg.patches[reg.patch_count++] = record_;
    reg.next_patch_id++;
    for (uint64_t arena : new_arenas_) {
      if (reg.arena_count < POLUS_MAX_ARENAS) reg.arenas[reg.arena_count++] = polus_arena{arena, kArenaSize};
    }
    target_.memory().write(agent_->registry, reg);
    std::vector<polus_redirect_record> redirects;
    for (const PlannedRedirect& plan : plans_) redirects.push_back(plan.record);
    polus_patch_record header = target_.memory().read(RemotePtr<polus_patch_record>(record_));
    spdlog::info("applied patch {} to process {}: {} functions, pause {} us, total {} ms", patch_.name, target_.pid(),
                 plans_.size(), pause_ns_ / 1000, apply_wall_ns_ / 1000000);
    return info_from_record(header, redirects);
  }

  /// Puts the target back as it was after a failure between load and commit.
  void undo_load() noexcept {
    if (committed_) return;
    try {
      if (patch_handle_ == 0 && agent_handle_ == 0 && new_arenas_.empty() && record_ == 0) return;
      target_.extend_deadline(std::chrono::seconds(5));
      target_.session().resume_all();
      pid_t tid = target_.stop_thread_safe_to_borrow();
      BorrowedThread thread(target_.session(), target_.memory(), tid, target_.syscall_instruction());
      if (patch_handle_ && agent_) thread.call(agent_->unload_patch, {patch_handle_}, trap(), TargetContext::step_deadline());
      if (agent_handle_) thread.call(target_.libc_function("dlclose"), {agent_handle_}, trap(), TargetContext::step_deadline());
      if (record_) target_.unmap_memory(thread, record_, record_bytes_);
      for (uint64_t arena : new_arenas_) target_.unmap_memory(thread, arena, kArenaSize);
    } catch (const std::exception& e) {
      spdlog::error("could not fully clean up after a failed apply: {}", e.what());
    }
  }

  Clock::time_point started_;
  EngineOptions options_;
  PatchDescription patch_;
  TargetContext target_;
  std::optional<AgentLocation> agent_;
  RegistrySnapshot registry_;
  std::map<uint64_t, const polus_redirect_record*> active_;
  std::vector<PlannedRedirect> plans_;
  std::vector<std::pair<uint64_t, uint64_t>> slot_values_;  // (link-time slot, value)
  std::vector<uint64_t> new_arenas_;
  uint64_t scratch_arena_ = 0;
  uint64_t agent_handle_ = 0;
  uint64_t patch_handle_ = 0;
  uint64_t patch_bias_ = 0;
  uint64_t record_ = 0;
  uint64_t record_bytes_ = 0;
  uint64_t pause_ns_ = 0;
  uint64_t apply_wall_ns_ = 0;
  uint64_t applied_at_unix_ns_ = 0;
  bool committed_ = false;
};

}  // namespace

PatchInfo apply_patch(pid_t pid, const std::string& patch_path, const EngineOptions& options) {
  return Applier(pid, patch_path, options).run();
}

PatchInfo rollback_patch(pid_t pid, const EngineOptions& options) {
  auto started = Clock::now();
  TargetContext target(pid, options.symbols, started + options.timeout);
  std::optional<AgentLocation> agent = locate_agent(pid, target.symbols().maps());
  RegistrySnapshot registry;
  if (agent) registry = read_registry(target.memory(), *agent);
  if (registry.patches.empty()) {
    throw Error(ErrorCode::kNothingToRollBack, "process " + std::to_string(pid) + " has no applied Polus patch to roll back");
  }
  const PatchRecordView& top = registry.patches.back();

  target.seize();
  // Commit of the rollback: put back the bytes (or trampoline targets) in reverse order.
  auto pause_start = Clock::now();
  target.session().stop_all(TargetContext::step_deadline());
  for (auto r = top.redirects.rbegin(); r != top.redirects.rend(); ++r) {
    target.memory().write_bytes(RemoteAddr(r->patch_site), r->saved_bytes, r->saved_length);
    if (r->flags & POLUS_REDIRECT_REUSED_TRAMPOLINE) {
      target.memory().write(RemotePtr<uint64_t>(r->trampoline + 6), r->previous_target);
    }
  }
  // No jump leads into the patch any more; if no thread is inside its code right now,
  // none ever will be again and it can be unloaded.
  std::vector<AddressRange> patch_code;
  for (const MappedRegion& region : target.symbols().maps()) {
    if (region.executable && region.path == top.header.path) patch_code.push_back({region.start, region.end, top.header.name});
  }
  std::string still_running;
  for (const ThreadSnapshot& thread : target.snapshot_threads(true)) {
    if (thread_touches(thread, patch_code)) still_running = "thread " + std::to_string(thread.tid);
  }
  target.session().resume_all();
  uint64_t pause_ns = elapsed_ns(pause_start);

  polus_agent_registry reg = registry.registry;
  reg.patches[--reg.patch_count] = 0;
  target.memory().write(agent->registry, reg);
  {
    pid_t tid = target.stop_thread_safe_to_borrow();
    BorrowedThread thread(target.session(), target.memory(), tid, target.syscall_instruction());
    RemoteAddr trap(reg.arena_count > 0 ? reg.arenas[0].base : 0);
    if (still_running.empty() && trap) {
      if (thread.call(agent->unload_patch, {top.header.dl_handle}, trap, TargetContext::step_deadline()) != 0) {
        spdlog::warn("dlclose of patch {} failed in the target; it stays loaded", top.header.name);
      }
    } else {
      spdlog::warn("patch {} stays loaded: {} was still running its code", top.header.name, still_running);
    }
    target.unmap_memory(thread, top.address.address(), top.header.record_bytes);
  }
  PatchInfo info = info_from_record(top.header, top.redirects);
  info.state = patch_state_name(POLUS_STATE_ROLLED_BACK);
  info.pause_ns = pause_ns;
  info.apply_wall_ns = elapsed_ns(started);
  spdlog::info("rolled back patch {} in process {}: pause {} us", info.name, pid, pause_ns / 1000);
  return info;
}

ProcessStatus read_status(pid_t pid) {
  ProcessStatus status;
  status.pid = pid;
  std::vector<MappedRegion> maps = read_process_maps(pid);
  std::optional<AgentLocation> agent = locate_agent(pid, maps);
  if (!agent) return status;
  status.agent_loaded = true;
  status.agent_path = agent->path;
  ProcMemory memory(pid);
  RegistrySnapshot registry = read_registry(memory, *agent);
  for (const PatchRecordView& p : registry.patches) status.patches.push_back(info_from_record(p.header, p.redirects));
  return status;
}

}  // namespace polus
