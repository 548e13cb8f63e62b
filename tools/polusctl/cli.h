// tools/polusctl/cli.h — what every polusctl command unit shares.
//
// A command is one small unit in two halves. Its options (cmd_*.cc, here) register its
// subcommand with CLI11 and turn what was parsed into a request (JSON); its run (run_*.cc,
// run.h) runs a request with the engine, writing to an Output. The request is the command's
// whole input, so the same run serves `polusctl CMD --no-daemon` in-process and polusd serving
// a client (tools/polusd/): the output is the same either way. Only the options half is in the
// polusctl executable, which links nothing of the engine: a command sent to polusd starts no
// more than a socket client; the runs are in the polusctl-engine module, loaded only
// for a command run in-process (engine_module.h). commands.cc lists the units; main.cc wires them.
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

namespace polusctl {

/// Key order kept as written: the documented --json layouts start with "pid" / "result".
using Json = nlohmann::ordered_json;

/// What a command prints and returns; shipped back whole by polusd to its client.
struct Output {
  std::string out;  // stdout
  std::string err;  // stderr
  int status = 0;   // exit status (tools/README.md)
  /// How long the engine's calls took, whole (microseconds; so far apply to one process):
  /// for the bench's breakdown ($POLUS_TIMINGS), which polusd sends back only when asked.
  double engine_call_us = 0;
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
  /// once parsing is done (it may throw UsageError). Its run is run.h's run_X.
  std::function<std::function<Json()>(CLI::App& app)> add;
  /// Whether polusd runs it by default (it changes targets and may leave an update in flight).
  bool via_daemon = false;
};

/// Every command, in help order.
const std::vector<CommandUnit>& command_units();

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
  kForce = 128,       // --force
};

/// Adds the engine options in `which` to `sub`, bound to `args`.
void add_engine_options(CLI::App* sub, EngineArgs& args, unsigned which);

/// Checks the engine options' texts (numbers, owners) and writes them into a request's
/// "engine" object; the agent path defaults to default_agent_path(). Throws UsageError.
Json engine_request(const EngineArgs& args);

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

/// Now, in microseconds since the epoch (CLOCK_REALTIME: comparable across processes and with
/// bash's $EPOCHREALTIME, which bench/polusd-overhead.sh reads around a whole command).
double timestamp_us();

/// The store of patches that stick: $POLUS_STORE, else /var/lib/polus for root, else
/// ~/.local/state/polus.
std::string default_store_path();

/// polusd's socket: $POLUS_SOCKET, else /run/polus/polusd.sock for root, else
/// $XDG_RUNTIME_DIR/polus/polusd.sock (or /tmp/polus-UID/polusd.sock) for other users.
std::string default_socket_path();

/// The first of `candidates` (paths relative to the directory of this program's executable)
/// that exists and is readable, resolved; else `otherwise` (the installed path).
std::string beside_this_program(const std::vector<std::string>& candidates, const std::string& otherwise);

/// libpolus-agent.so: $POLUS_AGENT, else next to this program (../agent/ in a build tree; where
/// cmake --install puts it relative to polusctl; ../lib/polus/; its own directory), else the
/// installed one (POLUS_INSTALLED_AGENT, from CMake).
std::string default_agent_path();

}  // namespace polusctl
