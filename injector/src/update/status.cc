// Reading what Polus did to a process: the registry as the operator sees it (status) and
// every thread's call stack (stacks). Status needs no ptrace and never stops the target.
#include <string.h>

#include <algorithm>
#include <optional>

#include "binary/symbol_match.h"
#include "binary/unwinder.h"
#include "polus/patch.h"
#include "common/format.h"
#include "polus/engine.h"
#include "update/abandon.h"
#include "update/access_policy.h"
#include "update/engine_internal.h"
#include "update/registry.h"
#include "update/target.h"

namespace polus {

PatchInfo info_from_record(const PatchRecordView& record) {
  const polus_patch_record& header = record.header;
  PatchInfo info;
  info.id = header.id;
  info.name = header.name;
  info.path = header.path;
  info.sha256 = record_sha256(header);
  info.applied_by_uid = header.applied_by_uid;
  info.state = patch_state_name(header.state);
  info.direction = header.direction == POLUS_UPDATE_ROLLBACK ? "rollback" : "apply";
  info.applied_at_unix_ns = header.applied_at_unix_ns;
  info.committed_at_unix_ns = header.committed_at_unix_ns;
  info.apply_wall_ns = header.apply_wall_ns;
  info.pause_ns = header.pause_ns;
  info.inspections = header.inspections;
  info.unwind_fallbacks = header.unwind_fallbacks;
  for (const polus_redirect_record& r : record.redirects) {
    info.redirects.push_back(RedirectInfo{r.old_name, r.new_name, r.old_function, r.new_function, r.patch_site,
                                          r.trampoline, (r.flags & POLUS_REDIRECT_STACKED) != 0});
  }
  for (const polus_watched_function& w : record.watched) info.watched.emplace_back(w.name);
  for (const polus_holder& h : record.holders) {
    auto w = std::find_if(record.watched.begin(), record.watched.end(),
                          [&](const polus_watched_function& x) { return x.start == h.function; });
    info.holders.push_back({static_cast<pid_t>(h.tid), w != record.watched.end() ? w->name : hex(h.function)});
  }
  return info;
}

std::vector<ThreadStack> inspect_stacks(pid_t pid) {
  TargetContext target(pid, SymbolOptions{}, Clock::now() + std::chrono::seconds(5));
  Unwinder unwinder(target.symbols(), pid);
  target.seize();
  // Unwind with every thread stopped; name the frames after letting them go (symbol tables
  // are read lazily and can take milliseconds).
  std::vector<std::pair<pid_t, UnwindResult>> unwound;
  {
    Pause pause(target.session());
    for (pid_t tid : target.session().thread_ids()) {
      unwound.emplace_back(tid, unwinder.unwind(target.memory(), target.session().get_regs(tid)));
    }
  }
  std::vector<ThreadStack> stacks;
  for (const auto& [tid, result] : unwound) {
    ThreadStack stack{tid, {}, result.note};
    for (size_t i = 0; i < result.frames.size(); ++i) {
      const StackFrame& f = result.frames[i];
      auto symbol = target.symbols().symbol_containing(RemoteAddr(i == 0 ? f.pc : f.pc - 1));
      std::string line = hex(f.pc) + " " +
                         (symbol ? symbol->qualified_name() + "+" + hex(f.pc - symbol->address.address()) : "??");
      if (symbol) line += " [" + symbol->object_path.substr(symbol->object_path.rfind('/') + 1) + "]";
      if (f.from_scan) line += " (scanned)";
      stack.frames.push_back(line);
    }
    stacks.push_back(std::move(stack));
  }
  return stacks;
}

ProcessStatus read_status(pid_t pid, const Caller& caller) {
  require_access(caller, pid, Action::kStatus);
  ProcessStatus status;
  status.pid = pid;
  std::vector<MappedRegion> maps = read_process_maps(pid);
  std::optional<AgentLocation> agent = locate_agent(pid, maps);
  if (!agent) return status;
  status.agent_loaded = true;
  status.agent_path = agent->path;
  ProcMemory memory(pid);
  RegistrySnapshot registry = read_registry(memory, *agent);
  const polus_sync_state& sync = registry.registry.sync;
  status.sync_active = sync.active != 0;
  status.write_faults = sync.faults;
  status.false_sharing = sync.false_sharing;
  status.chained_faults = sync.chained_faults;
  const polus_update_failure& failure = registry.registry.last_failure;
  if (failure.patch_id != 0) {
    FailureInfo f;
    f.patch_id = failure.patch_id;
    f.patch_name = std::string(failure.patch_name, strnlen(failure.patch_name, sizeof failure.patch_name));
    f.direction = failure.direction == POLUS_UPDATE_ROLLBACK ? "rollback" : "apply";
    f.signal = static_cast<int>(failure.signal);
    f.at_unix_ns = failure.at_unix_ns;
    f.reason = std::string(failure.reason, strnlen(failure.reason, sizeof failure.reason));
    status.last_failure = f;
  }
  std::optional<ProcessSymbols> symbols;
  // Taking the operation lock serialises operations; a record left mid-operation while no
  // operation holds it was cut short (the next command completes or undoes it).
  const bool operation_running = OperationLock::busy(pid);
  for (const PatchRecordView& p : registry.patches) {
    PatchInfo info = info_from_record(p);
    if (!may_touch_patch(caller, p.header.applied_by_uid)) {
      // Applied by someone else (root): the caller learns that it is there, not what it does.
      PatchInfo withheld;
      withheld.id = info.id;
      withheld.name = info.name;
      withheld.state = info.state;
      withheld.applied_by_uid = info.applied_by_uid;
      withheld.applied_at_unix_ns = info.applied_at_unix_ns;
      withheld.details_withheld = true;
      status.patches.push_back(std::move(withheld));
      continue;
    }
    if (!operation_running && p.header.state == POLUS_STATE_APPLYING) info.state = "interrupted-apply";
    if (!operation_running && p.header.state == POLUS_STATE_ROLLING_BACK) info.state = "interrupted-rollback";
    if (p.header.state == POLUS_STATE_SYNCING && status.sync_active && sync.fault.function) {
      if (!symbols) symbols = ProcessSymbols::load(pid);
      info.fault = describe_sync_fault(sync.fault, *symbols, p.header.name);
      if (fault_pending(sync)) {
        info.state = "faulted";
        info.fault += "; the next polusctl command on this process (or polusd) abandons the update";
      } else {
        info.fault += "; the update is being abandoned";
      }
    }
    // The record keeps names in 64-byte fields; a name that fills one was probably cut
    // (C++ names often are): name the address again, whole.
    auto whole_name = [&](std::string& name, uint64_t address) {
      if (name.size() + 1 < POLUS_NAME_BYTES) return;
      if (!symbols) symbols = ProcessSymbols::load(pid);
      auto symbol = symbols->symbol_containing(RemoteAddr(address));
      if (symbol && symbol->address.address() == address) name = symbol->qualified_name();
    };
    for (RedirectInfo& r : info.redirects) {
      whole_name(r.old_name, r.old_function);
      whole_name(r.new_name, r.new_function);
      r.new_name = display_name(r.new_name);  // a C++ patch's new function, demangled
    }
    for (size_t i = 0; i < info.watched.size() && i < p.watched.size(); ++i) whole_name(info.watched[i], p.watched[i].start);
    for (size_t i = 0; i < info.holders.size() && i < p.holders.size(); ++i) whole_name(info.holders[i].function, p.holders[i].function);
    if (p.header.state == POLUS_STATE_SYNCING && status.sync_active) {
      if (!symbols) symbols = ProcessSymbols::load(pid);
      for (const polus_tracked_item& item : read_tracked_items(memory, sync)) {
        auto symbol = symbols->symbol_containing(RemoteAddr(item.address));
        std::string name = symbol && symbol->address.address() == item.address ? symbol->qualified_name()
                                                                                : "heap " + hex(item.address);
        info.items.push_back({name, (item.side & POLUS_ITEM_SIDE_MASK) == POLUS_OLD ? "old" : "new", item.address, item.size, item.sync_calls});
      }
    }
    status.patches.push_back(std::move(info));
  }
  return status;
}

}  // namespace polus
