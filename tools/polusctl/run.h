// tools/polusctl/run.h — the run halves of polusctl's command units (run_*.cc): what needs the
// engine. polusd links them; polusctl loads them (the polusctl-engine module, engine_module.h) only
// for a command it runs in its own process. See cli.h for the options halves.
#pragma once

#include <sys/types.h>

#include <functional>
#include <string>
#include <vector>

#include "cli.h"
#include "polus/engine.h"
#include "polus/error.h"
#include "polus/options.h"

namespace polusctl {

// Each unit's run: one request in, its output (and exit status) in `out`.
void run_apply(const Json& request, Output& out);
void run_rollback(const Json& request, Output& out);
void run_finish(const Json& request, Output& out);
void run_status(const Json& request, Output& out);
void run_stacks(const Json& request, Output& out);
void run_check(const Json& request, Output& out);
void run_info(const Json& request, Output& out);
void run_store(const Json& request, Output& out);
void run_keygen(const Json& request, Output& out);
void run_sign(const Json& request, Output& out);

/// Runs `request` with the unit its "command" names, mapping errors to exit statuses:
/// polus::Error to its documented status (and {"result":"error",...} with --json), a
/// UsageError to 2, anything else to 1 ("internal error").
Output run_request(const Json& request);

/// Where a command run in this thread shows sync progress (request "progress": true): by
/// default, one line on stderr rewritten in place (a terminal); polusd sends it to its client.
/// Called at most four times a second.
std::function<void(const std::string& line)>& progress_sink();

/// Ends the line the default progress sink wrote, if it wrote one.
void end_progress_line();

/// The EngineOptions a request's "engine" object describes, for the process that runs it:
/// the configuration file is read here (polusd: its own), then $POLUS_AUDIT_LOG, then the
/// request's options. The caller is this process, or, in polusd, the client as SO_PEERCRED
/// gave it (request["caller"], written by polusd over anything the client sent); a client
/// whose uid is neither root nor polusd's own cannot choose the configuration file, audit log
/// or trusted keys polusd uses for it. Throws UsageError for a bad or missing configuration
/// file, polus::Error(kPermissionDenied) for an untrusted one.
polus::EngineOptions engine_options(const Json& request);

/// Set by polusd: told of every process a request left with an update in flight (syncing),
/// with the request's engine options, so that it keeps driving it to the end after its client
/// is gone.
std::function<void(pid_t, const polus::EngineOptions&)>& in_flight_hook();

/// Tells in_flight_hook() about `pid` if `info` is still syncing.
void note_in_flight(const Json& request, pid_t pid, const polus::PatchInfo& info);

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
