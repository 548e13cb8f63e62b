// Disruption during a data update: throughput while the sync phase is active, as a fraction
// of steady state (D1), and the cost of one tracked write (D2).
//
// D1 measures a request-driven server: the greeter under our load client, with
// greeter-v0-v1-data.so, which tracks its request counter (one atomic increment per request,
// on a page its ticker thread also writes) and keeps the update syncing for as long as the
// workers run their loop; requests/s for a while before the apply and while syncing, in the
// same process.
// D1n: the same with counter-v0-v1-notified.so, whose new code says polus_wrote after writing
// ab_v1 (POLUS_DATA_WRITES_NOTIFIED): new code writes without a fault, old code stays tracked.
// D1w uses the Fig. 2 counter (test-servers/fig2/counter.c): eight threads increment ab.a.i
// through bar()/foo() in a tight loop, every increment a write to the changed global. A thread
// kept in hold() holds the update in `syncing`; the completed-call rate is measured for 1 s
// before the apply (steady) and for 1 s while syncing, in the same process, then the hold is
// released and the update finished. This is the worst case: every iteration writes tracked data.
// F0, D2, D3 and D4 come from the agent's own micro-benchmark (agent_sync_test perf), run in
// this run: F0 is a bare SIGSEGV round trip (a store to a read-only page, a handler that skips
// it) — the floor any fault-based tracking pays; D2 a tracked write whose sync function stores
// once (through the writable view it is given); D3 a write to an untracked variable on a
// tracked page; D4 tracked writes per second by 1/2/4/8 threads writing different items.
// D2 and D3 are also reported as ratios to F0 measured in the same process.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <thread>

#include <spdlog/spdlog.h>

#include "greeter.h"
#include "polus/engine.h"
#include "sections.h"

namespace bench {

namespace {

/// The counter target on pipes.
class Counter {
 public:
  Counter() {
    int in[2], out[2];
    if (pipe(in) != 0 || pipe(out) != 0) throw std::runtime_error("pipe");
    pid_ = fork();
    if (pid_ == 0) {
      dup2(in[0], 0);
      dup2(out[1], 1);
      close(in[1]);
      close(out[0]);
      execl(POLUS_BENCH_COUNTER, POLUS_BENCH_COUNTER, nullptr);
      _exit(127);
    }
    close(in[0]);
    close(out[1]);
    to_ = fdopen(in[1], "w");
    from_ = fdopen(out[0], "r");
    if (line() != "READY") throw std::runtime_error("counter did not start");
  }
  ~Counter() {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    fclose(to_);
    fclose(from_);
  }
  pid_t pid() const { return pid_; }
  std::string ask(const std::string& command) {
    std::fprintf(to_, "%s\n", command.c_str());
    std::fflush(to_);
    return line();
  }
  long calls() {
    std::string counts = ask("counts");
    auto at = counts.find("calls=");
    return at == std::string::npos ? -1 : std::stol(counts.substr(at + 6));
  }

