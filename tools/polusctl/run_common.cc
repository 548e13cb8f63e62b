// What every command's run shares (run.h): the engine options a request describes, sync
// progress, running a request with its errors mapped to exit statuses, and the in-flight hook.
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <memory>

#include <spdlog/spdlog.h>

#include "render.h"
#include "run.h"

namespace polusctl {

namespace {

/// The run of each command, by name (command_units() lists their options).
const std::vector<std::pair<const char*, void (*)(const Json&, Output&)>>& run_units() {
  static const std::vector<std::pair<const char*, void (*)(const Json&, Output&)>> units = {
      {"apply", run_apply}, {"rollback", run_rollback}, {"finish", run_finish}, {"status", run_status},
      {"check", run_check}, {"info", run_info},         {"stacks", run_stacks}, {"store", run_store},
      {"keygen", run_keygen}, {"sign", run_sign},
  };
  return units;
}

}  // namespace

polus::EngineOptions engine_options(const Json& request) {
  polus::EngineOptions options;
  // Who asks: set by polusd from SO_PEERCRED (it overwrites whatever a client sent); in
  // polusctl's own process, polusctl itself (Caller::self(), the default).
  if (request.contains("caller")) {
    const Json& c = request["caller"];
    options.caller = polus::Caller{c.at("uid").get<uid_t>(), c.at("gid").get<gid_t>(), c.at("pid").get<pid_t>()};
  }
  if (!request.contains("engine")) return options;
  const Json& e = request["engine"];
  // A client of polusd with fewer rights than polusd cannot point it at files of its choosing.
  const bool chooses_files = !request.contains("caller") || options.caller.uid == 0 || options.caller.uid == geteuid();
  const std::string config = chooses_files ? e.value("config", std::string()) : std::string();
  try {
    if (!polus::read_config_file(config.empty() ? polus::kDefaultConfigFile : config, options) && !config.empty()) {
      throw UsageError("--config: " + config + " does not exist");
    }
  } catch (const std::invalid_argument& err) {
    throw UsageError(std::string("configuration: ") + err.what());
  }
  if (const char* audit = std::getenv("POLUS_AUDIT_LOG")) options.audit.file = audit;
  options.audit.enabled = true;
  if (e.value("require_signature", false)) options.signature.required = true;
  if (chooses_files && e.contains("trusted_keys")) options.signature.trusted_keys = e["trusted_keys"].get<std::string>();
  if (chooses_files && e.contains("audit_log")) options.audit.file = e["audit_log"].get<std::string>();
  options.agent_path = e.value("agent", std::string());
  options.rehearse = e.value("rehearse", true);
  options.force = e.value("force", false);
  for (const auto& f : e.value("debug_files", Json::array())) options.symbols.debug_files.push_back(f.get<std::string>());
  for (const auto& o : e.value("allowed_owners", Json::array())) options.allowed_owners.push_back(o.get<uid_t>());
  if (e.contains("timeout_ms")) options.timeout = std::chrono::milliseconds(e["timeout_ms"].get<uint64_t>());
  if (e.contains("sync_timeout_ms")) options.sync_timeout = std::chrono::milliseconds(e["sync_timeout_ms"].get<uint64_t>());
  if (request.value("progress", false)) {
    auto last = std::make_shared<std::chrono::steady_clock::time_point>();
    options.on_sync_progress = [last](const polus::SyncProgress& p) {
      const auto now = std::chrono::steady_clock::now();
      if (now - *last < std::chrono::milliseconds(250)) return;
      *last = now;
      if (progress_sink()) progress_sink()(progress_line(p));
    };
  }
  return options;
}

namespace {
bool progress_shown = false;
}

std::function<void(const std::string& line)>& progress_sink() {
  thread_local std::function<void(const std::string&)> sink = [](const std::string& line) {
    // \r and erase-line: the terminal shows the newest line only.
    std::string text = "\r\033[K" + line;
    (void)!::write(STDERR_FILENO, text.data(), text.size());
    progress_shown = true;
  };
  return sink;
}

void end_progress_line() {
  if (!progress_shown) return;
  (void)!::write(STDERR_FILENO, "\r\033[K", 4);
  progress_shown = false;
}

Output run_request(const Json& request) {
  Output out;
  const std::string command = request.value("command", std::string());
  const bool json = request.value("json", false);
  spdlog::set_level(request.value("verbose", false) ? spdlog::level::debug : spdlog::level::warn);
  try {
    for (const auto& [name, run] : run_units()) {
      if (command == name) {
        run(request, out);
        return out;
      }
    }
    throw UsageError("unknown command '" + command + "'");
  } catch (const polus::Error& e) {
    if (json) {
      out.out += Json{{"result", "error"}, {"error", polus::error_code_name(e.code())}, {"message", e.what()}}.dump() + "\n";
    }
    out.err += "polusctl " + command + ": " + e.what() + "\n";
    out.status = polus::error_exit_status(e.code());
  } catch (const UsageError& e) {
    out.err += "polusctl " + command + ": " + e.what() + "\n";
    out.status = 2;
  } catch (const std::exception& e) {
    out.err += "polusctl " + command + ": internal error: " + e.what() + "\n";
    out.status = 1;
  }
  return out;
}

std::function<void(pid_t, const polus::EngineOptions&)>& in_flight_hook() {
  static std::function<void(pid_t, const polus::EngineOptions&)> hook;
  return hook;
}

void note_in_flight(const Json& request, pid_t pid, const polus::PatchInfo& info) {
  if (info.state == "syncing" && in_flight_hook()) in_flight_hook()(pid, engine_options(request));
}

}  // namespace polusctl
