/*
 * sync_api.c — the entry points of the write-through sync (POLUS §2.2, §4.1.2) exported by
 * libpolus-agent.so, declared and described in sync.h; the injector calls them through a
 * borrowed thread (their names: polus/agent_abi.h), patches' callbacks and sync functions
 * may call polus_register_heap_data. The top layer of the sync machinery: the design, its
 * invariant and the layers below: tracked_pages.c.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include "fast_path.h"
#include "fault_handlers.h"
#include "page_views.h"
#include "polus/agent_abi.h"
#include "polus/patch.h"
#include "raw_syscall.h"
#include "store_emulation.h"
#include "sync.h"
#include "sync_fence.h"
#include "sync_state.h"
#include "tracked_pages.h"

#define POLUS_EXPORT __attribute__((visibility("default")))

/* ---- entry points --------------------------------------------------------------------- */

static int enter(int *tid) {
    *tid = fast_tid(); /* the injector follows a borrowed thread system call by system call */
    int rc = lock_acquire(*tid, G.my_pid ? G.my_pid : sys_getpid(), 1);
    if (rc) return rc;
    if (G.lock_depth > 1) { /* from a sync function, or a thread stopped mid-step */
        lock_release();
        return -EDEADLK;
    }
    return 0;
}

static int overlaps_agent_state(uint64_t a, uint64_t size) {
    uint64_t lo = PAGE_OF(a), hi = PAGE_OF(a + size - 1) + PAGE;
    uint64_t g_lo = PAGE_OF((uintptr_t)&G), g_hi = PAGE_OF((uintptr_t)&G + sizeof G - 1) + PAGE;
    uint64_t r_lo = PAGE_OF((uintptr_t)&REG), r_hi = PAGE_OF((uintptr_t)&REG + sizeof REG - 1) + PAGE;
    return (lo < g_hi && g_lo < hi) || (lo < r_hi && r_lo < hi) || emu_state_overlaps(lo, hi);
}

static int validate_item(const struct polus_tracked_item *it, uint32_t i, uint32_t n) {
    if (!it->address || !it->size || it->size > (1ull << 40) || it->address + it->size < it->address) return -EINVAL;
    uint32_t side = it->side & POLUS_ITEM_SIDE_MASK;
    if (side != POLUS_OLD && side != POLUS_NEW) return -EINVAL;
    if ((it->side & ~POLUS_ITEM_SIDE_MASK) & ~POLUS_ITEM_WRITES_NOTIFIED) return -EINVAL;
    if ((it->side & POLUS_ITEM_WRITES_NOTIFIED) && side != POLUS_NEW) return -EINVAL;
    if (it->counterpart != NO_ITEM && (it->counterpart >= n || it->counterpart == i)) return -EINVAL;
    if (overlaps_agent_state(it->address, it->size)) return -EINVAL;
    return 0;
}

POLUS_EXPORT uint64_t polus_agent_sync_reserve(uint32_t capacity) {
    int tid;
    if (enter(&tid) != 0) return 0;
    uint64_t result = 0;
    if (capacity > REG.sync.item_capacity) {
        uint64_t old_bytes = ((uint64_t)REG.sync.item_capacity * sizeof(struct polus_tracked_item) + PAGE - 1) & ~(PAGE - 1);
        uint64_t new_bytes = ((uint64_t)capacity * sizeof(struct polus_tracked_item) + PAGE - 1) & ~(PAGE - 1);
        void *m = REG.sync.items ? sys_mremap(items(), old_bytes, new_bytes) : sys_mmap(new_bytes);
        if (!m || ensure_aux(capacity) < 0) goto out;
        REG.sync.items = (uint64_t)(uintptr_t)m;
        REG.sync.item_capacity = (uint32_t)(new_bytes / sizeof(struct polus_tracked_item));
    } else if (ensure_aux(REG.sync.item_capacity) < 0) {
        goto out;
    }
    /* Open /proc/self/mem and map the out-of-line page now, while the target runs, so
     * sync_begin (called with every thread stopped) has less to do. */
    (void)mem_fd();
    (void)xol_ensure();
    (void)lanes_ensure();
    views_register_fork_handlers(); /* pthread_atfork allocates: here, not in the pause */
    result = REG.sync.items;
out:
    lock_release();
    return result;
}

/* Undoes prepare_locked. */
static void unprepare(uint32_t n) {
    views_discard_staged();
    shadows_free();
    for (uint32_t i = 0; i < n && REG.sync.items; i++) items()[i].shadow = 0;
    table_free();
    G.count = 0;
    G.prepared = 0;
}

