// Which processes a request selects now, and applying to many of them all or none (run.h).
#include <signal.h>
#include <string.h>

#include <optional>
#include <set>

#include "polus/stop_request.h"
#include "render.h"
#include "run.h"

namespace polusctl {

bool single_pid(const Json& t) {
  return t["pids"].size() == 1 && t["trees"].empty() && t["exes"].empty() && t["build_ids"].empty();
}

std::vector<pid_t> resolve_targets(const Json& t) {
  std::vector<pid_t> ordered;  // pids as given first, then what the selectors find, each once
  std::set<pid_t> pids;
  auto add = [&](pid_t pid) {
    if (pid != getpid() && pids.insert(pid).second) ordered.push_back(pid);  // never ourselves
  };
  for (const auto& p : t["pids"]) add(p.get<pid_t>());
  for (const auto& p : t["trees"]) {
    std::vector<pid_t> tree = polus::process_tree(p.get<pid_t>());
    if (tree.empty()) {
      throw polus::Error(polus::ErrorCode::kNoSuchProcess, "--tree " + std::to_string(p.get<pid_t>()) + ": process " +
                                                               std::to_string(p.get<pid_t>()) + " does not exist");
    }
    for (pid_t pid : tree) add(pid);
  }
  for (const auto& e : t["exes"]) {
    std::vector<pid_t> found = polus::processes_running(e.get<std::string>());
    if (found.empty()) {
      throw polus::Error(polus::ErrorCode::kNoSuchProcess, "--exe " + e.get<std::string>() + ": no process runs it");
    }
    for (pid_t pid : found) add(pid);
  }
  for (const auto& b : t["build_ids"]) {
    std::vector<pid_t> found = polus::processes_with_build_id(b.get<std::string>());
    if (found.empty()) {
      throw polus::Error(polus::ErrorCode::kNoSuchProcess,
                         "--build-id " + b.get<std::string>() + ": no process runs an executable with that build-id");
    }
    for (pid_t pid : found) add(pid);
  }
  return ordered;
}

void apply_all_or_none(const Json& request, const std::vector<pid_t>& pids, const std::string& patch,
                       const polus::EngineOptions& options, Output& out) {
  const bool json = request.value("json", false);
  std::vector<std::pair<pid_t, polus::PatchInfo>> applied;
  auto undo = [&](Json& rolled_back, Json& not_rolled_back) {
    for (auto it = applied.rbegin(); it != applied.rend(); ++it) {
      try {
        polus::PatchInfo info = polus::rollback_patch(it->first, it->second.id, options);
        note_in_flight(request, it->first, info);
        rolled_back.push_back(it->first);
      } catch (const polus::Error& e) {
        not_rolled_back.push_back({{"pid", it->first}, {"message", e.what()}});
      }
    }
  };
  for (pid_t pid : pids) {
    std::optional<polus::Error> failure;
    try {
      if (int sig = polus::stop_requested()) {
        throw polus::Error(polus::ErrorCode::kInterrupted, std::string("stopped by ") + strsignal(sig) +
                                                               " before process " + std::to_string(pid));
      }
      applied.emplace_back(pid, polus::apply_patch(pid, patch, options));
      continue;
    } catch (const polus::Error& e) {
      failure = e;
    }
    Json rolled_back = Json::array(), not_rolled_back = Json::array();
    undo(rolled_back, not_rolled_back);
    std::string message = "process " + std::to_string(pid) + ": " + failure->what();
    if (!rolled_back.empty()) message += "; rolled the patch back in process(es) " + rolled_back.dump();
    for (const auto& n : not_rolled_back) {
      message += "; could not roll back process " + std::to_string(n["pid"].get<pid_t>()) + ": " + n["message"].get<std::string>();
    }
    if (json) {
      out.out += Json{{"result", "error"}, {"error", polus::error_code_name(failure->code())}, {"message", message},
                      {"failed_pid", pid}, {"rolled_back", rolled_back}, {"not_rolled_back", not_rolled_back}}
                     .dump() + "\n";
    }
    out.err += "polusctl apply: " + message + "\n";
    out.status = polus::error_exit_status(failure->code());
    return;
  }
  for (const auto& [pid, info] : applied) note_in_flight(request, pid, info);
  if (json) {
    Json processes = Json::array();
    for (const auto& [pid, info] : applied) processes.push_back({{"pid", pid}, {"patch", patch_json(info)}});
    out.out += Json{{"result", "ok"}, {"action", "apply"}, {"processes", processes}}.dump() + "\n";
    return;
  }
  Table table({"PID", "ID", "NAME", "STATE", "FUNCTIONS", "APPLY", "PAUSE"}, {true, true, false, false, true, true, true});
  for (const auto& [pid, info] : applied) {
    table.add_row({std::to_string(pid), std::to_string(info.id), info.name, info.state, std::to_string(info.redirects.size()),
                   duration(info.apply_wall_ns), duration(info.pause_ns)});
  }
  out.out += "applied " + applied.front().second.name + " to " + std::to_string(applied.size()) + " processes\n" +
             table.render();
}

}  // namespace polusctl
