// polusctl status and polusctl stacks, their options (their runs: run_status.cc).
#include "cli.h"
#include "commands.h"
#include "targets.h"

namespace polusctl {

namespace {

struct StatusArgs {
  std::vector<std::string> pids;
  TargetArgs targets;
  bool json = false;
  bool verbose = false;
};

}  // namespace

std::function<Json()> add_status(CLI::App& app) {
  auto args = std::make_shared<StatusArgs>();
  CLI::App* sub = app.add_subcommand("status", "show the patches applied to processes (does not stop them); "
                                               "without a process, every patched process");
  sub->add_option("PID", args->pids, "process ids");
  add_target_options(sub, args->targets);
  add_output_flags(sub, args->json, args->verbose);
  return [args] {
    Json request{{"command", "status"}, {"json", args->json}, {"verbose", args->verbose}};
    const bool none = args->pids.empty() && args->targets.trees.empty() && args->targets.exes.empty() &&
                      args->targets.build_ids.empty();
    if (!none) request["targets"] = target_request(args->pids, args->targets);
    return request;
  };
}

std::function<Json()> add_stacks(CLI::App& app) {
  auto args = std::make_shared<StatusArgs>();
  CLI::App* sub = app.add_subcommand("stacks", "print every thread's call stack (CFI unwinding; stops PID briefly)");
  sub->add_option("PID", args->pids, "process id")->required();
  add_output_flags(sub, args->json, args->verbose);
  return [args] {
    if (args->pids.size() != 1) throw UsageError("stacks takes one process id");
    return Json{{"command", "stacks"}, {"json", args->json}, {"verbose", args->verbose}, {"pid", parse_pid(args->pids[0])}};
  };
}

}  // namespace polusctl
