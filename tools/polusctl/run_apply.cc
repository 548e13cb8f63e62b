// polusctl apply, its run: load a patch into running processes and redirect their functions
// (the engine's side of the command unit; cmd_apply.cc parses it).
#include <signal.h>
#include <string.h>

#include <tuple>

#include "polus/stop_request.h"
#include "render.h"
#include "run.h"
#include "store.h"

namespace polusctl {

void run_apply(const Json& request, Output& out) {
  const polus::EngineOptions options = engine_options(request);
  std::string patch = request["patch"].get<std::string>();
  const bool json = request.value("json", false);
  std::vector<pid_t> pids = resolve_targets(request["targets"]);
  std::string stored;  // with --persist: the stored copy is what gets applied (and recorded)
  bool stored_before = false;
  if (request.contains("store")) {
    const std::string build_id = polus::executable_build_id(pids[0]);
    for (pid_t pid : pids) {
      if (build_id.empty() || polus::executable_build_id(pid) != build_id) {
        throw polus::Error(polus::ErrorCode::kBuildMismatch,
                           "--persist stores a patch for one build, by its build-id: process " + std::to_string(pid) +
                               (build_id.empty() ? " runs an executable without one" : " runs another build than process " +
                                                                                         std::to_string(pids[0])));
      }
    }
    polus::describe_patch_file(patch, options);  // a malformed file is refused before it is stored
    bool created = false;
    std::tie(stored, created) = store_patch(request["store"].get<std::string>(), build_id, patch);
    patch = stored;
    if (!created) stored_before = true;
  }
  // Ctrl-C, kill and a dropped ssh session wait until the engine reaches a point where it can
  // stop cleanly (it asks at every such point): they never cut a change to the target short.
  sigset_t stop = polus::stop_signals();
  sigprocmask(SIG_BLOCK, &stop, nullptr);
  if (pids.size() == 1) {
    polus::PatchInfo info;
    try {
      const double began = timestamp_us();
      info = polus::apply_patch(pids[0], patch, options);
      out.engine_call_us += timestamp_us() - began;
    } catch (...) {
      if (!stored.empty() && !stored_before) unstore(stored);  // the store keeps only patches that applied
      throw;
    }
    note_in_flight(request, pids[0], info);
    print_change("apply", pids[0], info, json, request.value("daemon", false), out);
  } else {
    apply_all_or_none(request, pids, patch, options, out);
  }
  if (!stored.empty()) {
    if (out.status != 0) {
      if (!stored_before) unstore(stored);
    } else if (!request.value("json", false)) {
      out.out += "stored as " + stored + ": polusd applies it to every new process of this build\n";
    }
  }
  if (int sig = polus::stop_requested()) {
    out.err += std::string("polusctl apply: stopped by ") + strsignal(sig) + " once the target was in a recorded state\n";
  }
}

}  // namespace polusctl
