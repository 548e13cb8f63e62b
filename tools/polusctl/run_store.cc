// polusctl store list|remove, its run (cmd_store.cc parses it).
#include "render.h"
#include "run.h"
#include "store.h"

namespace polusctl {

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
