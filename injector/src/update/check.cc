// Reading a patch without a target (describe_patch_file, polusctl info) and a dry run of apply
// (check_patch, polusctl check): the plan apply makes, and where the threads are, read through
// /proc without attaching to or stopping anything.
#include <sys/user.h>

#include <algorithm>
#include <set>

#include "binary/unwinder.h"
#include "common/format.h"
#include "polus/engine.h"
#include "polus/error.h"
#include "process/proc_files.h"
#include "update/data_update.h"
#include "update/patch_file.h"
#include "update/patch_trust.h"
#include "update/plan.h"
#include "update/reach_checks.h"
#include "update/registry.h"
#include "update/target.h"

namespace polus {

namespace {

const char* callback_kind_name(uint32_t kind) {
  switch (kind) {
    case POLUS_CB_PRE_UPDATE: return "pre-update";
    case POLUS_CB_THREAD: return "thread";
    case POLUS_CB_FUNCTION: return "function";
    case POLUS_CB_DATA: return "data";
    case POLUS_CB_POST_UPDATE: return "post-update";
    default: return "unknown";
  }
}

PatchFileInfo describe(const PatchDescription& patch) {
  PatchFileInfo info;
  info.path = patch.path;
  info.name = patch.name;
  info.description = patch.description;
  info.sha256 = patch.content_sha256;
  info.size_bytes = patch.bytes ? patch.bytes->size() : 0;
  std::set<uint32_t> replacing;
  for (const auto& [old_index, new_index] : patch.function_replacements()) {
    info.replaces.push_back({patch.functions[old_index].name, patch.functions[new_index].name});
    replacing.insert(new_index);
  }
  for (uint32_t i = 0; i < patch.functions.size(); ++i) {
    const PatchFunction& f = patch.functions[i];
    if (f.side == POLUS_NEW && !replacing.count(i)) info.adds.push_back(f.name);
    if (f.side == POLUS_OLD && (f.resolved_slot || !replacing.empty())) {
      // Old functions the patch only uses (resolved slots) or replaces; list the used ones.
      bool replaced = std::any_of(info.replaces.begin(), info.replaces.end(),
                                  [&](const PatchFileInfo::Replacement& r) { return r.old_name == f.name; });
      if (!replaced && f.resolved_slot) info.uses.push_back(f.name);
    }
  }
  for (const auto& [from, to] : patch.mappings_of(POLUS_MAP_DATA)) {
    const PatchData& o = patch.data[from];
    const PatchData& n = patch.data[to];
    info.syncs.push_back({o.name, n.name, o.size, n.size, ((o.flags | n.flags) & POLUS_DATA_READ_ONLY) != 0,
                          ((o.flags | n.flags) & POLUS_DATA_HEAP_ROOT) != 0, o.post_sync != 0 || n.post_sync != 0});
  }
  for (const PatchData& d : patch.data) {
    if (d.side == POLUS_OLD && d.resolved_slot) info.uses.push_back(d.name);
  }
  for (const PatchImport& imp : patch.imports) info.uses.push_back(imp.name);
  for (const polus_callback& cb : patch.callbacks) info.callbacks.emplace_back(callback_kind_name(cb.kind));
  for (const PatchBuildId& b : patch.build_ids) info.build_ids.push_back({b.object, b.hex});
  return info;
}

/// Resolves every name the patch uses in the target, collecting every failure instead of
/// stopping at the first; throws them together with the first failure's code.
std::vector<CheckReport::Name> resolve_every_name(const PatchDescription& patch, const ProcessSymbols& symbols) {
  std::vector<CheckReport::Name> names;
  std::vector<std::string> failures;
  ErrorCode first = ErrorCode::kSymbolNotFound;
  auto resolve = [&](const std::string& kind, const std::string& name, SymbolKind symbol_kind) {
    try {
      Symbol s = symbols.resolve(name, symbol_kind);
      names.push_back({kind, s.qualified_name(), s.address.address(), s.object_path});
    } catch (const Error& e) {
      if (failures.empty()) first = e.code();
      failures.push_back(e.what());
    }
  };
  std::set<uint32_t> replaced;
  for (const auto& [old_index, new_index] : patch.function_replacements()) replaced.insert(old_index);
  for (uint32_t i = 0; i < patch.functions.size(); ++i) {
    const PatchFunction& f = patch.functions[i];
    if (f.side == POLUS_OLD && (f.resolved_slot || replaced.count(i))) resolve("function", f.name, SymbolKind::kFunction);
  }
  for (const PatchData& d : patch.data) {
    if (d.side == POLUS_OLD) resolve("data", d.name, SymbolKind::kData);
  }
  for (const PatchImport& imp : patch.imports) resolve("import", imp.name, SymbolKind::kAny);
  if (failures.empty()) return names;
  std::string message = failures.size() == 1 ? failures[0] : std::to_string(failures.size()) + " names do not resolve:";
  if (failures.size() > 1) {
    for (const std::string& f : failures) message += "\n  " + f;
  }
  throw Error(first, message);
}

/// Which of `ranges` each thread has on its stack now, read without stopping it: a thread
/// blocked or preempted has its pc and sp in /proc/PID/task/TID/syscall; its stack is unwound
/// from those (CFI), and where that walk cannot be trusted every stack word is checked (as
/// the sync phase does). Threads running on a CPU cannot be read this way and are listed.
void find_active_threads(TargetContext& target, CheckReport& report, const std::vector<AddressRange>& ranges) {
  Unwinder unwinder(target.symbols(), target.pid());
  for (pid_t tid : list_tasks(target.pid())) {
    std::optional<TaskSyscall> where = read_task_syscall(target.pid(), tid);
    if (!where) continue;  // gone
    if (where->running) {
      report.threads_not_inspected.push_back(tid);
      continue;
    }
    user_regs_struct regs{};
    regs.rip = where->pc;
    regs.rsp = where->sp;
    ThreadSnapshot snapshot = snapshot_thread(target.memory(), target.symbols().maps(), tid, regs);
    UnwindResult unwound = unwinder.unwind(target.memory(), regs);
    // Only rip and rsp are known: a walk that needed another register, or a scan, is not exact.
    const bool exact = unwound.complete && !unwound.used_scan;
    for (size_t r = 0; r < ranges.size(); ++r) {
      bool active = false;
      if (exact) {
        for (size_t i = 0; i < unwound.frames.size() && !active; ++i) {
          active = ranges[r].contains(i == 0 ? unwound.frames[i].pc : unwound.frames[i].pc - 1);
        }
      } else {
        active = thread_touches(snapshot, {ranges[r]}) != nullptr;
      }
      if (!active) continue;
      if (r < report.functions.size()) report.functions[r].active_threads.push_back(tid);
      else report.watched[r - report.functions.size()].active_threads.push_back(tid);
    }
  }
}

}  // namespace

PatchFileInfo describe_patch_file(const std::string& path, const EngineOptions& options) {
  PatchFileInfo info = describe(read_patch_file(path));
  try {
    check_patch_trusted(path, TrustOptions{options.allowed_owners});
  } catch (const Error& e) {
    info.trust = e.what();
  }
  return info;
}

CheckReport check_patch(pid_t pid, const std::string& patch_path, const EngineOptions& options) {
  PatchDescription patch = read_trusted_patch(patch_path, TrustOptions{options.allowed_owners});
  CheckReport report;
  report.pid = pid;
  report.patch = describe(patch);
  TargetContext target(pid, options.symbols, Clock::now() + options.timeout);
  for (const PatchBuildId& want : patch.build_ids) {
    const LoadedObject* object = want.object.empty() ? &target.symbols().main_executable()
                                                     : target.symbols().find_object(want.object);
    report.build_ids.push_back({want.object.empty() ? (object ? object->path : "") : want.object, want.hex,
                                object ? object->build_id_hex : ""});
  }
  check_build_ids(patch, target.symbols());
  report.resolved = resolve_every_name(patch, target.symbols());
  const DataPlan data = plan_data_update(patch, target.symbols(), 0, POLUS_UPDATE_APPLY);
  report.changes_data = !data.empty();

  RegistrySnapshot registry;
  std::optional<AgentLocation> agent = locate_agent(pid, target.symbols().maps());
  if (agent) registry = read_registry(target.memory(), *agent);
  report.agent_loaded = agent.has_value();
  report.patches_applied = registry.patches.size();
  for (const PatchRecordView& p : registry.patches) {
    if (p.header.state == POLUS_STATE_APPLYING || p.header.state == POLUS_STATE_ROLLING_BACK) {
      report.notes.push_back("patch " + std::string(p.header.name) + " (id " + std::to_string(p.header.id) + ") was " +
                             (p.header.state == POLUS_STATE_APPLYING ? "interrupted while applying: apply undoes it first"
                                                                     : "interrupted while rolling back: apply completes that first"));
    }
  }
  check_registry_accepts_patch(registry, pid);
  auto active = active_redirects(registry);
  std::vector<PlannedRedirect> plans = plan_redirects(patch, target, active);
  std::vector<Symbol> replaced;
  for (const PlannedRedirect& plan : plans) replaced.push_back(plan.old_symbol);
  check_copies_reached(target.symbols(), replaced, options.force);  // as apply does, before anything else

  std::vector<AddressRange> ranges;
  for (const PlannedRedirect& plan : plans) {
    CheckReport::Function f;
    f.old_name = plan.old_symbol.qualified_name();
    f.old_address = plan.old_symbol.address.address();
    f.new_name = plan.new_name;
    if (plan.stacked_on) {
      for (const PatchRecordView& p : registry.patches) {
        for (const polus_redirect_record& r : p.redirects) {
          if (&r == plan.stacked_on) f.stacked_on = p.header.id;
        }
      }
    } else if (plan.analysis.requires_inactive_function) {
      f.must_be_inactive = plan.analysis.inactive_reason;
    }
    report.functions.push_back(f);
    ranges.push_back({f.old_address, f.old_address + std::max<uint64_t>(plan.old_symbol.size, 1), f.old_name});
  }
  for (const polus_watched_function& w : data.watched) {
    CheckReport::Function f;
    f.old_name = w.name;
    f.old_address = w.start;
    report.watched.push_back(f);
    ranges.push_back({w.start, std::max(w.end, w.start + 1), w.name});
  }
  find_active_threads(target, report, ranges);
  for (const CheckReport::Function& f : report.functions) {
    if (!f.must_be_inactive.empty() && !f.active_threads.empty()) {
      report.notes.push_back("apply would wait (up to --timeout) until no thread runs " + f.old_name + ": it " +
                             f.must_be_inactive);
    }
  }
  if (report.changes_data) {
    size_t held = std::count_if(report.watched.begin(), report.watched.end(),
                                [](const CheckReport::Function& f) { return !f.active_threads.empty(); });
    report.notes.push_back("a data update: it syncs until no thread runs an old function that uses changed data; " +
                           (held ? std::to_string(held) + " such function(s) run now, so it would keep syncing"
                                 : std::string("none runs now")));
  }
  if (!report.threads_not_inspected.empty()) {
    report.notes.push_back(std::to_string(report.threads_not_inspected.size()) +
                           " thread(s) were running on a CPU and could not be read without stopping them");
  }
  report.notes.push_back("not tried (they need the process stopped): its seccomp filter, the rehearsal (patch constructors run in "
                         "a copy), trampoline slots, the load");
  return report;
}

}  // namespace polus
