// The list of polusctl's command units, and the small hooks they share (commands.h).
#include "commands.h"

#include <limits.h>
#include <unistd.h>

namespace polusctl {

const std::vector<CommandUnit>& command_units() {
  // To add a command: a cmd_*.cc with add_X/run_X (commands.h), and one line here.
  static const std::vector<CommandUnit> units = {
      {"apply", add_apply, run_apply, true},
      {"rollback", add_rollback, run_rollback, true},
      {"finish", add_finish, run_finish, true},
      {"status", add_status, run_status, false},
      {"check", add_check, run_check, false},
      {"info", add_info, run_info, false},
      {"stacks", add_stacks, run_stacks, false},
      {"store", add_store, run_store, false},
      {"keygen", add_keygen, run_keygen, false},
      {"sign", add_sign, run_sign, false},
  };
  return units;
}

void add_daemon_option(CLI::App* sub, bool& no_daemon) {
  sub->add_flag("--no-daemon", no_daemon,
                "run in this process instead of through polusd (also $POLUS_NO_DAEMON=1); an update left syncing then "
                "waits for `polusctl finish`");
}

std::string absolute_path(const std::string& path) {
  if (path.empty() || path[0] == '/') return path;
  char cwd[PATH_MAX];
  if (!getcwd(cwd, sizeof cwd)) return path;
  return std::string(cwd) + "/" + path;
}

std::function<void(pid_t, const polus::EngineOptions&)>& in_flight_hook() {
  static std::function<void(pid_t, const polus::EngineOptions&)> hook;
  return hook;
}

void note_in_flight(const Json& request, pid_t pid, const polus::PatchInfo& info) {
  if (info.state == "syncing" && in_flight_hook()) in_flight_hook()(pid, engine_options(request));
}

}  // namespace polusctl
