// Steady-state requests/s of the greeter under our load client: unpatched, patched once
// (greeter-v0-v1.so) and patched ten times (nine more patches of format_reply stacked on
// top). Cycles alternate U -> P1 -> P10 (applying) and P10 -> P1 -> U (rolling back), so the
// order of phases is mirrored and slow drift cancels; each ratio uses phases of one cycle.
#include <spdlog/spdlog.h>

#include <stdexcept>

#include "greeter.h"
#include "sections.h"

namespace bench {

namespace {

struct Phase {
  double rps = 0;
  double cpu_per_request_ns = 0;  // the server's CPU time (all threads) per request
  uint64_t wrong = 0;
  uint64_t failures = 0;
};

/// Counts replies for `seconds`; `version` is the greeter version every reply must come from.
Phase measure(const LoadClient& load, pid_t server, double seconds, int version) {
  LoadClient::Counts before = load.counts();
  uint64_t cpu_before = process_cpu_ns(server);
  uint64_t start = now_ns();
  sleep_ms(seconds * 1000);
  LoadClient::Counts after = load.counts();
  uint64_t cpu_after = process_cpu_ns(server);
  uint64_t elapsed = now_ns() - start;
  Phase p;
  uint64_t requests = after.total() - before.total();
  p.rps = static_cast<double>(requests) / (elapsed / 1e9);
  p.cpu_per_request_ns = requests ? static_cast<double>(cpu_after - cpu_before) / static_cast<double>(requests) : 0;
  uint64_t good = version == 0 ? after.v0 - before.v0 : after.v1 - before.v1;
  p.wrong = (after.total() - before.total()) - good;
  p.failures = after.failures - before.failures;
  return p;
}

}  // namespace

ThroughputResults run_throughput(const Config& config) {
  ThroughputResults out;
  out.clients = config.tp_clients;
  out.phase_s = config.tp_phase_s;
  // One worker per load connection, plus room for STATS and polusctl's own needs.
  Greeter greeter = Greeter::start(config.paths.greeter, 0, config.tp_clients + 2);
  LoadClient load(greeter.port(), config.tp_clients);
  load.start();
  sleep_ms(500);  // connections up, caches warm
  auto settle = [&] { sleep_ms(config.tp_settle_s * 1000); };
  auto note = [&](const Phase& p) {
    out.wrong_version += p.wrong;
    out.failures += p.failures;
  };
  Phase previous_unpatched, previous_p10;
  for (int cycle = 0; cycle < config.tp_cycles; ++cycle) {
    Phase u, p1, p10;
    if (cycle % 2 == 0) {
      spdlog::info("throughput: cycle {}/{} (unpatched -> once -> ten times)", cycle + 1, config.tp_cycles);
      u = measure(load, greeter.pid(), config.tp_phase_s, 0);
      must_apply(config.paths, greeter.pid(), config.paths.greeter_stack(1));
      settle();
      p1 = measure(load, greeter.pid(), config.tp_phase_s, 1);
      for (int k = 2; k <= 10; ++k) must_apply(config.paths, greeter.pid(), config.paths.greeter_stack(k));
      settle();
      p10 = measure(load, greeter.pid(), config.tp_phase_s, 1);
      if (previous_unpatched.rps > 0) {  // U at the end of the last cycle, U now
        out.ratio_aa.add(u.rps / previous_unpatched.rps);
        out.cpu_ratio_aa.add(u.cpu_per_request_ns / previous_unpatched.cpu_per_request_ns);
      }
      previous_p10 = p10;
    } else {
      spdlog::info("throughput: cycle {}/{} (ten times -> once -> unpatched)", cycle + 1, config.tp_cycles);
      p10 = measure(load, greeter.pid(), config.tp_phase_s, 1);
      out.ratio_aa.add(p10.rps / previous_p10.rps);  // P10 at the end of the last cycle, P10 now
      out.cpu_ratio_aa.add(p10.cpu_per_request_ns / previous_p10.cpu_per_request_ns);
      for (int k = 10; k >= 2; --k) must_rollback(config.paths, greeter.pid());
      settle();
      p1 = measure(load, greeter.pid(), config.tp_phase_s, 1);
      must_rollback(config.paths, greeter.pid());
      settle();
      u = measure(load, greeter.pid(), config.tp_phase_s, 0);
      previous_unpatched = u;
    }
    for (const Phase* p : {&u, &p1, &p10}) note(*p);
    out.unpatched_rps.add(u.rps);
    out.patched1_rps.add(p1.rps);
    out.patched10_rps.add(p10.rps);
    out.ratio1.add(p1.rps / u.rps);
    out.ratio10.add(p10.rps / u.rps);
    out.unpatched_cpu_us.add(u.cpu_per_request_ns / 1000);
    out.cpu_ratio1.add(p1.cpu_per_request_ns / u.cpu_per_request_ns);
    out.cpu_ratio10.add(p10.cpu_per_request_ns / u.cpu_per_request_ns);
  }
  load.stop();
  greeter.stop();
  return out;
}

}  // namespace bench
