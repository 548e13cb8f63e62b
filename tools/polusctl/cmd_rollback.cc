// polusctl rollback and polusctl finish: undo a patch; complete an update left syncing.
#include <signal.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "polus/stop_request.h"
#include "render.h"
#include "targets.h"

namespace polusctl {

namespace {

struct ChangeArgs {
  std::vector<std::string> pids;
  TargetArgs targets;
  EngineArgs engine;
  std::string id;
  bool json = false;
  bool verbose = false;
  bool no_daemon = false;
};

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

std::function<Json()> add_change(CLI::App& app, const std::string& name, const std::string& help, bool with_id) {
  auto args = std::make_shared<ChangeArgs>();
  CLI::App* sub = app.add_subcommand(name, help);
  sub->add_option("PID", args->pids, "process ids");
  add_target_options(sub, args->targets);
  if (with_id) {
    sub->add_option("--id", args->id, "roll back the patch with this id (as status lists it) instead of the newest; "
                                      "refused while a later patch builds on it")->type_name("N");
  }
  add_engine_options(sub, args->engine, kDebugFiles | kAllowOwner | kTimeout | kSyncTimeout | kAudit);
  add_daemon_option(sub, args->no_daemon);
  add_output_flags(sub, args->json, args->verbose);
  return [args, name] {
    Json request{{"command", name}, {"json", args->json}, {"verbose", args->verbose}, {"no_daemon", args->no_daemon}};
    request["targets"] = target_request(args->pids, args->targets);
    request["engine"] = engine_request(args->engine);
    if (!args->id.empty()) {
      uint64_t id = 0;
      if (!whole_number(args->id, 1, UINT32_MAX, id)) throw UsageError("--id needs a patch id (a whole number from 1), not '" + args->id + "'");
      request["id"] = id;
    }
    return request;
  };
}

}  // namespace

std::function<Json()> add_rollback(CLI::App& app) {
  return add_change(app, "rollback", "undo the newest patch applied to the processes (or the one --id names)", true);
}

void run_rollback(const Json& request, Output& out) {
  const polus::EngineOptions options = engine_options(request);
  for_each_target("rollback", request, out, [&](pid_t pid) {
    return request.contains("id") ? polus::rollback_patch(pid, request["id"].get<uint64_t>(), options)
                                  : polus::rollback_patch(pid, options);
  });
}

std::function<Json()> add_finish(CLI::App& app) {
  return add_change(app, "finish", "wait for a data update left syncing to end, and complete it", false);
}

void run_finish(const Json& request, Output& out) {
  const polus::EngineOptions options = engine_options(request);
  for_each_target("finish", request, out, [&](pid_t pid) { return polus::finish_update(pid, options); });
}

}  // namespace polusctl
