// polusd — the Polus daemon: serves polusctl on a Unix socket and owns every update in flight
// (server.h, drivers.h); `polusd PID` is its older single-process form (watch_one.cc).
//
//   polusd --serve [--socket PATH] [--store DIR] [--interval MS]
//   polusd PID [--interval MS] [--give-up-after S] [--agent PATH]
#include <signal.h>
#include <string.h>

#include <cstdlib>
#include <iostream>
#include <string>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "cli.h"
#include "drivers.h"
#include "polus/stop_request.h"
#include "server.h"
#include "sticky.h"
#include "store.h"

namespace polusd {
int watch_one(int argc, char** argv);
}

namespace {

[[noreturn]] void usage_error(const std::string& message) {
  std::cerr << "polusd: " << message
            << "\nusage: polusd --serve [--socket PATH] [--store DIR] [--interval MS]\n       polusd PID [--interval MS] "
               "[--give-up-after S] [--agent PATH]\n";
  std::exit(2);
}

int serve_main(int argc, char** argv) {
  std::string socket = polusctl::default_socket_path();
  std::string store = polusctl::default_store_path();
  uint64_t interval_ms = 100;
  for (int i = 2; i < argc; i += 2) {
    std::string flag = argv[i];
    if (flag != "--socket" && flag != "--interval" && flag != "--store") usage_error("unknown option " + flag);
    if (i + 1 >= argc) usage_error(flag + " needs a value");
    if (flag == "--socket") socket = argv[i + 1];
    else if (flag == "--store") store = argv[i + 1];
    else if (!polusctl::whole_number(argv[i + 1], 1, 3600000, interval_ms)) {
      usage_error("--interval must be a whole number of milliseconds from 1 to 3600000, not '" + std::string(argv[i + 1]) + "'");
    }
  }
  // Blocked in every thread (threads inherit the mask): SIGTERM (systemd's stop), SIGINT and
  // SIGHUP end polusd at the engine's next safe point, never mid-change.
  sigset_t stop = polus::stop_signals();
  sigprocmask(SIG_BLOCK, &stop, nullptr);
  try {
    polusd::Listener listener(socket);
    if (listener.already_served()) {
      spdlog::info("polusd: another polusd serves {}", socket);
      return 0;
    }
    spdlog::info("polusd {}: serving {}{}", POLUS_VERSION, listener.from_systemd() ? "the socket systemd passed" : socket, "");
    polusd::Drivers drivers(std::chrono::milliseconds(interval_ms), std::chrono::milliseconds(200));
    // Nothing is lost across a kill: the truth is in the targets' registries.
    for (pid_t pid : drivers.rediscover()) spdlog::info("polusd: took up the update in flight in process {}", pid);
    // Stored patches: to new processes of their build as they start, and to running ones now.
    polusd::Sticky sticky(store, drivers);
    sticky.apply_to_running();
    polusd::serve(listener, drivers);
    spdlog::info("polusd: stopped by {}; updates in flight stay recorded in their targets",
                 strsignal(polus::stop_requested()));
  } catch (const std::exception& e) {
    std::cerr << "polusd: " << e.what() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  spdlog::set_default_logger(spdlog::stderr_color_mt("polus"));
  spdlog::set_level(spdlog::level::info);
  if (argc >= 2 && std::string(argv[1]) == "--serve") return serve_main(argc, argv);
  if (argc >= 2 && (std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h")) usage_error("polusd(8) says more");
  if (argc >= 2 && std::string(argv[1]) == "--version") {
    std::cout << "polusd (Polus) " POLUS_VERSION "\n";
    return 0;
  }
  return polusd::watch_one(argc, argv);
}
