#include "update/abandon.h"

#include <signal.h>
#include <string.h>

#include <cstddef>

#include <spdlog/spdlog.h>

#include "common/format.h"
#include "update/data_update.h"
#include "update/engine_internal.h"
#include "update/redirects.h"

namespace polus {

namespace {

RemoteAddr sync_field(const AgentLocation& agent, size_t offset) {
  return RemoteAddr(agent.registry.address() + offsetof(polus_agent_registry, sync) + offset);
}

/// "copy_to_new" (or "0x...") for the function at `address`, "copy_to_new+0x1c" with `offset`.
std::string name_at(const ProcessSymbols& symbols, uint64_t address, bool offset) {
  std::optional<Symbol> symbol = symbols.symbol_containing(RemoteAddr(address));
  if (!symbol) return hex(address);
  uint64_t delta = address - symbol->address.address();
  return symbol->qualified_name() + (offset && delta ? "+" + hex(delta) : "");
}

}  // namespace

polus_sync_state read_sync_state(ProcessMemory& memory, const AgentLocation& agent) {
  return memory.read(RemotePtr<polus_sync_state>(sync_field(agent, 0).address()));
}

std::string signal_name(int signal) {
  const char* abbrev = sigabbrev_np(signal);
  return abbrev ? std::string("SIG") + abbrev : "signal " + std::to_string(signal);
}

std::string describe_sync_fault(const polus_sync_fault& fault, const ProcessSymbols& symbols, const std::string& patch) {
  const bool old_side = fault.side == POLUS_OLD;
  std::string text = std::string("the ") + (fault.kind == POLUS_SYNC_FAULT_PRE ? "pre_sync" : "sync") + " function " +
                     name_at(symbols, fault.function, false) + " of patch " + patch + " (" +
                     (old_side ? "old -> new" : "new -> old") + ", for " + name_at(symbols, fault.item_address, false) +
                     ")";
  if (fault.flags & POLUS_SYNC_FAULT_TIMED_OUT) {
    // Sent out of its fence by the watchdog (update/sync_watchdog.h), or given up by the
    // engine that called it.
    text += " did not return: it loops, or waits for something that does not come; Polus stopped it";
    if (fault.pc) text += " at pc " + name_at(symbols, fault.pc, true);
  } else {
    text += " faulted: " + signal_name(static_cast<int>(fault.signal));
    if (fault.signal == SIGSEGV || fault.signal == SIGBUS) text += " at address " + hex(fault.fault_address);
    if (fault.pc) text += " (pc " + name_at(symbols, fault.pc, true) + ")";
  }
  text += ", thread " + std::to_string(fault.tid);
  if (fault.count > 1) text += " (" + std::to_string(fault.count) + " faults in all)";
  if (!(fault.flags & POLUS_SYNC_FAULT_RESTORED)) {
    text += "; its counterpart was too big to keep a copy of, and may be left half-converted";
  }
  return text;
}

void write_last_failure(ProcessMemory& memory, const AgentLocation& agent, const polus_patch_record& patch,
                        uint32_t direction, int signal, const std::string& reason) {
  polus_update_failure failure{};
  failure.patch_id = patch.id;
  failure.at_unix_ns = unix_now_ns();
  failure.direction = direction;
  failure.signal = static_cast<uint32_t>(signal);
  copy_name(failure.patch_name, patch.name);
  copy_name(failure.reason, reason);
  memory.write(RemotePtr<polus_update_failure>(agent.registry.address() + offsetof(polus_agent_registry, last_failure)),
               failure);
}

Error abandon_before_start(TargetContext& target, const AgentLocation& agent, const polus_patch_record& patch,
                           uint32_t direction, const SyncFunctionFault& fault) {
  target.reload_symbols();  // the patch was loaded by this operation
  const bool apply = direction == POLUS_UPDATE_APPLY;
  std::string message = describe_sync_fault(fault.fault(), target.symbols(), patch.name) + ", run by Polus to start the " +
                        (apply ? "update" : "rollback") + " (the signal was not delivered); " +
                        (apply ? "the update was abandoned before any jump was written: the target is unchanged"
                               : "the rollback was abandoned before any original byte was put back: patch " +
                                     std::string(patch.name) + " stays applied");
  try {
    write_last_failure(target.memory(), agent, patch, direction, static_cast<int>(fault.fault().signal), message);
  } catch (const std::exception& e) {
    spdlog::warn("could not record the failure in the target's registry: {}", e.what());
  }
  return Error(ErrorCode::kLoadFailed, message);
}

Abandoned abandon_update(TargetContext& target, const AgentLocation& agent, PatchRecordView& record,
                         const PatchDescription& patch, Clock::duration sync_timeout) {
  const auto started = Clock::now();
  target.reload_symbols();  // the patch's own symbols name its functions
  target.extend_deadline(std::chrono::seconds(5));
  const polus_sync_fault fault = read_sync_state(target.memory(), agent).fault;
  const std::string name = record.header.name;
  const std::string what = describe_sync_fault(fault, target.symbols(), name);
  const uint32_t from = record.header.direction;
  const uint32_t to = from == POLUS_UPDATE_APPLY ? POLUS_UPDATE_ROLLBACK : POLUS_UPDATE_APPLY;
  const uint64_t bias = patch_load_bias(target.memory(), record.header);
  DataPlan plan = plan_data_update(patch, target.symbols(), bias, to);
  // Which side the target keeps: the one it had before the update began. The write that ran
  // the faulting function landed in its own item; whether the kept side has it depends on
  // which way that function converted.
  const bool kept_side_has_it = (to == POLUS_UPDATE_ROLLBACK) == (fault.side == POLUS_OLD);
  std::string intent = to == POLUS_UPDATE_ROLLBACK
                           ? "the update was abandoned: the target is back on its old code and old data"
                           : "the rollback was abandoned: patch " + name + " stays applied, its new code on its new data";
  if (!kept_side_has_it) {
    intent += " (writes converted by that function since it faulted are not in the " +
              std::string(to == POLUS_UPDATE_ROLLBACK ? "old" : "new") + " data: it is the one that failed)";
  }
  spdlog::info("process {}: {}; abandoning the {}", target.pid(), what, from == POLUS_UPDATE_APPLY ? "update" : "rollback");

  // Written again (a rollback is abandoned): a thread must not be inside the bytes a jump covers.
  std::vector<std::pair<const polus_redirect_record*, PrologueAnalysis>> entries;
  for (const polus_redirect_record& r : record.redirects) {
    if (to != POLUS_UPDATE_APPLY || (r.flags & POLUS_REDIRECT_STACKED)) continue;  // stacked: a jump's target only
    std::optional<Symbol> symbol = target.symbols().symbol_containing(RemoteAddr(r.old_function));
    if (!symbol || symbol->address.address() != r.old_function) {
      throw Error(ErrorCode::kInternal, "cannot find the function at " + hex(r.old_function) + " (" + r.old_name +
                                            ") to write its jump again; " + what);
    }
    entries.emplace_back(&r, analyze_function_entry(target.symbols(), target.memory(), *symbol));
  }
  PauseRequest request;
  request.giving_up = "cannot abandon the update of patch " + name + " now (" + what + ")";
  request.release_between_attempts = true;  // write tracking is on
  request.prepare = [&] {
    target.seize();
    return pid_t{0};
  };
  request.why_busy = [&] {
    if (entries.empty()) return std::string();
    for (const ThreadSnapshot& thread : target.snapshot_threads(true)) {
      for (const auto& [r, entry] : entries) {
        std::string reason = jump_busy_reason(entry, r->old_name, thread);
        if (!reason.empty()) return reason;
      }
    }
    return std::string();
  };
  request.act = [&](const Pause&) {
    ProcessMemory& memory = target.memory();
    // The intent: from here the agent ends tracking despite the fault, later faults are only
    // disabled, and an abandon cut short is taken on by the next command.
    memory.write(RemotePtr<uint32_t>(sync_field(agent, offsetof(polus_sync_state, abandoning)).address()), 1u);
    write_last_failure(memory, agent, record.header, from, static_cast<int>(fault.signal), what + "; " + intent);
    write_record_state(memory, record, to == POLUS_UPDATE_ROLLBACK ? POLUS_STATE_ROLLING_BACK : POLUS_STATE_APPLYING);
    if (to == POLUS_UPDATE_ROLLBACK) restore_jumps(memory, record);
    else write_jumps(memory, record);
    // The update now runs the other way, watching the code it retires (as a rollback or an
    // apply would).
    write_syncing_record(memory, record, to, plan.watched);
  };
  uint64_t max_pause = target.pause_when_free(request);
  target.release();

  const SyncOutcome outcome =
      drive_sync_to_end(target, agent, record, patch, bias, Clock::now() + sync_timeout, max_pause);
  Abandoned result;
  std::string outcome_text;
  if (outcome == SyncOutcome::kDone && to == POLUS_UPDATE_ROLLBACK) {
    retire_patch(target, agent, record);
    result.info = info_from_record(record);
    result.info.state = patch_state_name(POLUS_STATE_ROLLED_BACK);
    outcome_text = intent;
  } else if (outcome == SyncOutcome::kDone) {
    record.header.state = POLUS_STATE_COMMITTED;
    record.header.committed_at_unix_ns = unix_now_ns();
    target.memory().write(record.address, record.header);
    result.info = info_from_record(record);
    outcome_text = intent;
  } else {
    result.info = info_from_record(record);
    outcome_text = (to == POLUS_UPDATE_ROLLBACK
                        ? "the update is being abandoned: the jumps are out, and it syncs back"
                        : "the rollback is being abandoned: patch " + name + " stays applied, its jumps are back in, and it syncs") +
                   std::string(" until no thread runs the code it retires (threads still do); `polusctl finish ") +
                   std::to_string(target.pid()) + "` (or polusd) completes it";
  }
  result.info.pause_ns = max_pause;
  result.info.apply_wall_ns = elapsed_ns(started);
  result.info.fault = what;
  result.message = what + "; " + outcome_text;
  return result;
}

}  // namespace polus
