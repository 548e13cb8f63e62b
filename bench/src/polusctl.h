// polusctl.h — run build/tools/polusctl as an operator would, and read its --json answer.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

namespace bench {

/// One polusctl command: wall time measured by us (fork/exec to reap), the engine's own
/// apply_wall_ns and pause_ns from its --json output.
struct CliOp {
  bool ok = false;
  uint64_t wall_ns = 0;    // polusctl start to finish, as seen by the caller
  uint64_t engine_ns = 0;  // apply_wall_ns: inside the engine (symbols .. record)
  uint64_t pause_ns = 0;   // every target thread stopped
  size_t functions = 0;    // redirects in the answer
  bool trampoline = false; // at least one redirect goes through a trampoline
  uint64_t new_address = 0; // the first redirect's new function, in the target
  std::string state;        // the patch's state after the command (e.g. "committed")
  std::string error;       // when !ok
};

struct Paths {
  std::string polusctl;
  std::string agent;
  std::string greeter;        // greeter-v0
  std::string greeter_patch;  // greeter-v0-v1.so
  std::string target;         // bench_target
  std::string patch_dir;      // bench-{1,10,100}fn.so, greeter-stack-{2..10}.so
  std::string work_dir;       // data files, gnuplot script, gdb tdesc
  std::string self;           // polus-bench itself (for --engine-parts)

  std::string synth_patch(int functions) const { return patch_dir + "/bench-" + std::to_string(functions) + "fn.so"; }
  /// The k-th patch of the greeter's format_reply (k = 1: greeter-v0-v1.so, 2..10: stacked ones).
  std::string greeter_stack(int k) const {
    return k == 1 ? greeter_patch : patch_dir + "/greeter-stack-" + std::to_string(k) + ".so";
  }
};

CliOp polusctl_apply(const Paths& paths, pid_t pid, const std::string& patch);
CliOp polusctl_rollback(const Paths& paths, pid_t pid);
CliOp polusctl_status(const Paths& paths, pid_t pid);

/// Like the above but retry once (a failed apply or rollback leaves the target as it was)
/// and throw std::runtime_error when polusctl fails twice. Retries are counted.
CliOp must_apply(const Paths& paths, pid_t pid, const std::string& patch);
CliOp must_rollback(const Paths& paths, pid_t pid);
/// How many polusctl commands failed once and were retried; their first error.
int polusctl_retries();
std::string polusctl_first_retry_error();

}  // namespace bench
