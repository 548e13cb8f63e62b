// polusctl check and polusctl info, their runs (cmd_inspect.cc parses them).
#include "render.h"
#include "run.h"

namespace polusctl {

namespace {

std::string join(const std::vector<std::string>& items, const std::string& sep = ", ") {
  std::string out;
  for (const auto& i : items) out += (out.empty() ? "" : sep) + i;
  return out;
}

std::string info_human(const polus::PatchFileInfo& info) {
  std::string out = "patch " + info.name + "  (" + info.path + ")\n";
  if (!info.description.empty()) out += "  " + info.description + "\n";
  out += "  sha256 " + info.sha256 + ", " + std::to_string(info.size_bytes) + " bytes\n";
  for (const auto& b : info.build_ids) out += "  for " + (b.object.empty() ? "the executable" : b.object) + " with build-id " + b.hex + "\n";
  if (info.build_ids.empty()) out += "  for any build (no build-id named)\n";
  if (!info.replaces.empty()) {
    Table t({"REPLACES", "WITH"});
    for (const auto& r : info.replaces) t.add_row({r.old_name, r.new_name});
    out += "\n" + t.render();
  }
  if (!info.adds.empty()) out += "\nadds: " + join(info.adds) + "\n";
  if (!info.syncs.empty()) {
    Table t({"SYNCS OLD", "NEW", "OLD SIZE", "NEW SIZE", "HOW"}, {false, false, true, true});
    for (const auto& d : info.syncs) {
      auto size = [](uint64_t n) { return n ? std::to_string(n) : std::string("-"); };
      t.add_row({d.old_name, d.new_name, size(d.old_size), size(d.new_size),
                 d.read_only ? "read-only (not tracked)" : d.heap_root ? "heap root (nodes from a callback)"
                                                          : d.has_sync ? "sync functions" : "copied"});
    }
    out += "\n" + t.render();
  }
  if (!info.uses.empty()) out += "\nuses from the target: " + join(info.uses) + "\n";
  if (!info.callbacks.empty()) out += "callbacks: " + join(info.callbacks) + "\n";
  out += info.trust.empty() ? "\napply would trust this file\n" : "\napply would refuse this file: " + info.trust + "\n";
  return out;
}

Json check_json(const polus::CheckReport& r) {
  Json j{{"result", "ok"}, {"action", "check"}, {"pid", r.pid}, {"would_apply", true}};
  j["patch"] = patch_file_json(r.patch);
  j["build_ids"] = Json::array();
  for (const auto& b : r.build_ids) j["build_ids"].push_back({{"object", b.object}, {"wanted", b.wanted}, {"found", b.found}});
  j["resolved"] = Json::array();
  for (const auto& n : r.resolved) {
    j["resolved"].push_back({{"kind", n.kind}, {"name", n.name}, {"address", hex(n.address)}, {"object", n.object}});
  }
  j["functions"] = Json::array();
  for (const auto& f : r.functions) {
    j["functions"].push_back({{"old", f.old_name}, {"old_address", hex(f.old_address)}, {"new", f.new_name},
                              {"stacked_on", f.stacked_on ? Json(f.stacked_on) : Json(nullptr)},
                              {"must_be_inactive", f.must_be_inactive.empty() ? Json(nullptr) : Json(f.must_be_inactive)},
                              {"active_threads", f.active_threads}});
  }
  j["watched"] = Json::array();
  for (const auto& f : r.watched) {
    j["watched"].push_back({{"function", f.old_name}, {"address", hex(f.old_address)}, {"active_threads", f.active_threads}});
  }
  j["changes_data"] = r.changes_data;
  j["agent_loaded"] = r.agent_loaded;
  j["patches_applied"] = r.patches_applied;
  j["threads_not_inspected"] = r.threads_not_inspected;
  j["notes"] = r.notes;
  return j;
}

std::string check_human(const polus::CheckReport& r) {
  std::string out = "patch " + r.patch.name + " would apply to process " + std::to_string(r.pid) + " (" + task_name(r.pid) + ")\n";
  for (const auto& b : r.build_ids) out += "  build-id " + b.wanted + " matches " + b.object + "\n";
  Table names({"KIND", "NAME", "ADDRESS", "OBJECT"});
  for (const auto& n : r.resolved) names.add_row({n.kind, n.name, hex(n.address), n.object});
  out += "\n" + names.render();
  Table functions({"REPLACES", "WITH", "HOW", "ACTIVE NOW"});
  for (const auto& f : r.functions) {
    std::string threads;
    for (pid_t t : f.active_threads) threads += (threads.empty() ? "" : ", ") + std::to_string(t) + " (" + task_name(r.pid, t) + ")";
    functions.add_row({f.old_name, f.new_name,
                       f.stacked_on ? "stacks on patch " + std::to_string(f.stacked_on)
                                    : f.must_be_inactive.empty() ? "jump at entry" : "jump; must be inactive",
                       threads.empty() ? "-" : threads});
  }
  out += "\n" + functions.render();
  if (!r.watched.empty()) {
    Table watched({"WATCHED (HOLDS A DATA UPDATE)", "ACTIVE NOW"});
    for (const auto& f : r.watched) {
      std::string threads;
      for (pid_t t : f.active_threads) threads += (threads.empty() ? "" : ", ") + std::to_string(t) + " (" + task_name(r.pid, t) + ")";
      watched.add_row({f.old_name, threads.empty() ? "-" : threads});
    }
    out += "\n" + watched.render();
  }
  out += "\n" + std::string(r.agent_loaded ? "agent loaded, " + std::to_string(r.patches_applied) + " patch(es) applied"
                                           : "agent not loaded yet (apply loads it)") + "\n";
  for (const auto& n : r.notes) out += "note: " + n + "\n";
  return out;
}

}  // namespace

void run_check(const Json& request, Output& out) {
  polus::CheckReport report =
      polus::check_patch(request["pid"].get<pid_t>(), request["patch"].get<std::string>(), engine_options(request));
  out.out += request.value("json", false) ? check_json(report).dump() + "\n" : check_human(report);
}

void run_info(const Json& request, Output& out) {
  polus::PatchFileInfo info = polus::describe_patch_file(request["patch"].get<std::string>(), engine_options(request));
  out.out += request.value("json", false) ? patch_file_json(info).dump() + "\n" : info_human(info);
}

}  // namespace polusctl
