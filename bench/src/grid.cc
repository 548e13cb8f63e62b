// Apply and rollback, wall and pause, for patches of 1/10/100 functions on targets with
// 1/8/32 threads (bench_target), plus what the headline cell's time is made of.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <stdexcept>

#include "update/patch_file.h"
#include "binary/symbols.h"
#include "sections.h"
#include "synth_target.h"

namespace bench {

const GridCell* GridResults::cell(int functions, int threads) const {
  for (const GridCell& c : cells) {
    if (c.functions == functions && c.threads == threads) return &c;
  }
  return nullptr;
}

namespace {

/// Times what the engine does first on every apply — parse the patch file, read every symbol
/// table of the target — in a fresh process (`polus-bench --engine-parts`), cold like polusctl.
void time_engine_parts(const Config& config, pid_t pid, GridResults& out) {
  const std::string patch = config.paths.synth_patch(config.headline_functions);
  for (int rep = 0; rep < config.grid_reps; ++rep) {
    ProcResult r = run_process({config.paths.self, "--engine-parts", std::to_string(pid), patch}, 60s);
    auto symbols = json_uint(r.out, "symbols_ns");
    auto patch_ns = json_uint(r.out, "patch_ns");
    auto all_tables = json_uint(r.out, "all_tables_ns");
    if (!r.ok() || !symbols || !patch_ns || !all_tables) throw std::runtime_error("polus-bench --engine-parts: " + r.describe());
    out.symbols_ms.add(*symbols / 1e6);
    out.all_tables_ms.add(*all_tables / 1e6);
    out.patch_file_ms.add(*patch_ns / 1e6);
    out.symbol_count = json_uint(r.out, "symbol_count").value_or(0);
    out.biggest_symbol_source = json_string(r.out, "biggest").value_or("");
  }
}

}  // namespace

int engine_parts_main(pid_t pid, const std::string& patch) {
  uint64_t start = now_ns();
  polus::PatchDescription description = polus::read_patch_file(patch);
  uint64_t patch_ns = now_ns() - start;
  // What an apply reads: every object's headers, the executable's table (the patch names its
  // functions) and libc's exports (dlopen, the lock-holding entry points) — tables are lazy.
  start = now_ns();
  polus::ProcessSymbols symbols = polus::ProcessSymbols::load(pid);
  symbols.symbols_of(symbols.main_executable());
  for (const polus::LoadedObject& object : symbols.objects()) {
    if (object.path.find("/libc.so") != std::string::npos) symbols.exported_functions(object, {"dlopen", "malloc", "free"});
  }
  uint64_t symbols_ns = now_ns() - start;
  // What reading every table costs (what each apply did before tables became lazy).
  start = now_ns();
  for (const polus::LoadedObject& object : symbols.objects()) symbols.symbols_of(object);
  uint64_t all_tables_ns = now_ns() - start;
  size_t count = 0, biggest = 0;
  std::string source;
  for (const polus::LoadedObject& object : symbols.objects()) {
    size_t object_count = symbols.symbols_of(object).size();
    count += object_count;
    if (object_count > biggest) {
      biggest = object_count;
      source = object.path.substr(object.path.rfind('/') + 1) + ": " + std::to_string(biggest) + " symbols from " +
               (object.symbols_from == object.path ? std::string("its own ") + (object.has_symtab ? ".symtab" : ".dynsym")
                                                   : object.symbols_from);
    }
  }
  std::printf("{\"patch_ns\":%llu,\"symbols_ns\":%llu,\"all_tables_ns\":%llu,\"symbol_count\":%zu,\"biggest\":\"%s\"}\n",
              static_cast<unsigned long long>(patch_ns), static_cast<unsigned long long>(symbols_ns),
              static_cast<unsigned long long>(all_tables_ns), count, source.c_str());
  return 0;
}

GridResults run_grid(const Config& config) {
  GridResults out;
  for (int threads : config.grid_threads) {
    for (int functions : config.grid_functions) out.cells.push_back(GridCell{functions, threads, {}, {}, 0});
  }
  for (int threads : config.grid_threads) {
    spdlog::info("grid: target with {} thread(s)", threads);
    SynthTarget target = SynthTarget::start(config.paths.target, threads);
    // The first patch loads the agent and maps the trampoline arena: not part of the steady grid
    // (measured separately below as "first apply").
    must_apply(config.paths, target.pid(), config.paths.synth_patch(1));
    must_rollback(config.paths, target.pid());
    for (int rep = 0; rep < config.grid_reps; ++rep) {
      for (int functions : config.grid_functions) {
        GridCell& cell = *std::find_if(out.cells.begin(), out.cells.end(), [&](const GridCell& c) {
          return c.functions == functions && c.threads == threads;
        });
        CliOp apply = must_apply(config.paths, target.pid(), config.paths.synth_patch(functions));
        cell.apply.add(apply);
        if (apply.functions != static_cast<size_t>(functions) || target.check() != functions) cell.check_failures++;
        CliOp rollback = must_rollback(config.paths, target.pid());
        cell.rollback.add(rollback);
        if (target.check() != 0) cell.check_failures++;
      }
    }
    if (threads == config.headline_threads) {
      must_apply(config.paths, target.pid(), config.paths.synth_patch(config.headline_functions));
      for (int rep = 0; rep < config.grid_reps; ++rep) {
        CliOp status = polusctl_status(config.paths, target.pid());
        if (!status.ok) throw std::runtime_error("polusctl status: " + status.error);
        out.status_cli_ms.add(status.wall_ns / 1e6);
      }
      time_engine_parts(config, target.pid(), out);
      must_rollback(config.paths, target.pid());
    }
    target.stop();
  }
  spdlog::info("grid: first apply into fresh processes ({} fn, {} threads)", config.headline_functions,
               config.headline_threads);
  for (int rep = 0; rep < config.first_apply_reps; ++rep) {
    SynthTarget target = SynthTarget::start(config.paths.target, config.headline_threads);
    sleep_ms(50);
    out.first_apply.add(must_apply(config.paths, target.pid(), config.paths.synth_patch(config.headline_functions)));
    target.stop();
  }
  return out;
}

}  // namespace bench
