// What patches add to the target: VmRSS and total mapped size (sum of /proc/PID/maps),
// after the first patch (which also loads libpolus-agent.so and maps the trampoline arena),
// per further patch, after ten, and for the 100-function synthetic patch.
#include <spdlog/spdlog.h>

#include "greeter.h"
#include "sections.h"
#include "synth_target.h"

namespace bench {

void MemoryDelta::add(const ProcMemory& before, const ProcMemory& after, double per) {
  rss_kb.add((after.rss_kb - before.rss_kb) / per);
  mapped_kb.add((static_cast<double>(after.mapped_bytes) - static_cast<double>(before.mapped_bytes)) / 1024.0 / per);
  reserved_kb.add((static_cast<double>(after.reserved_bytes) - static_cast<double>(before.reserved_bytes)) / 1024.0 / per);
}

MemoryResults run_memory(const Config& config) {
  MemoryResults out;
  for (int rep = 0; rep < config.mem_reps; ++rep) {
    spdlog::info("memory: rep {}/{}", rep + 1, config.mem_reps);
    Greeter greeter = Greeter::start(config.paths.greeter, 0, 4);
    greeter.request("HELLO warm");  // the code paths a request touches are resident
    sleep_ms(50);
    ProcMemory m0 = read_memory(greeter.pid());
    must_apply(config.paths, greeter.pid(), config.paths.greeter_stack(1));
    greeter.request("HELLO warm");
    ProcMemory m1 = read_memory(greeter.pid());
    for (int k = 2; k <= 10; ++k) must_apply(config.paths, greeter.pid(), config.paths.greeter_stack(k));
    greeter.request("HELLO warm");
    ProcMemory m10 = read_memory(greeter.pid());
    out.base_rss_kb.add(m0.rss_kb);
    out.base_mapped_kb.add(m0.mapped_bytes / 1024.0);
    out.first.add(m0, m1);
    out.further.add(m1, m10, 9.0);
    out.ten.add(m0, m10);
    greeter.stop();

    SynthTarget target = SynthTarget::start(config.paths.target, 1);
    must_apply(config.paths, target.pid(), config.paths.synth_patch(1));  // agent in
    must_rollback(config.paths, target.pid());
    sleep_ms(20);
    ProcMemory s0 = read_memory(target.pid());
    must_apply(config.paths, target.pid(), config.paths.synth_patch(100));
    target.check();  // run the new code once
    ProcMemory s1 = read_memory(target.pid());
    out.big.add(s0, s1);
    out.synth_base_rss_kb.add(s0.rss_kb);
    out.synth_base_mapped_kb.add(s0.mapped_bytes / 1024.0);
    target.stop();
  }
  return out;
}

}  // namespace bench