/* Everything sync_begin needs that does not need the target stopped: the table (with the
 * pages' protections from /proc/self/maps), the shadows, the memfds of the views. Lock held. */
static int prepare_locked(uint32_t n) {
    int rc;
    if (n > REG.sync.item_capacity || (n && !REG.sync.items)) return -EINVAL;
    for (uint32_t i = 0; i < n; i++)
        if ((rc = validate_item(&items()[i], i, n)) != 0) return rc;
    if ((rc = ensure_aux(REG.sync.item_capacity > n ? REG.sync.item_capacity : n)) != 0) return rc;
    G.stats.emulation = (mem_fd() >= 0 && xol_ensure() == 0) ? 1 : 0;
    G.my_pid = sys_getpid();
    learn_tcb_tid();
    (void)lanes_ensure(); /* without lanes every write takes the sync lock, as before */
    views_register_fork_handlers();
    unprepare(G.prepared);
    G.count = n;
    if ((rc = build_table(n)) != 0) { unprepare(n); return rc; }
    for (uint32_t i = 0; i < n; i++) {
        void *s = shadow_alloc(items()[i].size);
        if (!s) { unprepare(n); return -ENOMEM; }
        items()[i].shadow = (uint64_t)(uintptr_t)s;
        G.item_flags[i] = 0;
    }
    views_stage();
    G.prepared = n;
    return 0;
}

POLUS_EXPORT int polus_agent_sync_prepare(void) {
    int tid, rc = enter(&tid);
    if (rc) return rc;
    rc = G.active ? -EBUSY : prepare_locked(REG.sync.item_count);
    lock_release();
    return rc;
}

POLUS_EXPORT int polus_agent_sync_begin(void) {
    int tid, rc = enter(&tid);
    if (rc) return rc;
    int installed_segv = 0, installed_trap = 0, installed_other = 0;
    uint32_t n = REG.sync.item_count;
    if (G.active) { rc = -EBUSY; goto out; }
    /* Prepared ahead (sync_prepare, before the commit pause) unless items came since (a
     * pre-update callback registering heap data) or it was never called. */
    if (G.prepared != n || !G.pages || !n) {
        if ((rc = prepare_locked(n)) != 0) goto out;
    }
    if ((rc = fence_reset()) != 0) goto fail;
    G.work_count = 0;
    if ((rc = install_fault_handler(SIGSEGV)) != 0) goto fail;
    installed_segv = 1;
    if ((rc = install_fault_handler(SIGTRAP)) != 0) goto fail;
    installed_trap = 1;
    for (; installed_other < FENCED_SIGNAL_COUNT; installed_other++)
        if ((rc = install_fault_handler(FENCED_SIGNALS[installed_other])) != 0) goto fail;
    /* Protect, then snapshot: every write that completed before the protection is in the
     * snapshot, every later one faults (and waits for this lock). */
    if ((rc = protect_pages(1, 0)) != 0) goto fail;
    for (uint32_t i = 0; i < n; i++) {
        struct polus_tracked_item *it = &items()[i];
        memcpy((void *)(uintptr_t)it->shadow, (const void *)(uintptr_t)it->address, it->size);
        it->sync_calls = 0;
    }
    /* Then the writable views (page_views.c): the pages are closed and we hold the lock, so
     * their bytes cannot change while they move onto the memfds. */
    views_commit();
    for (uint32_t k = 0; k < G.page_count; k++) G.pages[k].fresh = 0;
    REG.sync.faults = REG.sync.false_sharing = 0;
    __atomic_store_n(&REG.sync.chained_faults, 0, __ATOMIC_RELAXED);
    G.prepared = 0;
    G.active = 1;
    REG.sync.active = 1;
    rc = 0;
    goto out;
fail:
    if (G.pages) protect_pages(0, 0);
    while (installed_other > 0) restore_fault_handler(FENCED_SIGNALS[--installed_other]);
    if (installed_trap) restore_fault_handler(SIGTRAP);
    if (installed_segv) restore_fault_handler(SIGSEGV);
    unprepare(n);
out:
    lock_release();
    return rc;
}

