// ns per call of bench_fn_0 unpatched vs redirected to bench_fn_0_v1 (same body), in a
// 1-thread bench_target, alternating the two states so drift hits both alike. While patched
// it also times bench_fn_0_v1 called at its own address: the same code without the redirect,
// which isolates the cost of the jumps from the effect of the new code's placement. Both as a
// dependent chain of calls (latency) and as independent calls (throughput).
#include <spdlog/spdlog.h>

#include <stdexcept>

#include "sections.h"
#include "synth_target.h"

namespace bench {

CallResults run_call_overhead(const Config& config) {
  CallResults out;
  out.calls = config.call_count;
  SynthTarget target = SynthTarget::start(config.paths.target, 1);
  const std::string patch = config.paths.synth_patch(1);
  // Load the agent first, and warm the loop up.
  must_apply(config.paths, target.pid(), patch);
  must_rollback(config.paths, target.pid());
  target.ns_per_call(config.call_count, true);
  target.ns_per_call(config.call_count, false);
  for (int block = 0; block < config.call_blocks; ++block) {
    if (block % 5 == 0) spdlog::info("call overhead: block {}/{}", block + 1, config.call_blocks);
    for (int s = 0; s < config.call_samples; ++s) {
      out.chain.unpatched_ns.add(target.ns_per_call(config.call_count, true));
      out.indep.unpatched_ns.add(target.ns_per_call(config.call_count, false));
    }
    CliOp apply = must_apply(config.paths, target.pid(), patch);
    out.via_trampoline = apply.trampoline;
    if (target.check() != 1 || apply.new_address == 0) {
      throw std::runtime_error("call overhead: bench_fn_0 not redirected after apply");
    }
    for (int s = 0; s < config.call_samples; ++s) {
      for (bool chain : {true, false}) {
        CallTimes& times = chain ? out.chain : out.indep;
        times.patched_ns.add(target.ns_per_call(config.call_count, chain));
        times.direct_ns.add(target.ns_per_call(config.call_count, chain, apply.new_address));
      }
    }
    must_rollback(config.paths, target.pid());
    if (target.check() != 0) throw std::runtime_error("call overhead: bench_fn_0 still redirected after rollback");
  }
  target.stop();
  return out;
}

}  // namespace bench
