// tools/polusctl/targets.h — which processes a command acts on: pids given, a process tree,
// every process running an executable or a build-id; and applying to many, all or none.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "cli.h"

namespace polusctl {

/// The selectors besides plain pids.
struct TargetArgs {
  std::vector<std::string> trees;      // --tree PID: that process and all its descendants
  std::vector<std::string> exes;       // --exe PATH: every process running that executable
  std::vector<std::string> build_ids;  // --build-id HEX: every process whose executable has it
};

/// Adds --tree, --exe and --build-id to `sub`.
void add_target_options(CLI::App* sub, TargetArgs& args);

/// Checks the selectors (pids are whole numbers, build-ids hex, paths made absolute) and
/// writes them as a request's "targets" object. Throws UsageError when nothing is selected.
Json target_request(const std::vector<std::string>& pids, const TargetArgs& args);

/// The processes a "targets" object selects now, each once: the pids in the order given, then
/// what --tree (root first), --exe and --build-id find (never this process itself). Throws
/// polus::Error(kNoSuchProcess) when a selector matches no process (named).
std::vector<pid_t> resolve_targets(const Json& targets);

/// Whether "targets" names exactly one process by pid and nothing else.
bool single_pid(const Json& targets);

/// Applies `patch` to every pid in turn; if one fails, rolls back what it applied to the
/// others (newest first), then reports the failure (its exit status). Writes the results.
void apply_all_or_none(const Json& request, const std::vector<pid_t>& pids, const std::string& patch,
                       const polus::EngineOptions& options, Output& out);

}  // namespace polusctl
