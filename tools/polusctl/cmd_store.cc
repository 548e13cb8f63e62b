// polusctl store list|remove, its options (its run: run_store.cc; the store: store.h).
#include "cli.h"
#include "commands.h"

namespace polusctl {

namespace {

struct StoreArgs {
  std::string action;
  std::vector<std::string> operands;
  std::string store;
  bool json = false;
  bool verbose = false;
};

}  // namespace

std::function<Json()> add_store(CLI::App& app) {
  auto args = std::make_shared<StoreArgs>();
  CLI::App* sub = app.add_subcommand("store", "the patches apply --persist keeps, by build-id: `store list`, "
                                              "`store remove BUILD-ID [NAME]`");
  sub->add_option("ACTION", args->action, "list or remove")->required()->check(CLI::IsMember({"list", "remove"}));
  sub->add_option("ARGS", args->operands, "remove: BUILD-ID [NAME]");
  sub->add_option("--store", args->store, "the store directory (default $POLUS_STORE, or /var/lib/polus for root)")
      ->type_name("DIR");
  add_output_flags(sub, args->json, args->verbose);
  return [args] {
    Json request{{"command", "store"}, {"json", args->json}, {"verbose", args->verbose}, {"action", args->action}};
    request["store"] = args->store.empty() ? default_store_path() : absolute_path(args->store);
    if (args->action == "list" && args->operands.size() > 1) throw UsageError("store list takes at most a BUILD-ID");
    if (args->action == "remove" && (args->operands.empty() || args->operands.size() > 2)) {
      throw UsageError("store remove takes BUILD-ID [NAME]");
    }
    if (!args->operands.empty()) request["build_id"] = args->operands[0];
    if (args->operands.size() > 1) request["name"] = args->operands[1];
    return request;
  };
}

}  // namespace polusctl
