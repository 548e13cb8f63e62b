// tools/polusctl/engine_module.h — the polusctl-engine module: the run halves of the command
// units (run.h) and the engine, as a shared object polusctl loads with dlopen only when it runs
// a command in its own process (--no-daemon, and the commands polusd does not run). A command
// sent to polusd never loads it: polusctl then starts as a plain socket client (the engine's
// libraries, libelf, libdwarf, libsodium, spdlog..., cost every start ~1.4 ms to load and
// relocate).
#pragma once

#include <string>

#include "cli.h"

/// The module's one entry (extern "C": looked up by name): runs `request` as run_request does,
/// its sync progress on this process's stderr, and ends the progress line. Throws nothing.
extern "C" void polusctl_engine_run(const polusctl::Json& request, polusctl::Output& out);

namespace polusctl {

/// The module: beside this polusctl (a build tree), then where cmake --install puts it relative
/// to polusctl (sbin/ -> lib/polus/), then the installed path (POLUS_INSTALLED_ENGINE).
std::string engine_module_path();

/// Runs `request` in this process through the module, loading it first; if it cannot be
/// loaded, says which file and why (exit 1).
Output run_in_process(const Json& request);

}  // namespace polusctl
