// polusctl check (a dry run of apply against a live process, which it only reads) and
// polusctl info (what a patch file holds; no process involved): their options (runs: run_inspect.cc).
#include "cli.h"
#include "commands.h"

namespace polusctl {

namespace {

struct InspectArgs {
  std::vector<std::string> operands;
  EngineArgs engine;
  bool json = false;
  bool verbose = false;
};

}  // namespace

std::function<Json()> add_check(CLI::App& app) {
  auto args = std::make_shared<InspectArgs>();
  CLI::App* sub = app.add_subcommand("check", "dry run of apply: resolve every name, check build-ids, say which "
                                              "functions are active now and whether PATCH.so would apply (reads PID only)");
  sub->add_option("PID_and_PATCH", args->operands, "PID PATCH.so")->expected(2)->required();
  add_engine_options(sub, args->engine, kDebugFiles | kAllowOwner | kTimeout | kForce);
  add_output_flags(sub, args->json, args->verbose);
  return [args] {
    Json request{{"command", "check"}, {"json", args->json}, {"verbose", args->verbose}};
    request["pid"] = parse_pid(args->operands[0]);
    request["patch"] = absolute_path(args->operands[1]);
    request["engine"] = engine_request(args->engine);
    return request;
  };
}

std::function<Json()> add_info(CLI::App& app) {
  auto args = std::make_shared<InspectArgs>();
  CLI::App* sub = app.add_subcommand("info", "what PATCH.so replaces, adds and syncs, its description, build-ids "
                                             "and sha256 (no process involved)");
  sub->add_option("PATCH", args->operands, "the patch file")->expected(1)->required();
  add_engine_options(sub, args->engine, kAllowOwner);
  add_output_flags(sub, args->json, args->verbose);
  return [args] {
    Json request{{"command", "info"}, {"json", args->json}, {"verbose", args->verbose}};
    request["patch"] = absolute_path(args->operands[0]);
    request["engine"] = engine_request(args->engine);
    return request;
  };
}

}  // namespace polusctl
