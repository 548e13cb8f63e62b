// Disruption during a data update: throughput while the sync phase is active, as a fraction
// of steady state, and the cost of one tracked write.
//
// NOT MEASURED YET: data sync is issue 3, and these rows stay "pending" until the measurement
// below is written. Every run offers the engine a patch with a data item
// (greeter-data-probe.so) and reports what it said — refused (code-only engine) or applied —
// so the report shows when the rows can be filled in. It never invents numbers.
//
// When data sync lands, fill in run_data_sync() and set `measured`:
//   - throughput_fraction: run LoadClient against a greeter (as throughput.cc does), measure a
//     steady phase, apply greeter-data-probe.so and measure while `polusctl status --json`
//     reports the patch's state as "syncing"; add (syncing rps / steady rps) per cycle.
//   - tracked_write_us: give bench_target a tracked global and a WRITE <n> command that times
//     n writes to it (as TIME does for calls); add (tracked - untracked) / n in µs.
// report.cc prints numbers instead of the pending text as soon as `measured` is true.
#include <spdlog/spdlog.h>

#include "greeter.h"
#include "sections.h"

namespace bench {

DataSyncResults run_data_sync(const Config& config) {
  DataSyncResults out;
  out.pending = "pending — needs data sync (issue 3)";
  Greeter greeter = Greeter::start(config.paths.greeter, 0, 4);
  CliOp op = polusctl_apply(config.paths, greeter.pid(), config.paths.patch_dir + "/greeter-data-probe.so");
  out.engine_accepts = op.ok;
  if (op.ok) {
    // The engine accepts data patches now: the measurement above has to be written.
    out.engine_answer = "applied (state " + op.state + ", pause " + human_ns(static_cast<double>(op.pause_ns)) +
                        "): the engine takes data patches now, so these rows can be measured — see "
                        "bench/src/data_sync.cc";
    spdlog::warn("data sync: the engine applied a data patch; the data-update rows are not measured yet");
  } else {
    out.engine_answer = "refused: " + op.error;
  }
  greeter.stop();
  return out;
}

}  // namespace bench
