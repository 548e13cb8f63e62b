// The same patch library (greeter-v0-v1.so) brought into a running greeter three ways:
//   polusctl apply          (first patch into a fresh process: the agent is loaded too)
//   gdb -p PID -batch -ex 'call (void*)dlopen("...", 2)'   (loads it; redirects nothing)
//   restart                 (SIGTERM, start the server again on the same port)
// Each on a fresh greeter with a probe client sending a request every probe_interval_us
// over one persistent connection. "Longest wait" = the longest any probe request waited for
// its reply while the operation ran: how long the client saw the server stopped. For the
// restart the client sees errors instead: downtime = from the kill to the first good reply
// after the first failure.
#include <spdlog/spdlog.h>

#include <fstream>
#include <stdexcept>

#include "greeter.h"
#include "sections.h"

namespace bench {

namespace {

constexpr const char* kXstateError = "Couldn't write extended state status";

/// gdb's own target description of a process, reduced to the core/SSE/linux/segments
/// features: with it, gdb 13 writes registers with PTRACE_SETFPREGS instead of the XSAVE
/// regset, which it cannot write on CPUs whose XSAVE area is bigger than it knows (AMX).
std::string make_sse_only_tdesc(const Config& config) {
  Child sleeper = Child::spawn({"/bin/sleep", "60"});
  ProcResult r = run_process({"gdb", "-p", std::to_string(sleeper.pid()), "-batch", "-nx", "-iex",
                              "set debuginfod enabled off", "-ex", "maint print xml-tdesc"},
                             60s);
  sleeper.stop(SIGKILL);
  size_t begin = r.out.find("<?xml");
  size_t end = r.out.find("</target>");
  if (begin == std::string::npos || end == std::string::npos) {
    throw std::runtime_error("gdb printed no target description: " + r.describe());
  }
  std::string xml = r.out.substr(begin, end + 9 - begin);
  std::string kept;
  size_t at = 0;
  for (;;) {
    size_t feature = xml.find("<feature name=\"", at);
    if (feature == std::string::npos) break;
    size_t close = xml.find("</feature>", feature);
    if (close == std::string::npos) break;
    close += 10;
    size_t name_start = feature + 15;
    std::string name = xml.substr(name_start, xml.find('"', name_start) - name_start);
    kept += xml.substr(at, feature - at);
    if (name == "org.gnu.gdb.i386.core" || name == "org.gnu.gdb.i386.sse" || name == "org.gnu.gdb.i386.linux" ||
        name == "org.gnu.gdb.i386.segments") {
      kept += xml.substr(feature, close - feature);
    }
    at = close;
  }
  kept += xml.substr(at);
  std::string path = config.paths.work_dir + "/gdb-tdesc-sse-only.xml";
  std::ofstream(path) << kept << "\n";
  return path;
}

ProcResult run_gdb(pid_t pid, const std::string& patch, const std::string& tdesc) {
  std::vector<std::string> args = {"gdb", "-p", std::to_string(pid), "-batch", "-nx", "-iex", "set debuginfod enabled off"};
  if (!tdesc.empty()) {
    args.push_back("-iex");
    args.push_back("set tdesc filename " + tdesc);
  }
  args.push_back("-ex");
  args.push_back("call (void*)dlopen(\"" + patch + "\", 2)");
  return run_process(args, 120s);
}

struct Probed {
  Greeter greeter;
  std::unique_ptr<Prober> prober;
};

Probed probed_greeter(const Config& config, int port = 0) {
  Probed p{Greeter::start(config.paths.greeter, port, 4), nullptr};
  p.prober = std::make_unique<Prober>(p.greeter.port(), std::chrono::microseconds(config.probe_interval_us));
  p.prober->start();
  sleep_ms(100);
  return p;
}

/// The probe's longest wait over [from, to], once the requests in flight then have answered.
double longest_wait_ms(Prober& prober, uint64_t from, uint64_t to) {
  size_t seen = prober.replies();
  for (int i = 0; i < 200 && prober.replies() < seen + 5; ++i) sleep_ms(5);
  return prober.longest_wait_ns(from, to) / 1e6;
}

}  // namespace

AlternativesResults run_alternatives(const Config& config) {
  AlternativesResults out;
  ProcResult version = run_process({"gdb", "--version"}, 30s);
  if (!version.ok()) {
    out.error = "gdb not runnable: " + version.describe();
  } else {
    out.gdb_version = version.out.substr(0, version.out.find('\n'));
  }
  std::string tdesc;
  out.gdb_mode = "plain";
  const std::string patch = config.paths.greeter_patch;
  for (int rep = 0; rep < config.alt_reps; ++rep) {
    spdlog::info("alternatives: rep {}/{}", rep + 1, config.alt_reps);
    // -- polusctl apply, and the probe's noise floor on the same process before it.
    {
      Probed p = probed_greeter(config);
      uint64_t b0 = now_ns();
      sleep_ms(config.probe_baseline_s * 1000);
      out.baseline_wait_ms.add(longest_wait_ms(*p.prober, b0, now_ns()));
      auto before = p.greeter.stats();
      uint64_t t0 = now_ns();
      CliOp op = must_apply(config.paths, p.greeter.pid(), patch);
      uint64_t t1 = now_ns();
      out.polus_wait_ms.add(longest_wait_ms(*p.prober, t0, t1));
      out.polus_wall_ms.add(op.wall_ns / 1e6);
      out.polus_pause_ms.add(op.pause_ns / 1e6);
      auto after = p.greeter.stats();
      out.polus_eintr = after["eintr"] - before["eintr"];
      out.polus_requests_before = before["requests"];
      out.polus_requests_after = after["requests"];
      if (p.prober->versions_after(t1).second == 0) out.polus_version_switched = false;
      p.prober->stop();
      p.greeter.stop();
    }
    // -- gdb
    if (out.error.empty()) {
      for (int attempt = 0; attempt < 2; ++attempt) {
        Probed p = probed_greeter(config);
        auto before = p.greeter.stats();
        uint64_t t0 = now_ns();
        ProcResult r = run_gdb(p.greeter.pid(), patch, tdesc);
        uint64_t t1 = now_ns();
        double wait = longest_wait_ms(*p.prober, t0, t1);
        bool called = r.out.find("= (void *) 0x") != std::string::npos;
        bool loaded = called && maps_contain(p.greeter.pid(), patch);
        if (!loaded && tdesc.empty() && (r.out + r.err).find(kXstateError) != std::string::npos) {
          // gdb 13 cannot write the XSAVE register set on CPUs with a bigger XSAVE area than it
          // knows (AMX): retry, this time and from now on, with an SSE-only target description.
          spdlog::warn("gdb: \"{}\"; retrying with an SSE-only target description", kXstateError);
          tdesc = make_sse_only_tdesc(config);
          out.gdb_mode = "SSE-only target description (plain gdb failed here: \"" + std::string(kXstateError) +
                         ": Bad address\")";
          p.prober->stop();
          p.greeter.stop();
          continue;
        }
        if (!loaded) out.gdb_loaded = false;
        auto after = p.greeter.stats();
        out.gdb_eintr = after["eintr"] - before["eintr"];
        out.gdb_wall_ms.add(r.wall_ns / 1e6);
        out.gdb_wait_ms.add(wait);
        if (!loaded) spdlog::warn("gdb did not load the library: {}", r.describe());
        p.prober->stop();
        p.greeter.stop();
        break;
      }
    }
    // -- restart on the same port
    {
      Probed p = probed_greeter(config);
      const int port = p.greeter.port();
      out.restart_requests_before = p.greeter.stats()["requests"];
      uint64_t t_kill = now_ns();
      p.greeter.stop(SIGTERM);
      out.restart_exit_ms.add((now_ns() - t_kill) / 1e6);
      Greeter again = Greeter::start(config.paths.greeter, port, 4);
      uint64_t failed = 0, back = 0;
      for (int i = 0; i < 5000 && back == 0; ++i) {
        failed = p.prober->first_failure_after(t_kill);
        back = failed ? p.prober->first_success_after(failed) : 0;
        if (back == 0) sleep_ms(1);
      }
      if (back == 0) throw std::runtime_error("restart: the probe client never got a reply from the new server");
      out.restart_downtime_ms.add((back - t_kill) / 1e6);
      p.prober->stop();
      out.restart_requests_after = again.stats()["requests"];
      again.stop();
    }
  }
  return out;
}

}  // namespace bench
