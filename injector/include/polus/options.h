// polus/options.h — what a caller of the engine can choose (public API).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

namespace polus {

/// Where the engine looks for debug information of the target's objects.
struct SymbolOptions {
  /// Debug files named explicitly (e.g. --debug-file), matched to objects by build-id.
  std::vector<std::string> debug_files;
  /// Roots searched for .build-id/xx/rest.debug; default {"/usr/lib/debug"}.
  std::vector<std::string> debug_roots = {"/usr/lib/debug"};
};

/// Options of one engine operation (apply, rollback, finish).
struct EngineOptions {
  SymbolOptions symbols;
  /// libpolus-agent.so to load into targets that do not have it yet (absolute path).
  std::string agent_path;
  /// Try the load (agent, patch constructors, pre-update callbacks) in a copy of the target
  /// first, and refuse the patch if the copy dies, hangs or faults (update/rehearsal.h).
  bool rehearse = true;
  /// Apply even where the redirects cannot reach all the code they replace: copies gcc made
  /// of an old function (.constprop, .isra, .part) the patch does not replace, or callers the
  /// debug information shows it inlined into (update/reach_checks.h). Off: such a patch is
  /// refused, naming them.
  bool force = false;
  /// How long to wait for threads to leave the bytes being rewritten, stop, or be safe to borrow.
  std::chrono::milliseconds timeout{10000};
  /// How long apply/rollback/finish wait for a data update's sync phase to end before
  /// returning with the update still `syncing` (finish it later with finish_update).
  std::chrono::milliseconds sync_timeout{10000};
  /// Owners besides root and the caller whose patch files (and the directories holding them)
  /// apply trusts (polusctl --allow-owner); SECURITY.md has the rules a patch file must pass.
  std::vector<uid_t> allowed_owners;
};

}  // namespace polus
