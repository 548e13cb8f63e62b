#include "update/rehearsal.h"

#include <dlfcn.h>
#include <errno.h>
#include <sys/ptrace.h>

#include <algorithm>
#include <thread>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <spdlog/spdlog.h>

#include "common/clock.h"
#include "polus/error.h"
#include "update/data_update.h"
#include "update/patch_memfd.h"

namespace polus {

namespace {

bool is_allocator(const std::string& name) {
  static const std::vector<std::string> kAllocator = {
      "malloc", "free", "calloc", "realloc", "reallocarray", "posix_memalign", "aligned_alloc", "memalign", "valloc",
      "pvalloc", "malloc_trim", "malloc_stats", "malloc_info", "mallinfo", "mallinfo2", "__libc_malloc",
      "__libc_free", "__libc_calloc", "__libc_realloc", "__libc_memalign"};
  return std::find(kAllocator.begin(), kAllocator.end(), name) != kAllocator.end();
}

/// Runs the load in the copy; throws Error describing what went wrong there.
void load_in_copy(TargetContext& target, PtraceSession& session, ProcMemory& memory, const PatchDescription& patch,
                  const AgentImage& agent_image, std::optional<AgentLocation> agent, const std::string& memfd_name,
                  const std::vector<std::pair<uint64_t, uint64_t>>& slots) {
  const pid_t copy = session.pid();
  if (!session.stop_thread(copy, step_deadline())) {
    throw Error(ErrorCode::kTargetDied, "the copy exited before Polus could use it");
  }
  // If Polus dies from here on, the kernel kills the copy (it could otherwise hang in a lock
  // it inherited, keeping every descriptor of the target open).
  constexpr long kOptions = PTRACE_O_TRACECLONE | PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL;
  if (::ptrace(PTRACE_SETOPTIONS, copy, nullptr, reinterpret_cast<void*>(kOptions)) != 0) {
    throw_errno("PTRACE_SETOPTIONS of the copy", errno);
  }
  ScratchArena arena(memory);
  arena.adopt(target.arena().arenas());
  BorrowedThread thread(session, memory, copy, arena, [&target] { return target.bootstrap_entries(); });
  // The copy must not touch what it shares with the target through inherited descriptors:
  // sockets, files, the agent's /proc/self/mem (which is the target's memory).
  thread.syscall(SYS_close_range, {3, ~0u, 0});
  if (!agent) {
    load_agent_from_memfd(thread, memory, copy, dynamic_loader_debug(target.symbols()), target.libc_function("dlopen"),
                          target.libc_function("dlerror"), agent_image);
    agent = locate_agent(memory, read_process_maps(copy));
    if (!agent) throw Error(ErrorCode::kLoadFailed, "the Polus agent was loaded in the copy, but its registry is not there");
  }
  // The same bytes the target will load, from a sealed memfd made in the copy.
  uint64_t patch_handle = load_patch_from_memfd(thread, memory, copy, *agent, dynamic_loader_debug(target.symbols()), patch,
                                                memfd_name);
  // Pre-update callbacks of a code-only patch need nothing of the update's state: try them
  // too. (A data patch's callbacks register heap data with the agent's tracking, which only
  // the real commit sets up.)
  const uint64_t bias = memory.read(RemotePtr<uint64_t>(patch_handle));
  // As the real load does before any callback: a callback may call the version its patch
  // replaces (an OLD function's slot) or use an import. No jump is written in the copy, so the
  // original entries are that version.
  for (const auto& [slot, value] : slots) memory.write(RemotePtr<uint64_t>(bias + slot), value);
  if (patch.mappings_of(POLUS_MAP_DATA).empty()) {
    int refused = run_callbacks(thread, patch, bias, POLUS_CB_PRE_UPDATE, ~0u, 0, POLUS_UPDATE_APPLY);
    if (refused) spdlog::debug("rehearsal: the pre-update callback refused ({}); the real commit will say so", refused);
  }
}

}  // namespace

RehearsalCost rehearse_load(TargetContext& target, const PatchDescription& patch, const AgentImage& agent_image,
                            const std::optional<AgentLocation>& agent, const std::string& memfd_name,
                            const std::vector<std::pair<uint64_t, uint64_t>>& slots) {
  const auto started = Clock::now();
  // The copy runs our stubs: the arena must exist before it is made.
  {
    BorrowedThread thread = target.borrow_safe_thread();
    const LoadedObject& main = target.symbols().main_executable();
    target.arena().ensure(thread, main.text_start, main.text_end);
  }
  pid_t cloner = 0;
  pid_t copy = 0;
  pid_t copy_in_target = 0;  // the target's number for it (another in a pid namespace of its own)
  PauseRequest request;
  request.giving_up = "cannot make a copy of the process to rehearse the load in";
  request.prepare = [&] {
    if (!cloner) cloner = target.stop_thread_safe_to_borrow();
    return cloner;
  };
  // A lock held by any thread at the moment of the copy stays held in the copy for good:
  // no thread may have a frame in the loader, fork or thread creation (CFI frames decide;
  // stale return addresses in dead stack slots do not count).
  request.why_busy = [&] {
    // Allocator locks are left out: a server's threads live in malloc, and each thread mostly
    // allocates from its own arena; the copy's one thread rarely needs another's. If it
    // does, the copy hangs and the rehearsal says so, the target unharmed.
    std::vector<AddressRange> locks;
    for (const AddressRange& range : target.lock_holding_ranges()) {
      if (!is_allocator(range.what)) locks.push_back(range);
    }
    for (const ThreadSnapshot& snap : target.snapshot_threads(true)) {
      if (std::optional<RangeHit> hit = target.lock_holder(snap, locks)) return TargetContext::describe_hit(snap.tid, *hit);
    }
    return std::string();
  };
  std::optional<PtraceSession> session;
  request.act = [&](const Pause&) {
    copy = target.borrow(cloner).clone_process(&copy_in_target);
    // Out of the target's session before the pause ends, or resuming every thread would
    // let the copy go too.
    session.emplace(target.session().split_off_process(copy));
  };
  RehearsalCost cost;
  cost.pause_ns = target.pause_when_free(request);
  // Let go of the target while the copy is driven: its threads' signals and new threads must
  // not wait for the rehearsal.
  target.release();

  std::string failure;
  try {
    ProcMemory memory(copy);
    load_in_copy(target, *session, memory, patch, agent_image, agent, memfd_name, slots);
  } catch (const Error& e) {
    failure = e.code() == ErrorCode::kTargetDied ? "the copy died (" + std::string(e.what()) + ")" : e.what();
  } catch (const std::exception& e) {
    failure = e.what();
  }
  session->kill_and_reap();
  // The copy is a zombie child of the target now: the target reaps it (exit signal 0 means
  // no SIGCHLD; only a wait with __WALL sees it, and this one takes exactly that pid).
  try {
    target.seize();
    BorrowedThread thread = target.borrow_safe_thread();
    int64_t reaped = 0;
    for (int attempt = 0; attempt < 200 && reaped != copy_in_target; ++attempt) {
      reaped = thread.syscall(SYS_wait4, {static_cast<uint64_t>(copy_in_target), 0, __WALL | WNOHANG, 0});
      if (reaped < 0 && reaped != -EINTR) break;
      if (reaped != copy_in_target) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (reaped != copy_in_target) spdlog::warn("the rehearsal's copy {} was not reaped by process {} ({})", copy, target.pid(), reaped);
  } catch (const std::exception& e) {
    spdlog::warn("the rehearsal's copy {} was not reaped by process {}: {}", copy, target.pid(), e.what());
  }
  if (!failure.empty()) {
    throw Error(ErrorCode::kLoadFailed, "patch " + patch.name + " failed when its load was rehearsed in a copy of process " +
                                            std::to_string(target.pid()) + ": " + failure +
                                            ". The process itself was not touched; fix the patch");
  }
  cost.total_ns = elapsed_ns(started);
  spdlog::debug("rehearsal of patch {} in copy {} of process {}: {} us, the copy made in a pause of {} us", patch.name,
                copy, target.pid(), cost.total_ns / 1000, cost.pause_ns / 1000);
  return cost;
}

}  // namespace polus
