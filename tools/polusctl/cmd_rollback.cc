// polusctl rollback and polusctl finish: undo a patch; complete an update left syncing
// (their runs: run_rollback.cc).
#include "cli.h"
#include "commands.h"
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

std::function<Json()> add_finish(CLI::App& app) {
  return add_change(app, "finish", "wait for a data update left syncing to end, and complete it", false);
}

}  // namespace polusctl
