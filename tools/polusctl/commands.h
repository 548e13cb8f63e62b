// tools/polusctl/commands.h — the command units' options halves (one cmd_*.cc each) and the
// few helpers they share with polusctl's main and with polusd.
#pragma once

#include <sys/types.h>

#include <functional>
#include <string>
#include <vector>

#include "cli.h"

namespace polusctl {

// Each unit: add_X registers `polusctl X` and returns the request builder (its run: run.h).
std::function<Json()> add_apply(CLI::App& app);
std::function<Json()> add_rollback(CLI::App& app);
std::function<Json()> add_finish(CLI::App& app);
std::function<Json()> add_status(CLI::App& app);
std::function<Json()> add_stacks(CLI::App& app);
std::function<Json()> add_check(CLI::App& app);
std::function<Json()> add_info(CLI::App& app);
std::function<Json()> add_store(CLI::App& app);
std::function<Json()> add_keygen(CLI::App& app);
std::function<Json()> add_sign(CLI::App& app);

/// Adds --no-daemon (run the command in this process, without polusd) to `sub`.
void add_daemon_option(CLI::App* sub, bool& no_daemon);

/// `path` made absolute against this process's working directory (requests travel to polusd,
/// whose working directory is another).
std::string absolute_path(const std::string& path);

}  // namespace polusctl
