// polus/engine.h — apply, roll back and inspect live patches of one running process.
//
// The engine is a library: polusctl calls it once per command, and polusd can host it for
// long-running updates. Every entry point either completes or throws polus::Error having
// left the target as it found it (jumps not written, patch and agent unloaded again,
// scratch memory unmapped, registers and signals restored).
//
// Where the target is stopped: only the borrowed thread is stopped while libraries load
// (the others keep serving); every thread is stopped only for the commit — writing the
// 5-byte jumps — and that pause is measured and recorded in the patch's record.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "polus/symbols.h"

namespace polus {

struct EngineOptions {
  SymbolOptions symbols;
  /// libpolus-agent.so to load into targets that do not have it yet (absolute path).
  std::string agent_path;
  /// How long to wait for threads to leave the bytes being rewritten, stop, or be safe to borrow.
  std::chrono::milliseconds timeout{10000};
};

struct RedirectInfo {
  std::string old_name;
  std::string new_name;
  uint64_t old_function = 0;
  uint64_t new_function = 0;
  uint64_t patch_site = 0;
  uint64_t trampoline = 0;  // 0: direct jump
  bool stacked = false;     // the function was already patched by an older patch
};

struct PatchInfo {
  uint64_t id = 0;
  std::string name;
  std::string path;
  std::string state;
  uint64_t applied_at_unix_ns = 0;
  uint64_t apply_wall_ns = 0;
  uint64_t pause_ns = 0;
  std::vector<RedirectInfo> redirects;
};

struct ProcessStatus {
  pid_t pid = 0;
  bool agent_loaded = false;
  std::string agent_path;
  std::vector<PatchInfo> patches;  // oldest first
};

/// Applies the patch at `patch_path` to process `pid`. Returns what was applied.
PatchInfo apply_patch(pid_t pid, const std::string& patch_path, const EngineOptions& options);

/// Rolls back the newest applied patch of `pid`. Returns what was rolled back.
PatchInfo rollback_patch(pid_t pid, const EngineOptions& options);

/// Reads the patch registry of `pid` without stopping it.
ProcessStatus read_status(pid_t pid);

}  // namespace polus