POLUS_EXPORT int polus_agent_sync_initialize(uint32_t from_side) {
    int tid, rc = enter(&tid);
    if (rc) return rc;
    if (!G.active) { rc = -EINVAL; goto out; }
    int ran = 0, faulted = 0;
    for (uint32_t i = 0; i < G.count; i++) {
        struct polus_tracked_item *it = &items()[i];
        if ((it->side & POLUS_ITEM_SIDE_MASK) != from_side || !it->post_sync || it->counterpart == NO_ITEM) continue;
        if (run_sync((polus_sync_fn)(uintptr_t)it->post_sync, i, 0, POLUS_SYNC_FAULT_POST, 1, tid) != 0) faulted = 1;
        ran++;
    }
    drain(1, tid);
    rc = faulted || REG.sync.fault.function ? -EFAULT : ran;
out:
    lock_release();
    return rc;
}

POLUS_EXPORT int polus_agent_sync_end(void) {
    int tid, rc = enter(&tid);
    if (rc) return rc;
    if (!G.active) { rc = 0; goto out; }
    /* Called on a thread that was stopped in the middle of a tracked write on the fast path
     * (the injector must never borrow one: it counts the agent's code as lock-holding): the
     * tables freed below are the ones that write is using. */
    if (on_fast_path(tid)) { rc = -EDEADLK; goto out; }
    /* A sync function faulted: one write's counterpart never got it. Only the injector,
     * abandoning the update, decides what ends it (it sets sync.abandoning first). */
    if (__atomic_load_n(&REG.sync.fault.function, __ATOMIC_ACQUIRE) && !REG.sync.abandoning) { rc = -ECANCELED; goto out; }
    G.active = 0;
    REG.sync.active = 0;
    /* Ordinary private pages with the same bytes back under every view, while they are still
     * closed (a store meanwhile faults and waits for this lock), then the old protection. */
    views_remove();
    protect_pages(0, 0);
    /* Threads that faulted just before this and wait for the lock find sync inactive and
     * retry their write, which now succeeds. Faults still on their way must reach our
     * handler too: the previous disposition comes back only after a quiet period (see
     * sigsegv_pending_somewhere, fault_handlers.c); otherwise ours stays, as a pass-through. */
    int restored = 0;
    if (!(G.config & POLUS_SYNC_KEEP_HANDLERS)) restored = restore_fault_handlers_when_quiet();
    shadows_free();
    for (uint32_t i = 0; i < G.count; i++) items()[i].shadow = 0;
    table_free();
    G.count = 0;
    G.work_count = 0;
    rc = restored ? 0 : 1;
out:
    lock_release();
    return rc;
}

POLUS_EXPORT int polus_agent_sync_clear(void) {
    int tid, rc = enter(&tid);
    if (rc) return rc;
    if (G.active) { rc = -EBUSY; goto out; }
    unprepare(G.prepared); /* a prepare whose begin never came */
    REG.sync.item_count = 0;
    REG.sync.faults = REG.sync.false_sharing = 0;
    __atomic_store_n(&REG.sync.chained_faults, 0, __ATOMIC_RELAXED);
    memset(&G.stats, 0, sizeof G.stats);
    emu_clear_stats();
out:
    lock_release();
    return rc;
}