 private:
  std::string line() {
    char buf[512];
    if (!std::fgets(buf, sizeof buf, from_)) throw std::runtime_error("counter exited");
    std::string s(buf);
    if (!s.empty() && s.back() == '\n') s.pop_back();
    return s;
  }
  pid_t pid_ = -1;
  FILE* to_ = nullptr;
  FILE* from_ = nullptr;
};

double calls_per_second(Counter& counter, double seconds) {
  long before = counter.calls();
  auto start = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  long after = counter.calls();
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return (after - before) / elapsed;
}

/// One D1 sample, or a negative value when the update did not stay in `syncing`.
double throughput_fraction_once(double seconds, const char* patch) {
  Counter counter;
  if (counter.ask("hold") != "HOLDING") return -1;
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  double steady = calls_per_second(counter, seconds);
  polus::EngineOptions options;
  options.agent_path = POLUS_BENCH_AGENT;
  options.sync_timeout = std::chrono::milliseconds(100);
  polus::PatchInfo info = polus::apply_patch(counter.pid(), patch, options);
  if (info.state != "syncing") return -1;
  double syncing = calls_per_second(counter, seconds);
  counter.ask("release");
  options.sync_timeout = std::chrono::seconds(10);
  polus::finish_update(counter.pid(), options);
  return steady > 0 ? syncing / steady : -1;
}

/// One D1 sample on the greeter under load, or a negative value when the update did not stay
/// in `syncing`.
double greeter_fraction_once(const Config& config, double seconds, DataSyncResults& out) {
  Greeter greeter = Greeter::start(config.paths.greeter, 0, config.tp_clients + 2);
  LoadClient load(greeter.port(), config.tp_clients);
  load.start();
  sleep_ms(300);  // connections up, caches warm
  auto rate = [&] {
    uint64_t before = load.counts().total();
    uint64_t start = now_ns();
    sleep_ms(seconds * 1000);
    return static_cast<double>(load.counts().total() - before) / ((now_ns() - start) / 1e9);
  };
  double steady = rate();
  polus::EngineOptions options;
  options.agent_path = POLUS_BENCH_AGENT;
  options.sync_timeout = std::chrono::milliseconds(100);
  polus::PatchInfo info = polus::apply_patch(greeter.pid(), POLUS_BENCH_GREETER_DATA_PATCH, options);
  uint64_t total = 0;
  for (const polus::PausePart& part : info.commit_pause_parts) {
    total += part.ns;
    auto at = std::find_if(out.commit_pause_parts.begin(), out.commit_pause_parts.end(),
                           [&](const auto& p) { return p.first == part.what; });
    if (at == out.commit_pause_parts.end()) at = out.commit_pause_parts.insert(at, {part.what, Samples{}});
    at->second.add(part.ns / 1e3);
  }
  if (total) out.commit_pause_us.add(total / 1e3);
  double syncing = info.state == "syncing" ? rate() : -1;
  load.stop();
  greeter.stop(SIGKILL);  // the update never ends by itself (see the patch); the server goes
  return steady > 0 && syncing >= 0 ? syncing / steady : -1;
}

/// One sample of the agent's micro-benchmark (agent_sync_test perf): F0, D2, D3 and the D4
/// scaling, all from the same process; negative values where a line is missing.
struct PerfSample {
  double f0 = -1, d2 = -1, d3 = -1;
  std::array<double, 4> scaling{-1, -1, -1, -1};
  std::array<double, 4> one_lock{-1, -1, -1, -1};
};
PerfSample agent_perf_once() {
  PerfSample out;
  FILE* p = popen(POLUS_BENCH_AGENT_TEST " perf 2>&1", "r");
  if (!p) return out;
  char buf[512];
  auto value_after = [](const char* line, const char* tag) {
    const char* at = std::strstr(line, tag);
    return at ? std::atof(at + std::strlen(tag)) : -1.0;
  };
  while (std::fgets(buf, sizeof buf, p)) {
    if (std::strstr(buf, "bare fault round trip (F0):")) out.f0 = value_after(buf, "(F0):");
    if (std::strstr(buf, "tracked write + post_sync (its store through args)")) out.d2 = value_after(buf, "emulated:");
    if (std::strstr(buf, "false-sharing write (1 fault)")) out.d3 = value_after(buf, "emulated:");
    int threads = 0;
    double rate = 0;
    if (std::sscanf(buf, "perf: scaling: %d threads on different items: %lf", &threads, &rate) == 2) {
      int slot = threads == 1 ? 0 : threads == 2 ? 1 : threads == 4 ? 2 : threads == 8 ? 3 : -1;
      if (slot >= 0) out.scaling[slot] = rate;
      const char* lock = std::strstr(buf, "one lock: ");
      if (slot >= 0 && lock) out.one_lock[slot] = std::atof(lock + 10);
    }
  }
  pclose(p);
  return out;
}

}  // namespace

DataSyncResults run_data_sync(const Config& config) {
  DataSyncResults out;
  out.pending = "not measured (see the notes)";
  const int samples = config.quick ? 2 : 5;
  const double seconds = config.quick ? 0.5 : 1.0;
  try {
    for (int i = 0; i < samples; ++i) {
      double server = greeter_fraction_once(config, seconds, out);
      if (server >= 0) out.server_fraction.add(server);
      double fraction = throughput_fraction_once(seconds, POLUS_BENCH_COUNTER_PATCH);
      if (fraction >= 0) out.throughput_fraction.add(fraction);
      double notified = throughput_fraction_once(seconds, POLUS_BENCH_COUNTER_NOTIFIED_PATCH);
      if (notified >= 0) out.throughput_fraction_notified.add(notified);
      PerfSample perf = agent_perf_once();
      if (perf.d2 >= 0) out.tracked_write_us.add(perf.d2);
      if (perf.f0 > 0) {
        out.bare_fault_us.add(perf.f0);
        if (perf.d2 >= 0) out.tracked_write_ratio.add(perf.d2 / perf.f0);
        if (perf.d3 >= 0) out.false_sharing_ratio.add(perf.d3 / perf.f0);
      }
      if (perf.d3 >= 0) out.false_sharing_us.add(perf.d3);
      for (size_t k = 0; k < perf.scaling.size(); ++k) {
        if (perf.scaling[k] > 0) out.scaling[k].add(perf.scaling[k]);
        if (perf.one_lock[k] > 0) out.scaling_one_lock[k].add(perf.one_lock[k]);
      }
    }
    out.engine_accepts = true;
    out.engine_answer = "applied counter-v0-v1.so (Fig. 2) and held it syncing";
  } catch (const std::exception& e) {
    out.engine_answer = std::string("data update failed: ") + e.what();
    spdlog::warn("data sync: {}", e.what());
  }
  out.measured = !out.server_fraction.empty() && !out.throughput_fraction.empty() && !out.tracked_write_us.empty();
  return out;
}

}  // namespace bench
