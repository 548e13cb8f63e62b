// polusctl apply: load a patch into running processes and redirect their functions.
#include <signal.h>
#include <string.h>

#include <tuple>

#include "cli.h"
#include "commands.h"
#include "polus/stop_request.h"
#include "render.h"
#include "store.h"
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

void run_apply(const Json& request, Output& out) {
  const polus::EngineOptions options = engine_options(request);
  std::string patch = request["patch"].get<std::string>();
  const bool json = request.value("json", false);
  std::vector<pid_t> pids = resolve_targets(request["targets"]);
  std::string stored;  // with --persist: the stored copy is what gets applied (and recorded)
  bool stored_before = false;
  if (request.contains("store")) {
    const std::string build_id = polus::executable_build_id(pids[0]);
    for (pid_t pid : pids) {
      if (build_id.empty() || polus::executable_build_id(pid) != build_id) {
        throw polus::Error(polus::ErrorCode::kBuildMismatch,
                           "--persist stores a patch for one build, by its build-id: process " + std::to_string(pid) +
                               (build_id.empty() ? " runs an executable without one" : " runs another build than process " +
                                                                                         std::to_string(pids[0])));
      }
    }
    polus::describe_patch_file(patch, options);  // a malformed file is refused before it is stored
    bool created = false;
    std::tie(stored, created) = store_patch(request["store"].get<std::string>(), build_id, patch);
    patch = stored;
    if (!created) stored_before = true;
  }
  // Ctrl-C, kill and a dropped ssh session wait until the engine reaches a point where it can
  // stop cleanly (it asks at every such point): they never cut a change to the target short.
  sigset_t stop = polus::stop_signals();
  sigprocmask(SIG_BLOCK, &stop, nullptr);
  if (pids.size() == 1) {
    polus::PatchInfo info;
    try {
      info = polus::apply_patch(pids[0], patch, options);
    } catch (...) {
      if (!stored.empty() && !stored_before) unstore(stored);  // the store keeps only patches that applied
      throw;
    }
    note_in_flight(request, pids[0], info);
    print_change("apply", pids[0], info, json, request.value("daemon", false), out);
  } else {
    apply_all_or_none(request, pids, patch, options, out);
  }
  if (!stored.empty()) {
    if (out.status != 0) {
      if (!stored_before) unstore(stored);
    } else if (!request.value("json", false)) {
      out.out += "stored as " + stored + ": polusd applies it to every new process of this build\n";
    }
  }
  if (int sig = polus::stop_requested()) {
    out.err += std::string("polusctl apply: stopped by ") + strsignal(sig) + " once the target was in a recorded state\n";
  }
}

}  // namespace polusctl
