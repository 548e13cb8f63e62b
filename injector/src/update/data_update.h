// update/data_update.h — the data side of an update (internal to the engine).
//
// Both versions of every changed global are write-protected while old and new code run side
// by side; the agent's SIGSEGV handler runs the patch's sync functions (bidirectional
// write-through, POLUS paper §2.2). The update stays `syncing` until a stack inspection finds
// no thread in a watched function — one that uses changed data on the side being retired
// (old functions when applying, new ones when rolling back, paper §4.2.1) — then the
// protection is lifted and the update commits.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "polus/agent_abi.h"
#include "polus/options.h"
#include "process/borrowed_thread.h"
#include "update/patch_file.h"
#include "update/registry.h"
#include "update/sync_watchdog.h"
#include "binary/symbols.h"
#include "update/target.h"

namespace polus {

/// One old/new pair of a data update, at runtime addresses.
struct TrackedPair {
  uint32_t old_index = 0, new_index = 0;  // in the patch's data[]
  std::string old_name, new_name;
  uint64_t old_address = 0, old_size = 0, new_address = 0, new_size = 0;
  uint64_t old_post_sync = 0, old_pre_sync = 0, new_post_sync = 0, new_pre_sync = 0;  // 0 = none
  bool new_writes_notified = false;  // POLUS_DATA_WRITES_NOTIFIED on the new item: new code calls polus_wrote
};

struct DataPlan {
  std::vector<TrackedPair> pairs;                // read-only pairs are left out (paper §4.1.2)
  std::vector<polus_watched_function> watched;  // the retiring side's functions that use them
  bool has_heap_roots = false;                   // heap pairs come from a pre-update callback
  bool empty() const { return pairs.empty() && !has_heap_roots; }
};

/// Plans a patch's data update. Old items are resolved in the target; new items and new
/// functions sit at `patch_bias` + their link-time address. Throws kSymbolNotFound.
DataPlan plan_data_update(const PatchDescription& patch, const ProcessSymbols& symbols, uint64_t patch_bias,
                          uint32_t direction);

/// Fills the agent's tracked-item table: pair k becomes items 2k (old) and 2k+1 (new).
void install_tracked_items(BorrowedThread& thread, ProcessMemory& memory, const AgentLocation& agent,
                           const DataPlan& plan);

/// Runs the source side's post_sync once per pair (old -> new when applying, new -> old when
/// rolling back) so both sides start equal. Call with every other thread stopped. A sync
/// function that faults (caught by the BorrowedThread) leaves its counterpart as it was before
/// the call (up to 1 MiB) and throws SyncFunctionFault (update/abandon.h).
void initialize_counterparts(BorrowedThread& thread, ProcessMemory& memory, const DataPlan& plan, uint32_t direction);

/// Why write tracking must not start now, or "": a thread inside one of glibc's sections that
/// block every signal and put the saved mask back afterwards — a thread being created
/// (pthread_create's child runs with all signals blocked until start_thread restores its
/// creator's mask), fork, posix_spawn. Its mask says so: glibc's own SIGCANCEL and SIGSETXID
/// (32, 33) are blocked only there. Unblocking SIGSEGV in such a thread would be undone a
/// moment later, and its first tracked write would kill the process.
std::string mask_reset_pending(PtraceSession& session);

/// How long a commit waits for such a thread before going ahead anyway.
inline constexpr std::chrono::milliseconds kMaskResetWait{500};

/// Lets every stopped thread take the agent's write-tracking signals (SIGSEGV, and SIGTRAP for
/// its single-step fallback). Servers commonly block all signals in worker threads; a fault
/// on a thread that blocks SIGSEGV is not delivered to a handler at all: the kernel resets
/// the disposition to SIG_DFL and the process dies (kernel/signal.c, force_sig_info_to_task).
/// Blocking a synchronous fault signal has no other effect, so the change is left in place.
/// Call with the threads stopped: before tracking starts, and at each inspection (threads
/// created meanwhile inherit their creator's mask).
/// `since_start`: an inspection of an update already syncing (threads found blocking the
/// signals then are named in a warning: they were born or re-blocked since tracking began).
void unblock_fault_signals(PtraceSession& session, bool since_start = false);

/// Protects every tracked item and starts write tracking. Call with every other thread stopped
/// (after unblock_fault_signals).
void begin_sync(BorrowedThread& thread, const AgentLocation& agent);

/// Lifts the protection and stops tracking. false (nothing changed) when the agent refuses
/// because a sync function faulted and the update is not being abandoned.
bool end_sync(BorrowedThread& thread, const AgentLocation& agent);

/// Lets `watchdog` rescue `thread` when a call into the agent (ending tracking, a callback
/// registering heap data) runs a sync function that crashes or never returns there
/// (BorrowedThread::set_rescue).
void watch_sync_functions(BorrowedThread& thread, SyncWatchdog& watchdog);

/// Calls every callback of `kind` with `index` and `thread_id`; returns the first non-zero result.
/// While the thread passes faults to the target (write tracking on), each callback runs inside
/// the agent's callback fence (`agent`'s run_callback, if it has one): a fault of its own is
/// contained there and reported as a CodeFault, as a crash of a callback is with tracking off.
int run_callbacks(BorrowedThread& thread, const PatchDescription& patch, uint64_t patch_bias, uint32_t kind,
                  uint32_t index, uint64_t thread_id, uint32_t direction, const AgentLocation* agent = nullptr);

/// How drive_sync_to_end ended.
enum class SyncOutcome {
  kDone,     // no thread runs a watched function: tracking ended; commit (apply) or unload (rollback)
  kPending,  // `until` passed, or a stop was requested: still syncing, recorded
  kFaulted,  // a sync function faulted (registry.sync.fault): abandon the update (update/abandon.h)
};

/// Inspects every thread's stack (CFI unwinding, scanning only where no CFI exists) until no
/// thread runs a watched function or `until` passes, pausing the target briefly for each
/// inspection and firing thread, function, data and post-update callbacks as the paper
/// describes. Records holders and progress in `record`. Stops at the first inspection that
/// finds a sync function's fault recorded (kFaulted), unless the update is being abandoned
/// (sync.abandoning): then faults are ignored and no callback of the patch runs. `progress`,
/// if set, hears after each inspection that did not end it who still holds the update.
SyncOutcome drive_sync_to_end(TargetContext& target, const AgentLocation& agent, PatchRecordView& record,
                              const PatchDescription& patch, uint64_t patch_bias, Clock::time_point until,
                              uint64_t& max_pause_ns,
                              const std::function<void(const SyncProgress&)>& progress = {});

}  // namespace polus
