// polusctl store list|remove: the patches `apply --persist` keeps for each build (store.h).
#include "cli.h"
#include "commands.h"
#include "render.h"
#include "store.h"

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

void run_store(const Json& request, Output& out) {
  const std::string store = request["store"].get<std::string>();
  const std::string build_id = request.value("build_id", std::string());
  const bool json = request.value("json", false);
  if (request["action"] == "remove") {
    size_t removed = remove_stored(store, build_id, request.value("name", std::string()));
    if (removed == 0) {
      throw polus::Error(polus::ErrorCode::kNothingToRollBack, "nothing stored for build-id " + build_id +
                                                                   (request.contains("name") ? " named " + request["name"].get<std::string>() : ""));
    }
    out.out += json ? Json{{"result", "ok"}, {"action", "store-remove"}, {"removed", removed}}.dump() + "\n"
                    : "removed " + std::to_string(removed) + " stored patch(es) of build-id " + build_id +
                          " (processes keep what is applied to them)\n";
    return;
  }
  std::vector<StoredPatch> stored = list_stored(store, build_id);
  if (json) {
    Json list = Json::array();
    for (const auto& s : stored) {
      list.push_back({{"build_id", s.build_id}, {"name", s.name}, {"file", s.file}, {"sha256", s.sha256},
                      {"source", s.source}, {"stored_at", utc_time(s.stored_at_unix_ns)}});
    }
    out.out += Json{{"store", store}, {"patches", list}}.dump() + "\n";
    return;
  }
  if (stored.empty()) {
    out.out += "no patches stored in " + store + "\n";
    return;
  }
  Table table({"BUILD-ID", "NAME", "STORED (UTC)", "FROM"});
  for (const auto& s : stored) table.add_row({s.build_id, s.name, utc_time(s.stored_at_unix_ns), s.source});
  out.out += table.render();
}

}  // namespace polusctl
