// sections.h — the benchmark sections, their settings and what each one measures.
//
// Each section runs on its own (fresh target processes, nothing shared but Config) and
// returns raw samples; report.cc turns them into the table, the notes and the plot.
#pragma once

#include <array>
#include <optional>
#include <string>
#include <vector>

#include "polusctl.h"
#include "util.h"

namespace bench {

struct Config {
  bool quick = false;
  Paths paths;

  // Grid: patches of 1/10/100 functions x targets of 1/8/32 threads.
  std::vector<int> grid_functions{1, 10, 100};
  std::vector<int> grid_threads{1, 8, 32};
  int grid_reps = 9;         // apply+rollback per cell (interleaved across patch sizes)
  int first_apply_reps = 5;  // fresh processes for the "first apply" row
  int headline_functions = 10, headline_threads = 8;

  // Call overhead.
  int call_blocks = 15;          // unpatched/patched alternations
  int call_samples = 3;          // TIME commands per state per block
  unsigned long call_count = 20000000;  // calls per TIME

  // Throughput: one greeter, phases U -> P1 -> P10 then mirrored, ratios within a cycle.
  // Unpinned on purpose: the scheduler keeps each client next to its server thread; pinning
  // them to separate CPUs (tried) makes every request a cross-CPU wakeup: 4x slower, noisier.
  // Four greeters side by side (U, U', P1, P10 in the same window; tried) is worse still: on
  // 2 cores the scheduler shares the CPU between competing closed loops very unevenly.
  int tp_clients = 4;
  int tp_cycles = 20;      // alternating U->P1->P10 and P10->P1->U
  double tp_phase_s = 1.2;
  double tp_settle_s = 0.2;

  // Memory.
  int mem_reps = 3;

  // Alternatives.
  int alt_reps = 5;
  int probe_interval_us = 200;
  double probe_baseline_s = 0.3;

  // Sections to run (all when empty): grid, call, throughput, data, memory, alternatives.
  std::vector<std::string> only;
  bool runs(const std::string& section) const;

