// polusctl apply, its options: load a patch into running processes and redirect their functions
// (its run: run_apply.cc).
#include "cli.h"
#include "commands.h"
#include "targets.h"

namespace polusctl {

namespace {

struct ApplyArgs {
  std::vector<std::string> operands;  // PID... PATCH.so
  TargetArgs targets;
  EngineArgs engine;
  bool json = false;
  bool verbose = false;
  bool no_daemon = false;
  bool persist = false;
  std::string store;
};

}  // namespace

std::function<Json()> add_apply(CLI::App& app) {
  auto args = std::make_shared<ApplyArgs>();
  CLI::App* sub = app.add_subcommand("apply", "load PATCH.so into processes and redirect their functions; if one "
                                              "process fails, those already patched are rolled back");
  sub->add_option("PID_and_PATCH", args->operands, "process ids, then the patch file (PID... PATCH.so)");
  add_target_options(sub, args->targets);
  add_engine_options(sub, args->engine, kAgent | kDebugFiles | kAllowOwner | kTimeout | kSyncTimeout | kSignature | kAudit | kForce);
  sub->add_flag("--persist", args->persist,
                "also store the patch for the build-id of the processes' executable: polusd applies it to every "
                "process of that build it sees start (polusctl store list|remove)");
  sub->add_option("--store", args->store, "the store directory for --persist (default $POLUS_STORE, or /var/lib/polus)")
      ->type_name("DIR");
  add_daemon_option(sub, args->no_daemon);
  add_output_flags(sub, args->json, args->verbose);
  return [args] {
    const bool selectors = !args->targets.trees.empty() || !args->targets.exes.empty() || !args->targets.build_ids.empty();
    if (args->operands.empty() || (args->operands.size() == 1 && !selectors)) {
      throw UsageError("wrong number of arguments: apply takes PID... PATCH.so (or --tree/--exe/--build-id and PATCH.so)");
    }
    std::vector<std::string> pids(args->operands.begin(), args->operands.end() - 1);
    Json request{{"command", "apply"}, {"json", args->json}, {"verbose", args->verbose}, {"no_daemon", args->no_daemon}};
    request["targets"] = target_request(pids, args->targets);
    request["patch"] = absolute_path(args->operands.back());
    request["engine"] = engine_request(args->engine);
    if (args->persist) request["store"] = args->store.empty() ? default_store_path() : absolute_path(args->store);
    return request;
  };
}

}  // namespace polusctl
