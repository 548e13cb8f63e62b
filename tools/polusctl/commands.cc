// The list of polusctl's command units (their options half), and the small helpers they share
// (commands.h).
#include "commands.h"

#include <limits.h>
#include <unistd.h>

namespace polusctl {

const std::vector<CommandUnit>& command_units() {
  // To add a command: a cmd_*.cc with add_X (commands.h), a run_*.cc with run_X
  // (run.h), and one line here and in run_common.cc.
  static const std::vector<CommandUnit> units = {
      {"apply", add_apply, true},
      {"rollback", add_rollback, true},
      {"finish", add_finish, true},
      {"status", add_status, false},
      {"check", add_check, false},
      {"info", add_info, false},
      {"stacks", add_stacks, false},
      {"store", add_store, false},
      {"keygen", add_keygen, false},
      {"sign", add_sign, false},
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

}  // namespace polusctl
