// polusctl status and polusctl stacks, their runs (cmd_status.cc parses them).
#include "render.h"
#include "run.h"

namespace polusctl {

namespace {

/// One process as before: a sentence, write tracking, the patch table.
std::string status_human(const polus::ProcessStatus& status) {
  std::string out;
  if (const auto& f = status.last_failure) {
    out += format("last abandoned update: %s of patch %s (id %llu) at %s: %s\n", f->direction.c_str(), f->patch_name.c_str(),
                  static_cast<unsigned long long>(f->patch_id), utc_time(f->at_unix_ns).c_str(), f->reason.c_str());
  }
  if (!status.agent_loaded || status.patches.empty()) return out + format("process %d: no patches applied\n", status.pid);
  out += format("process %d: %zu patch(es) applied\n", status.pid, status.patches.size());
  if (status.sync_active) {
    out += format("write tracking on: %llu write faults, %llu false sharing, %llu passed to the target's handler\n",
                  static_cast<unsigned long long>(status.write_faults), static_cast<unsigned long long>(status.false_sharing),
                  static_cast<unsigned long long>(status.chained_faults));
  }
  Table table = patch_table();
  for (const auto& p : status.patches) add_patch_rows(table, p, status.pid);
  return out + table.render();
}

}  // namespace

void run_status(const Json& request, Output& out) {
  const bool json = request.value("json", false);
  if (request.contains("targets") && single_pid(request["targets"])) {
    polus::ProcessStatus status = polus::read_status(request["targets"]["pids"][0].get<pid_t>());
    out.out += json ? status_json(status).dump() + "\n" : status_human(status);
    return;
  }
  const bool all = !request.contains("targets");
  std::vector<pid_t> pids = all ? polus::patched_processes() : resolve_targets(request["targets"]);
  Json processes = Json::array();
  Table table({"PID", "COMMAND", "ID", "NAME", "STATE", "APPLIED (UTC)"}, {true, false, true});
  size_t patched = 0;
  for (pid_t pid : pids) {
    polus::ProcessStatus status;
    try {
      status = polus::read_status(pid);
    } catch (const polus::Error& e) {
      if (!all) throw;
      if (e.code() == polus::ErrorCode::kNoSuchProcess) continue;  // exited meanwhile
      // One unreadable registry (another Polus version's agent, say) must not hide the others.
      processes.push_back({{"pid", pid}, {"error", polus::error_code_name(e.code())}, {"message", e.what()}});
      table.add_row({std::to_string(pid), task_name(pid), "-", "-", std::string("unreadable: ") + polus::error_code_name(e.code()), "-"});
      ++patched;
      continue;
    }
    if (all && status.patches.empty()) continue;  // the agent stays loaded after the last rollback
    processes.push_back(status_json(status));
    if (!status.patches.empty()) ++patched;
    if (status.patches.empty()) table.add_row({std::to_string(pid), task_name(pid), "-", "-", "no patches", "-"});
    for (const auto& p : status.patches) {
      table.add_row({std::to_string(pid), task_name(pid), std::to_string(p.id), p.name, p.state, utc_time(p.applied_at_unix_ns)});
    }
  }
  if (json) {
    out.out += Json{{"processes", processes}}.dump() + "\n";
  } else if (pids.empty() || (all && patched == 0)) {
    out.out += "no process has a Polus patch applied\n";
  } else {
    out.out += table.render();
  }
}

void run_stacks(const Json& request, Output& out) {
  const pid_t pid = request["pid"].get<pid_t>();
  std::vector<polus::ThreadStack> stacks = polus::inspect_stacks(pid);
  if (request.value("json", false)) {
    Json threads = Json::array();
    for (const auto& t : stacks) {
      threads.push_back({{"tid", t.tid}, {"name", task_name(pid, t.tid)}, {"frames", t.frames}, {"note", t.note}});
    }
    out.out += Json{{"pid", pid}, {"threads", threads}}.dump() + "\n";
    return;
  }
  for (const auto& thread : stacks) {
    out.out += "thread " + std::to_string(thread.tid) + " (" + task_name(pid, thread.tid) + ")" +
               (thread.note.empty() ? "" : " (" + thread.note + ")") + "\n";
    for (const auto& frame : thread.frames) out.out += "  " + frame + "\n";
  }
}

}  // namespace polusctl
