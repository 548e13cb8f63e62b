// tools/polusctl/commands.h — the command units (one cmd_*.cc each) and the few hooks they
// share with polusctl's main and with polusd.
#pragma once

#include <sys/types.h>

#include <functional>
#include <string>
#include <vector>

#include "cli.h"

namespace polusctl {

// Each unit: add_X registers `polusctl X` and returns the request builder; run_X runs one.
std::function<Json()> add_apply(CLI::App& app);
void run_apply(const Json& request, Output& out);
std::function<Json()> add_rollback(CLI::App& app);
void run_rollback(const Json& request, Output& out);
std::function<Json()> add_finish(CLI::App& app);
void run_finish(const Json& request, Output& out);
std::function<Json()> add_status(CLI::App& app);
void run_status(const Json& request, Output& out);
std::function<Json()> add_stacks(CLI::App& app);
void run_stacks(const Json& request, Output& out);
std::function<Json()> add_check(CLI::App& app);
void run_check(const Json& request, Output& out);
std::function<Json()> add_info(CLI::App& app);
void run_info(const Json& request, Output& out);
std::function<Json()> add_store(CLI::App& app);
void run_store(const Json& request, Output& out);
std::function<Json()> add_keygen(CLI::App& app);
void run_keygen(const Json& request, Output& out);
std::function<Json()> add_sign(CLI::App& app);
void run_sign(const Json& request, Output& out);

/// Adds --no-daemon (run the command in this process, without polusd) to `sub`.
void add_daemon_option(CLI::App* sub, bool& no_daemon);

/// `path` made absolute against this process's working directory (requests travel to polusd,
/// whose working directory is another).
std::string absolute_path(const std::string& path);

/// Set by polusd: told of every process a request left with an update in flight (syncing),
/// with the request's engine options, so that it keeps driving it to the end after its client
/// is gone.
std::function<void(pid_t, const polus::EngineOptions&)>& in_flight_hook();

/// Tells in_flight_hook() about `pid` if `info` is still syncing.
void note_in_flight(const Json& request, pid_t pid, const polus::PatchInfo& info);

}  // namespace polusctl
