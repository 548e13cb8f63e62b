/*
 * sync.h — the agent's write-through synchronisation (POLUS §2.2, §4.1.2): entry points
 * exported by libpolus-agent.so. The table they work on is registry.sync
 * (polus/agent_abi.h). Defined in sync_api.c; the design and its invariant: tracked_pages.c.
 *
 * The injector calls these through a borrowed thread (their symbol names:
 * POLUS_AGENT_SYNC_*_SYMBOL in polus/agent_abi.h); patches' pre-update callbacks and
 * sync functions may call polus_register_heap_data directly (declare it themselves, or
 * include this header).
 */
#ifndef POLUS_AGENT_SYNC_H
#define POLUS_AGENT_SYNC_H

#include <stdint.h>

#include "polus/patch.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Makes registry.sync.items hold at least `capacity` entries (entries already there are
 * kept, item_count is unchanged). Returns the array's address, 0 on failure. The caller
 * writes entries at [item_count, capacity) and then raises item_count. Counterpart indices
 * are absolute indices in the table. */
uint64_t polus_agent_sync_reserve(uint32_t capacity);

/* Optional, before sync_begin, while the target runs (the injector calls it before its commit
 * pause): builds the page table (reading /proc/self/maps), the shadows and the memfds of the
 * pages' views, so that sync_begin, in the pause, only protects, copies and moves mappings.
 * Items added afterwards (heap data registered by a pre-update callback) make sync_begin do
 * it all again. 0 or -errno (as sync_begin; nothing is protected either way). */
int polus_agent_sync_prepare(void);

/* Starts tracking: shadow copies, SIGSEGV/SIGTRAP handlers (previous ones saved for
 * chaining; SIGBUS/SIGFPE/SIGILL ones too, which only catch sync functions' faults), every
 * writable page holding an item made read-only; registry.sync.fault cleared. 0 or -errno
 * (-EBUSY: already active; -EINVAL: bad table; -EFAULT: an item is not mapped;
 * -EDEADLK: called from inside the sync machinery; -ETIMEDOUT: the sync lock stayed held,
 * e.g. by a thread stopped by ptrace inside the agent's handler). */
int polus_agent_sync_begin(void);

/* Runs, once, the post_sync of every item on `from_side` (POLUS_OLD for an update) so the
 * other side starts from the current state. Call it right after sync_begin, before any
 * code of the other side can run. Does not fault on the caller's thread (safe from a
 * borrowed thread), provided the sync functions write only their counterparts.
 * Returns the number of sync functions run, or -errno (-EFAULT: one faulted; see
 * registry.sync.fault). */
int polus_agent_sync_initialize(uint32_t from_side);

/* Stops tracking: refused with -ECANCELED (nothing changed) while registry.sync.fault
 * records a sync function's fault and sync.abandoning is 0. Protections restored at once; the previous SIGSEGV/SIGTRAP dispositions
 * once no write fault of ours can still be on its way (a quiet period of 50 ms: no SIGSEGV
 * pending, no write fault entering the handler), so it takes >= 50 ms. Safe while other
 * threads run and write. Returns 0; 1 if ours stays installed as a pass-through (a handler
 * was installed over ours, it never got quiet within ~2 s, or POLUS_SYNC_KEEP_HANDLERS);
 * -errno. The table is kept (for status) until polus_agent_sync_clear. */
int polus_agent_sync_end(void);

/* Empties the table and zeroes the counters before the next update. -EBUSY while active. */
int polus_agent_sync_clear(void);

/* For pre-update callbacks that convert heap data (e.g. a linked list whose node type
 * changed): appends the pair (old_item, new_item) to the table, each one the other's
 * counterpart. If sync is active, the new pages are protected at once and, unless called
 * from inside a sync function, old_post_sync is run once to close the window between the
 * callback's conversion and the protection. 0 or -errno (-EFAULT: the pair is registered,
 * but old_post_sync faulted). */
int polus_register_heap_data(void *old_item, void *new_item, uint64_t size_old, uint64_t size_new,
                             polus_sync_fn old_post_sync, polus_sync_fn new_post_sync);

/* Diagnostics (tests, benchmarks): how tracked writes were carried out. */
struct polus_sync_stats {
    uint64_t emulated;        /* application writes executed out of line by the agent */
    uint64_t single_stepped;  /* application writes let through an opened page with TF */
    uint64_t sync_writes;     /* writes by sync functions to protected pages */
    uint64_t retried_faults;  /* write faults retried once (page no longer ours) */
    uint64_t xol_slots_built; /* distinct instructions relocated */
    uint32_t emulation;       /* 1 if out-of-line execution is available */
    uint32_t reserved;
    uint64_t fast_path;       /* application writes carried out without the sync lock (fast_path.c) */
    uint64_t lock_waits;      /* of those, writes that found an item (pair) lock taken by another thread */
};
void polus_agent_sync_get_stats(struct polus_sync_stats *out);

/* Flags of polus_agent_sync_configure (tests): */
#define POLUS_SYNC_FORCE_SINGLE_STEP 0x1u /* never emulate: open the page and single-step */
#define POLUS_SYNC_KEEP_HANDLERS 0x2u     /* sync_end leaves ours installed as a pass-through */
#define POLUS_SYNC_NO_FAST_PATH 0x4u      /* every write takes the sync lock (comparisons) */
void polus_agent_sync_configure(uint32_t flags);

#ifdef __cplusplus
}
#endif

#endif /* POLUS_AGENT_SYNC_H */
