// polus-bench — Polus's benchmark driver. bench/run.sh builds and runs it; see bench/README.md.
//
//   polus-bench [--quick] [--markdown FILE] [--png FILE] [--work-dir DIR]
//
// Runs every section in one go (grid, call overhead, throughput, data update, memory,
// alternatives), prints one table to stdout and writes BENCHMARKS.md and the PNG plot.
// Progress goes to stderr. Needs ptrace rights over its own children (root or CAP_SYS_PTRACE).
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <iostream>
#include <stdexcept>

#include "sections.h"

namespace bench {

bool Config::runs(const std::string& section) const {
  return only.empty() || std::find(only.begin(), only.end(), section) != only.end();
}

Config Config::full(const Paths& paths) {
  Config c;
  c.paths = paths;
  return c;
}

Config Config::smoke(const Paths& paths) {
  Config c;
  c.paths = paths;
  c.quick = true;
  c.grid_reps = 3;
  c.first_apply_reps = 2;
  c.call_blocks = 3;
  c.call_samples = 2;
  c.call_count = 5000000;
  c.tp_cycles = 4;
  c.tp_phase_s = 0.6;
  c.tp_settle_s = 0.2;
  c.mem_reps = 1;
  c.alt_reps = 2;
  return c;
}

}  // namespace bench

namespace {

constexpr const char* kUsage =
    "usage: polus-bench [--quick] [--only SECTIONS] [--markdown FILE] [--png FILE] [--work-dir DIR]\n"
    "  --quick        smoke run (~1 minute): few repetitions, short phases\n"
    "  --only S,...   run only these sections (grid, call, throughput, data, memory, alternatives);\n"
    "                 the others show n/a (for working on one section, not for the record)\n"
    "  --markdown F   where to write the report (default: <source>/BENCHMARKS.md)\n"
    "  --png F        where to write the plot (default: <source>/bench/benchmarks.png)\n"
    "  --work-dir D   data files, gnuplot script, gdb target description (default: <build>/bench/results)\n";

template <typename F>
auto timed_section(const char* name, F&& run) {
  spdlog::info("== {}", name);
  uint64_t start = bench::now_ns();
  auto result = run();
  spdlog::info("== {} done in {:.1f} s", name, (bench::now_ns() - start) / 1e9);
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace bench;
  auto logger = spdlog::stderr_color_mt("bench");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("[%H:%M:%S.%e] %^%l%$ %v");
  signal(SIGPIPE, SIG_IGN);

  bool quick = false;
  std::vector<std::string> only;
  ReportFiles files{std::string(POLUS_BENCH_SOURCE_DIR) + "/BENCHMARKS.md",
                    std::string(POLUS_BENCH_SOURCE_DIR) + "/bench/benchmarks.png"};
  Paths paths{POLUS_BENCH_POLUSCTL, POLUS_BENCH_AGENT,    POLUS_BENCH_GREETER, POLUS_BENCH_GREETER_PATCH,
              POLUS_BENCH_TARGET,   POLUS_BENCH_PATCH_DIR, POLUS_BENCH_WORK_DIR, "/proc/self/exe"};
  if (argc == 4 && std::strcmp(argv[1], "--engine-parts") == 0) {
    spdlog::set_level(spdlog::level::warn);
    return engine_parts_main(static_cast<pid_t>(std::atoi(argv[2])), argv[3]);
  }
  {
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) paths.self = std::string(self, static_cast<size_t>(n));
  }
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::cerr << "polus-bench: " << a << " needs a value\n" << kUsage;
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--quick") quick = true;
    else if (a == "--only") {
      std::istringstream list(value());
      for (std::string section; std::getline(list, section, ',');) only.push_back(section);
    } else if (a == "--markdown") files.markdown = value();
    else if (a == "--png") files.png = value();
    else if (a == "--work-dir") paths.work_dir = value();
    else if (a == "-h" || a == "--help") {
      std::cout << kUsage;
      return 0;
    } else {
      std::cerr << "polus-bench: unknown argument " << a << "\n" << kUsage;
      return 2;
    }
  }
  // gnuplot runs in the work directory: every output path must be absolute.
  auto absolute = [](std::string& path) {
    char cwd[4096];
    if (!path.empty() && path[0] != '/' && getcwd(cwd, sizeof cwd)) path = std::string(cwd) + "/" + path;
  };
  absolute(files.markdown);
  absolute(files.png);
  absolute(paths.work_dir);
  mkdir(paths.work_dir.c_str(), 0755);
  Config config = quick ? Config::smoke(paths) : Config::full(paths);
  config.only = only;
  if (const char* level = std::getenv("POLUS_BENCH_LOG")) spdlog::set_level(spdlog::level::from_str(level));
  for (const std::string& section : only) {
    static const std::vector<std::string> known = {"grid", "call", "throughput", "data", "memory", "alternatives"};
    if (std::find(known.begin(), known.end(), section) == known.end()) {
      std::cerr << "polus-bench: unknown section '" << section << "'\n" << kUsage;
      return 2;
    }
  }

  try {
    uint64_t start = now_ns();
    AllResults results;
    results.load_before = load_average();
    if (config.runs("grid")) results.grid = timed_section("apply/rollback grid", [&] { return run_grid(config); });
    if (config.runs("call")) results.call = timed_section("call overhead", [&] { return run_call_overhead(config); });
    if (config.runs("throughput")) results.throughput = timed_section("throughput", [&] { return run_throughput(config); });
    if (config.runs("data")) results.data_sync = timed_section("data update", [&] { return run_data_sync(config); });
    if (config.runs("memory")) results.memory = timed_section("memory", [&] { return run_memory(config); });
    if (config.runs("alternatives")) {
      results.alternatives = timed_section("alternatives", [&] { return run_alternatives(config); });
    }
    results.total_s = (now_ns() - start) / 1e9;
    results.load_after = load_average();
    return write_report(config, results, files) ? 0 : 1;
  } catch (const std::exception& e) {
    spdlog::error("benchmark failed: {}", e.what());
    return 1;
  }
}