  static Config full(const Paths& paths);
  static Config smoke(const Paths& paths);  // --quick
};

// ---- Grid ----------------------------------------------------------------------------------

struct OpSamples {
  Samples cli_ms;     // polusctl wall, fork/exec to reap
  Samples engine_ms;  // apply_wall_ns from its JSON
  Samples pause_ms;   // pause_ns from its JSON
  void add(const CliOp& op) {
    cli_ms.add(op.wall_ns / 1e6);
    engine_ms.add(op.engine_ns / 1e6);
    pause_ms.add(op.pause_ns / 1e6);
  }
};

struct GridCell {
  int functions = 0;
  int threads = 0;
  OpSamples apply;
  OpSamples rollback;
  int check_failures = 0;  // CHECK did not report the expected number of redirected functions
};

struct GridResults {
  std::vector<GridCell> cells;
  OpSamples first_apply;   // fresh target (agent loaded by this apply), headline cell
  Samples status_cli_ms;   // polusctl status --json on the headline target: the CLI floor
  Samples symbols_ms;      // the symbols an apply reads (headers, the executable's table, libc
                           // exports) of the headline target, in a fresh process
  Samples all_tables_ms;   // reading every object's table besides (the cost before lazy tables)
  Samples patch_file_ms;   // read_patch_file of the headline patch, in a fresh process
  size_t symbol_count = 0;
  std::string biggest_symbol_source;  // e.g. "libc.so.6: 8099 symbols from /usr/lib/debug/..."
  const GridCell* cell(int functions, int threads) const;
};

GridResults run_grid(const Config& config);

/// `polus-bench --engine-parts PID PATCH`: in this fresh process, times read_patch_file(PATCH)
/// and ProcessSymbols::load(PID) once and prints them as JSON (what polusctl does first, cold).
int engine_parts_main(pid_t pid, const std::string& patch);

// ---- Call overhead -------------------------------------------------------------------------

struct CallTimes {
  Samples unpatched_ns;  // ns per call of bench_fn_0, target unpatched
  Samples patched_ns;    // the same with bench_fn_0 redirected to bench_fn_0_v1
  Samples direct_ns;     // bench_fn_0_v1 called at its own address (no redirect), while patched
};

struct CallResults {
  CallTimes chain;  // each call's argument is the previous result: latency-bound
  CallTimes indep;  // independent calls: throughput-bound
  bool via_trampoline = false;
  unsigned long calls = 0;
};

CallResults run_call_overhead(const Config& config);

// ---- Throughput ----------------------------------------------------------------------------

struct ThroughputResults {
  Samples unpatched_rps;
  Samples patched1_rps;
  Samples patched10_rps;
  Samples ratio1;    // patched once / unpatched, per cycle
  Samples ratio10;   // patched ten times / unpatched, per cycle
  Samples ratio_aa;  // two consecutive phases in the same state: the noise floor
  Samples unpatched_cpu_us;  // server CPU time per request (all threads), unpatched
  Samples cpu_ratio1;        // CPU per request patched once / unpatched, per cycle
  Samples cpu_ratio10;       // ... ten times
  Samples cpu_ratio_aa;
  uint64_t wrong_version = 0;  // replies from the wrong greeter version after a settle
  uint64_t failures = 0;
  int clients = 0;
  double phase_s = 0;
};

ThroughputResults run_throughput(const Config& config);

// ---- Data update (not implemented in the engine yet) ---------------------------------------

struct DataSyncResults {
  bool measured = false;     // false until the engine applies data patches
  std::string pending;       // the row text while not measured
  std::string engine_answer; // what polusctl said to a data patch in this run
  bool engine_accepts = false;  // it applied the data patch
  Samples server_fraction;      // greeter requests/s during the sync phase / steady state
  Samples throughput_fraction;  // Fig. 2 counter: the same, the worst case
  Samples throughput_fraction_notified;  // D1n: the counter whose new code calls polus_wrote
  Samples tracked_write_us;     // cost of one write to a tracked item (D2)
  Samples bare_fault_us;        // F0: a bare SIGSEGV round trip, the floor, same run
  Samples false_sharing_us;     // D3: a write to an untracked variable on a tracked page
  Samples tracked_write_ratio;  // D2 / F0, per sample (same process)
  Samples false_sharing_ratio;  // D3 / F0, per sample
  std::array<Samples, 4> scaling;  // D4: tracked writes/s with 1, 2, 4, 8 threads on different items
  std::array<Samples, 4> scaling_one_lock;  // the same with every write under the one sync lock
  Samples commit_pause_us;      // D5: the commit pause of the greeter's data update
  std::vector<std::pair<std::string, Samples>> commit_pause_parts;  // its parts, in order (µs)
};

DataSyncResults run_data_sync(const Config& config);

/// The notes on method for rows F0–D5 and why the design wins (markdown paragraphs).
std::string data_sync_notes(const DataSyncResults& d);

// ---- Memory --------------------------------------------------------------------------------

struct MemoryDelta {
  Samples rss_kb;       // VmRSS
  Samples mapped_kb;    // accessible mappings
  Samples reserved_kb;  // PROT_NONE reservations
  void add(const ProcMemory& before, const ProcMemory& after, double per = 1.0);
};

struct MemoryResults {
  MemoryDelta first;    // first patch into a process (loads the agent too)
  MemoryDelta further;  // each of patches 2..10 (mean per patch)
  MemoryDelta ten;      // all ten
  MemoryDelta big;      // the 100-function patch, agent already loaded
  Samples base_rss_kb, base_mapped_kb;  // the greeter before any patch
  Samples synth_base_rss_kb, synth_base_mapped_kb;  // bench_target before the 100-function patch
};

MemoryResults run_memory(const Config& config);

// ---- Alternatives --------------------------------------------------------------------------

struct AlternativesResults {
  Samples baseline_wait_ms;   // probe client's longest wait with nothing happening
  Samples polus_wall_ms;      // polusctl apply, fresh greeter (agent loaded by it)
  Samples polus_pause_ms;     // the engine's pause for it
  Samples polus_wait_ms;      // probe client's longest wait during it
  Samples gdb_wall_ms;        // gdb -p PID -batch -ex 'call (void*)dlopen(...)'
  Samples gdb_wait_ms;
  Samples restart_downtime_ms;  // kill -> first good reply from the new process
  Samples restart_exit_ms;      // kill -> old process reaped
  long polus_eintr = 0, gdb_eintr = 0;  // system calls interrupted (greeter's eintr counter), last rep
  long polus_requests_before = 0, polus_requests_after = 0;
  long restart_requests_before = 0, restart_requests_after = 0;
  bool polus_version_switched = true;  // the probe saw v1 replies after the apply
  bool gdb_loaded = true;              // the library showed up in /proc/PID/maps
  std::string gdb_mode;                // "plain" or why the workaround was needed
  std::string gdb_version;
  std::string error;                   // if gdb could not be run at all
};

AlternativesResults run_alternatives(const Config& config);

// ---- Report --------------------------------------------------------------------------------

struct AllResults {
  GridResults grid;
  CallResults call;
  ThroughputResults throughput;
  DataSyncResults data_sync;
  MemoryResults memory;
  AlternativesResults alternatives;
  double total_s = 0;
  std::string load_before, load_after;  // /proc/loadavg: other work on the machine
};

struct ReportFiles {
  std::string markdown;  // BENCHMARKS.md
  std::string png;       // bench/benchmarks.png
};

/// Prints the table to stdout, writes the markdown and (with gnuplot) the PNG.
/// Returns false if the PNG could not be made.
bool write_report(const Config& config, const AllResults& results, const ReportFiles& files);

}  // namespace bench