POLUS_EXPORT int polus_register_heap_data(void *old_item, void *new_item, uint64_t size_old, uint64_t size_new,
                                          polus_sync_fn old_post_sync, polus_sync_fn new_post_sync) {
    if (!old_item || !new_item || !size_old || !size_new) return -EINVAL;
    int tid = sys_gettid();
    int rc = lock_acquire(tid, sys_getpid(), 1);
    if (rc) return rc;
    /* Allowed from a sync function (lock re-entered by its owner), not mid-step. */
    int from_sync = (G.lock_depth > 1 && G.in_sync) || on_fast_path(tid); /* a sync function on the fast path */
    if (G.lock_depth > 1 && (!from_sync || G.step.active)) { rc = -EDEADLK; goto out; }
    uint32_t n = REG.sync.item_count;
    if (overlaps_agent_state((uint64_t)(uintptr_t)old_item, size_old) ||
        overlaps_agent_state((uint64_t)(uintptr_t)new_item, size_new)) { rc = -EINVAL; goto out; }
    if (n + 2 > REG.sync.item_capacity) {
        uint32_t cap = REG.sync.item_capacity ? REG.sync.item_capacity * 2 : 64;
        while (cap < n + 2) cap *= 2;
        uint64_t old_bytes = ((uint64_t)REG.sync.item_capacity * sizeof(struct polus_tracked_item) + PAGE - 1) & ~(PAGE - 1);
        uint64_t new_bytes = ((uint64_t)cap * sizeof(struct polus_tracked_item) + PAGE - 1) & ~(PAGE - 1);
        void *m = REG.sync.items ? sys_mremap(items(), old_bytes, new_bytes) : sys_mmap(new_bytes);
        if (!m) { rc = -ENOMEM; goto out; }
        REG.sync.items = (uint64_t)(uintptr_t)m;
        REG.sync.item_capacity = (uint32_t)(new_bytes / sizeof(struct polus_tracked_item));
    }
    if ((rc = ensure_aux(REG.sync.item_capacity)) != 0) goto out;
    struct polus_tracked_item *it = items();
    it[n] = (struct polus_tracked_item){(uint64_t)(uintptr_t)old_item, size_old, (uint64_t)(uintptr_t)old_post_sync, 0,
                                        n + 1, POLUS_OLD, 0, 0};
    it[n + 1] = (struct polus_tracked_item){(uint64_t)(uintptr_t)new_item, size_new, (uint64_t)(uintptr_t)new_post_sync,
                                            0, n, POLUS_NEW, 0, 0};
    G.item_flags[n] = G.item_flags[n + 1] = 0;
    if (!G.active) {
        REG.sync.item_count = n + 2;
        goto out;
    }
    void *s0 = shadow_alloc(size_old), *s1 = shadow_alloc(size_new);
    if (!s0 || !s1) { rc = -ENOMEM; goto out; }
    it[n].shadow = (uint64_t)(uintptr_t)s0;
    it[n + 1].shadow = (uint64_t)(uintptr_t)s1;
    if ((rc = build_table(n + 2)) != 0) goto out;
    if ((rc = protect_pages(1, 1)) != 0) {
        protect_pages(0, 1);
        build_table(n); /* forget the pair */
        goto out;
    }
    views_create(1);
    for (uint32_t k = 0; k < G.page_count; k++) G.pages[k].fresh = 0;
    memcpy(s0, old_item, size_old);
    memcpy(s1, new_item, size_new);
    G.count = n + 2;
    REG.sync.item_count = n + 2;
    /* Writes to old_item between the caller's conversion and the protection above did not
     * fault: bring new_item up to date once (a sync function calling us made it so). */
    if (!from_sync && old_post_sync) {
        if (run_sync(old_post_sync, n, 0, POLUS_SYNC_FAULT_POST, 1, tid) != 0) rc = -EFAULT;
        drain(1, tid);
    }
out:
    lock_release();
    return rc;
}

/* New code wrote a NEW item flagged POLUS_ITEM_WRITES_NOTIFIED (patch.h: polus_wrote). */
POLUS_EXPORT void polus_wrote(const void *item) {
    if (!item || !__atomic_load_n(&G.active, __ATOMIC_ACQUIRE)) return;
    int tid = fast_tid();
    int done = fast_notify((uint64_t)(uintptr_t)item, tid);
    if (done != 0) return; /* synced (1), or nothing to do here (-1) */
    /* The sync lock is held by someone (or no lane is free): the usual way, under it. */
    if (lock_acquire(tid, G.my_pid, 0) != 0) return;
    if (G.active) {
        int32_t k = find_page((uint64_t)(uintptr_t)item);
        if (k >= 0) {
            struct page_info *p = &G.pages[k];
            for (uint32_t r = 0; r < p->ref_count; r++) {
                uint32_t i = G.refs[p->first_ref + r];
                struct polus_tracked_item *it = &items()[i];
                if ((uint64_t)(uintptr_t)item < it->address || (uint64_t)(uintptr_t)item >= it->address + it->size) continue;
                uint64_t d = first_diff((const uint8_t *)(uintptr_t)it->address, (const uint8_t *)(uintptr_t)it->shadow, it->size);
                if (d < it->size) note_change(i, d);
            }
            drain(0, tid);
        }
    }
    lock_release();
}

POLUS_EXPORT void polus_agent_sync_get_stats(struct polus_sync_stats *out) {
    if (!out) return;
    *out = G.stats;
    struct emu_stats emu;
    emu_get_stats(&emu);
    out->emulated = emu.emulated;
    out->xol_slots_built = emu.xol_slots_built;
    out->emulation = xol_ready() && !(G.config & POLUS_SYNC_FORCE_SINGLE_STEP) ? 1 : 0;
}

POLUS_EXPORT void polus_agent_sync_configure(uint32_t flags) { G.config = flags; }

