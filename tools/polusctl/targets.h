// tools/polusctl/targets.h — which processes a command acts on: pids given, a process tree,
// every process running an executable or a build-id, as options (resolving them, and applying
// to many all or none: run.h).
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

}  // namespace polusctl
