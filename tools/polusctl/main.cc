// polusctl — the operator's command line. Each command is a unit of its own (cmd_*.cc,
// listed in commands.cc); this file parses the command line with CLI11, builds the command's
// request and has it run: by polusd for commands that change targets (it owns updates in
// flight), in this process for the others and with --no-daemon.
//
// Exit statuses (tools/README.md): 0 success, 1 internal error, 2 usage, 3 no such process,
// 4 permission denied, 5 already traced, 6 symbol not found, 7 ambiguous symbol, 8 malformed
// patch, 9 patch for another build, 10 load failed, 11 unsafe to patch now, 12 nothing to roll
// back, 13 target died, 14 timeout, 15 interrupted, 16 audit log unavailable (root).
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "cli.h"
#include "client.h"
#include "commands.h"
#include "engine_module.h"

namespace {

constexpr const char* kFooter = R"(Exit statuses: 0 success, 1 internal error, 2 usage, 3 no such process, 4 permission denied,
5 already traced, 6 symbol not found, 7 ambiguous symbol, 8 malformed patch, 9 patch for another build,
10 load failed, 11 unsafe to patch now, 12 nothing to roll back, 13 target died, 14 timeout, 15 interrupted, 16 audit log unavailable (root).
`polusctl COMMAND --help` describes a command; man polusctl(8).)";

/// The "usage: ..." line of `sub`, from CLI11's help.
std::string usage_line(CLI::App* sub) {
  std::string help = sub->help();
  size_t at = help.find("Usage: ");
  if (at == std::string::npos) return "usage: polusctl --help\n";
  std::string line = help.substr(at + 7, help.find('\n', at) - at - 7);
  std::string name = sub->get_parent() ? "polusctl " + sub->get_name() : "polusctl";
  if (sub->get_parent()) line = "polusctl " + line;
  return "usage: " + line + "  (`" + name + " --help` for more)\n";
}

}  // namespace

int main(int argc, char** argv) {
  // $POLUS_TIMINGS=FILE: append when each step of this command happened (bench/polusd-overhead.sh).
  const char* timings_file = std::getenv("POLUS_TIMINGS");
  polusctl::Json timings;
  if (timings_file) timings["main"] = polusctl::timestamp_us();
  CLI::App app{"polusctl — live-patch running x86-64 Linux processes (Polus " POLUS_VERSION ")", "polusctl"};
  app.set_version_flag("--version", "polusctl (Polus) " POLUS_VERSION);
  app.require_subcommand(1, 1);
  app.footer(kFooter);
  // `polusctl COMMAND ...` registers that command alone: what is parsed, and every message about
  // it, is the same, and the other nine (~200 options) are not built at each start. Anything else
  // (--help, --version, an unknown command) sees them all.
  std::vector<std::pair<const polusctl::CommandUnit*, std::function<polusctl::Json()>>> built;
  for (const polusctl::CommandUnit& unit : polusctl::command_units()) {
    if (argc > 1 && argv[1] == std::string(unit.name)) built.emplace_back(&unit, unit.add(app));
  }
  if (built.empty()) {
    for (const polusctl::CommandUnit& unit : polusctl::command_units()) built.emplace_back(&unit, unit.add(app));
  }

  auto parsed = [&]() -> std::pair<const polusctl::CommandUnit*, CLI::App*> {
    for (auto& [unit, build] : built) {
      CLI::App* sub = app.get_subcommand(unit->name);
      if (sub->parsed()) return {unit, sub};
    }
    return {nullptr, &app};
  };
  auto known = [&](const std::string& name) {
    for (const polusctl::CommandUnit& unit : polusctl::command_units()) {
      if (name == unit.name) return true;
    }
    return false;
  };
  if (argc > 1 && argv[1][0] != '-' && !known(argv[1])) {
    std::cerr << "polusctl: unknown command '" << argv[1] << "'\n" << usage_line(&app);
    return 2;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    auto [unit, sub] = parsed();
    std::cerr << "polusctl" << (unit ? std::string(" ") + unit->name : "") << ": " << e.what() << "\n" << usage_line(sub);
    return 2;
  }
  auto [unit, sub] = parsed();
  polusctl::Json request;
  try {
    for (auto& [u, build] : built) {
      if (u == unit) request = build();
    }
  } catch (const polusctl::UsageError& e) {
    std::cerr << "polusctl " << unit->name << ": " << e.what() << "\n" << usage_line(sub);
    return 2;
  }
  const char* no_daemon_env = std::getenv("POLUS_NO_DAEMON");
  const bool no_daemon = request.value("no_daemon", false) || (no_daemon_env && std::string(no_daemon_env) == "1");
  // On a terminal, a long sync phase shows who holds it, refreshed (to stderr: --json's
  // stdout stays clean, and a pipe or a log file gets no carriage returns).
  if (unit->via_daemon && ::isatty(STDERR_FILENO) && !request.value("json", false)) request["progress"] = true;
  if (timings_file) timings["parsed"] = polusctl::timestamp_us();
  polusctl::Output out;
  if (unit->via_daemon && !no_daemon) {
    out = polusctl::run_through_daemon(request, timings_file ? &timings : nullptr);
  } else {
    out = polusctl::run_in_process(request);
    if (timings_file) {
      timings["ran"] = polusctl::timestamp_us();
      timings["engine_call"] = out.engine_call_us;
    }
  }
  std::fwrite(out.out.data(), 1, out.out.size(), stdout);
  std::fflush(stdout);
  std::fwrite(out.err.data(), 1, out.err.size(), stderr);
  if (timings_file) {
    timings["written"] = polusctl::timestamp_us();
    if (FILE* f = std::fopen(timings_file, "a")) {
      std::fprintf(f, "%s\n", timings.dump().c_str());
      std::fclose(f);
    }
  }
  return out.status;
}
