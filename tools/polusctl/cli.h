// tools/polusctl/cli.h — what every polusctl command unit shares.
//
// A command is one small unit (cmd_*.cc): it registers its subcommand and options with CLI11
// and turns what was parsed into a request (JSON), and it runs a request, writing to an
// Output. The request is the command's whole input, so the same run function serves
// `polusctl CMD --no-daemon` in-process and polusd serving a client (tools/polusd/): the
// output is the same either way. commands.cc lists the units; main.cc wires them.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "polus/engine.h"
#include "polus/error.h"
#include "polus/options.h"

namespace polusctl {

/// Key order kept as written: the documented --json layouts start with "pid" / "result".
using Json = nlohmann::ordered_json;

/// What a command prints and returns; shipped back whole by polusd to its client.
struct Output {
  std::string out;  // stdout
  std::string err;  // stderr
  int status = 0;   // exit status (tools/README.md)
};

/// A command line that does not make sense: exit 2 with the message and the command's usage.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// One command unit, as commands.cc lists it.
struct CommandUnit {
  const char* name;
  /// Registers the subcommand and its options on `app`; returns what builds the request
  /// once parsing is done (it may throw UsageError).
  std::function<std::function<Json()>(CLI::App& app)> add;
  /// Runs a request, writing to `out` (errors included: run_request catches them).
  std::function<void(const Json& request, Output& out)> run;
  /// Whether polusd runs it by default (it changes targets and may leave an update in flight).
  bool via_daemon = false;
};

/// Every command, in help order.
const std::vector<CommandUnit>& command_units();

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

// ---- Options shared by several commands -------------------------------------------------

/// The engine options a command takes, as parsed (texts checked after parsing).
struct EngineArgs {
  std::string agent;
  std::vector<std::string> debug_files;
  std::vector<std::string> allow_owners;
  std::string timeout_ms;
  std::string sync_timeout_ms;
  CLI::Option* timeout_given = nullptr;       // set when --timeout was on the command line
  CLI::Option* sync_timeout_given = nullptr;  // (an empty value is checked too)
  bool no_rehearsal = false;
  bool force = false;
  std::string commit;              // --commit: "" (auto), "pause" or "trap"
  bool require_signature = false;  // can only turn the configuration file's setting on
  std::string trusted_keys;        // "" : the configuration file's, else /etc/polus/trusted-keys
  std::string audit_log;           // "" : $POLUS_AUDIT_LOG, the configuration file's, or the default
  std::string config;              // "" : /etc/polus/polus.conf if it exists
};

/// Which engine options a command accepts.
enum EngineOptionSet : unsigned {
  kAgent = 1,         // --agent, --no-rehearsal
  kDebugFiles = 2,    // --debug-file
  kAllowOwner = 4,    // --allow-owner
  kTimeout = 8,       // --timeout
  kSyncTimeout = 16,  // --sync-timeout
  kSignature = 32,    // --require-signature, --trusted-keys
  kAudit = 64,        // --audit-log, --config
  kForce = 128,       // --force (and --commit, apply's other choice)
};

/// Adds the engine options in `which` to `sub`, bound to `args`.
void add_engine_options(CLI::App* sub, EngineArgs& args, unsigned which);

/// Checks the engine options' texts (numbers, owners) and writes them into a request's
/// "engine" object; the agent path defaults to default_agent_path(). Throws UsageError.
Json engine_request(const EngineArgs& args);

/// The EngineOptions a request's "engine" object describes, for the process that runs it:
/// the configuration file is read here (polusd: its own), then $POLUS_AUDIT_LOG, then the
/// request's options. The caller is this process, or, in polusd, the client as SO_PEERCRED
/// gave it (request["caller"], written by polusd over anything the client sent); a client
/// whose uid is neither root nor polusd's own cannot choose the configuration file, audit log
/// or trusted keys polusd uses for it. Throws UsageError for a bad or missing configuration
/// file, polus::Error(kPermissionDenied) for an untrusted one.
polus::EngineOptions engine_options(const Json& request);

/// Adds --json and -v/--verbose to `sub`.
void add_output_flags(CLI::App* sub, bool& json, bool& verbose);

/// A process id (1 to what fits pid_t), or UsageError naming the text.
pid_t parse_pid(const std::string& text);

/// A user name or numeric uid (for --allow-owner), or UsageError.
uid_t parse_owner(const std::string& text);

/// A whole number of milliseconds from `min` to 86400000 for `option`, or UsageError.
std::chrono::milliseconds parse_ms(const std::string& option, const std::string& text, uint64_t min);

/// A whole decimal number in [min, max]: digits only (no sign, space, fraction, hex or
/// exponent); false if `text` is not one.
bool whole_number(const std::string& text, uint64_t min, uint64_t max, uint64_t& value);

/// polusd's socket: $POLUS_SOCKET, else /run/polus/polusd.sock for root, else
/// $XDG_RUNTIME_DIR/polus/polusd.sock (or /tmp/polus-UID/polusd.sock) for other users.
std::string default_socket_path();

/// libpolus-agent.so: $POLUS_AGENT, else next to this program (../agent/ in a build tree; where
/// cmake --install puts it relative to polusctl; ../lib/polus/; its own directory), else the
/// installed one (POLUS_INSTALLED_AGENT, from CMake).
std::string default_agent_path();

}  // namespace polusctl
