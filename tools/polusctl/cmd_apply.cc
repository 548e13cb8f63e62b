// polusctl apply: load a patch into running processes and redirect their functions.
#include <signal.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "polus/stop_request.h"
#include "render.h"
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
};

}  // namespace

std::function<Json()> add_apply(CLI::App& app) {
  auto args = std::make_shared<ApplyArgs>();
  CLI::App* sub = app.add_subcommand("apply", "load PATCH.so into processes and redirect their functions; if one "
                                              "process fails, those already patched are rolled back");
  sub->add_option("PID_and_PATCH", args->operands, "process ids, then the patch file (PID... PATCH.so)");
  add_target_options(sub, args->targets);
  add_engine_options(sub, args->engine, kAgent | kDebugFiles | kAllowOwner | kTimeout | kSyncTimeout);
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
    return request;
  };
}

void run_apply(const Json& request, Output& out) {
  const polus::EngineOptions options = engine_options(request);
  const std::string patch = request["patch"].get<std::string>();
  const bool json = request.value("json", false);
  std::vector<pid_t> pids = resolve_targets(request["targets"]);
  // Ctrl-C, kill and a dropped ssh session wait until the engine reaches a point where it can
  // stop cleanly (it asks at every such point): they never cut a change to the target short.
  sigset_t stop = polus::stop_signals();
  sigprocmask(SIG_BLOCK, &stop, nullptr);
  if (pids.size() == 1) {
    polus::PatchInfo info = polus::apply_patch(pids[0], patch, options);
    note_in_flight(request, pids[0], info);
    print_change("apply", pids[0], info, json, request.value("daemon", false), out);
  } else {
    apply_all_or_none(request, pids, patch, options, out);
  }
  if (int sig = polus::stop_requested()) {
    out.err += std::string("polusctl apply: stopped by ") + strsignal(sig) + " once the target was in a recorded state\n";
  }
}

}  // namespace polusctl
