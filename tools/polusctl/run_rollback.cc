// polusctl rollback and polusctl finish, their runs: undo a patch; complete an update left
// syncing (cmd_rollback.cc parses them).
#include <signal.h>
#include <string.h>

#include "polus/stop_request.h"
#include "render.h"
#include "run.h"

namespace polusctl {

namespace {

/// Runs `act` on every selected process; one process prints as before, several as a table
/// (JSON: "processes"). The first failure's exit status is the command's; the others go on.
void for_each_target(const std::string& action, const Json& request, Output& out,
                     const std::function<polus::PatchInfo(pid_t)>& act) {
  const bool json = request.value("json", false);
  sigset_t stop = polus::stop_signals();
  sigprocmask(SIG_BLOCK, &stop, nullptr);
  std::vector<pid_t> pids = resolve_targets(request["targets"]);
  if (single_pid(request["targets"]) || pids.size() == 1) {
    polus::PatchInfo info = act(pids[0]);
    note_in_flight(request, pids[0], info);
    print_change(action, pids[0], info, json, request.value("daemon", false), out);
  } else {
    Json processes = Json::array();
    Table table({"PID", "ID", "NAME", "STATE", "RESULT"}, {true, true});
    for (pid_t pid : pids) {
      try {
        polus::PatchInfo info = act(pid);
        note_in_flight(request, pid, info);
        processes.push_back({{"pid", pid}, {"result", "ok"}, {"patch", patch_json(info)}});
        table.add_row({std::to_string(pid), std::to_string(info.id), info.name, info.state, "ok"});
      } catch (const polus::Error& e) {
        processes.push_back({{"pid", pid}, {"result", "error"}, {"error", polus::error_code_name(e.code())}, {"message", e.what()}});
        table.add_row({std::to_string(pid), "-", "-", "-", polus::error_code_name(e.code())});
        out.err += "polusctl " + action + ": process " + std::to_string(pid) + ": " + e.what() + "\n";
        if (out.status == 0) out.status = polus::error_exit_status(e.code());
      }
    }
    if (json) out.out += Json{{"result", out.status == 0 ? "ok" : "error"}, {"action", action}, {"processes", processes}}.dump() + "\n";
    else out.out += table.render();
  }
  if (int sig = polus::stop_requested()) {
    out.err += "polusctl " + action + ": stopped by " + strsignal(sig) + " once the target was in a recorded state\n";
  }
}

}  // namespace

void run_rollback(const Json& request, Output& out) {
  const polus::EngineOptions options = engine_options(request);
  for_each_target("rollback", request, out, [&](pid_t pid) {
    return request.contains("id") ? polus::rollback_patch(pid, request["id"].get<uint64_t>(), options)
                                  : polus::rollback_patch(pid, options);
  });
}

void run_finish(const Json& request, Output& out) {
  const polus::EngineOptions options = engine_options(request);
  for_each_target("finish", request, out, [&](pid_t pid) { return polus::finish_update(pid, options); });
}

}  // namespace polusctl
