// synth_target.h — drive bench_target (bench/synth/bench_target.c) over its stdin/stdout.
#pragma once

#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "util.h"

namespace bench {

class SynthTarget {
 public:
  static SynthTarget start(const std::string& binary, int threads) {
    SynthTarget t;
    t.child_ = Child::spawn({binary, "--threads", std::to_string(threads)});
    std::string ready = t.child_.read_line(10s);
    if (ready.rfind("READY ", 0) != 0) throw std::runtime_error(binary + ": expected READY, got '" + ready + "'");
    return t;
  }
  pid_t pid() const { return child_.pid(); }

  /// How many of bench_fn_0..99 currently answer as the patched version.
  int check() {
    child_.send_line("CHECK");
    std::string line = child_.read_line();
    int patched = -1;
    if (std::sscanf(line.c_str(), "CHECK patched=%d", &patched) != 1) {
      throw std::runtime_error("bench_target: bad CHECK answer '" + line + "'");
    }
    return patched;
  }

  /// ns per call of bench_fn_0 (or of the function at `address`) over `calls` calls, each
  /// depending on the previous result (`chain`) or independent.
  double ns_per_call(unsigned long calls, bool chain, uint64_t address = 0) {
    char hex[32];
    std::snprintf(hex, sizeof hex, " %llx", static_cast<unsigned long long>(address));
    child_.send_line("TIME " + std::to_string(calls) + (chain ? " chain" : " indep") + (address ? hex : ""));
    std::string line = child_.read_line(60s);
    unsigned long long ns = 0;
    unsigned long n = 0;
    if (std::sscanf(line.c_str(), "TIME ns=%llu calls=%lu", &ns, &n) != 2 || n == 0) {
      throw std::runtime_error("bench_target: bad TIME answer '" + line + "'");
    }
    return static_cast<double>(ns) / static_cast<double>(n);
  }

  void stop() {
    try {
      child_.send_line("QUIT");
    } catch (...) {
    }
    child_.stop(SIGTERM, 2s);
  }

 private:
  Child child_;
};

}  // namespace bench
