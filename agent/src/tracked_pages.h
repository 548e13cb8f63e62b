/*
 * tracked_pages.h — the pages the write-through sync protects and the shadows of the items
 * on them (internal to libpolus-agent.so, not installed; every symbol here is hidden): the
 * page table, protections, the /proc/self/mem descriptor, change detection, the work list
 * and running sync functions. The design and its invariant: tracked_pages.c.
 *
 * Used by the layers above it (store_emulation.c, fault_handlers.c, sync_api.c; see
 * sync_state.h); it calls none of them. Everything below is called with the sync lock held,
 * from a signal handler or an entry point: no malloc, no errno, no locks.
 */
#ifndef POLUS_AGENT_TRACKED_PAGES_H
#define POLUS_AGENT_TRACKED_PAGES_H

#include <stdint.h>

#include "polus/patch.h"
#include "page_views.h"
#include "sync_state.h"

#pragma GCC visibility push(hidden)

/* ---- per-item arrays, shadows -------------------------------------------------------- */

/* Room in the per-item arrays (flags, first changed offset, work list) for `capacity`
 * items. 0 or -ENOMEM. */
int ensure_aux(uint32_t capacity);

/* Room for one item's shadow (16-byte aligned), NULL when out of memory. */
void *shadow_alloc(uint64_t size);

/* Frees every shadow. */
void shadows_free(void);

/* ---- the page table, protections ----------------------------------------------------- */

/* (Re)builds the page table for items [0, n): pages already in it keep their state, new
 * ones are marked fresh with their protection read from /proc/self/maps. 0 or -errno
 * (-EFAULT: an item is not mapped). */
int build_table(uint32_t n);

/* Frees the page table. */
void table_free(void);

/* Every tracked page (only the fresh ones if fresh_only) to its closed (closed != 0) or
 * original protection. 0 or -errno. */
int protect_pages(int closed, int fresh_only);

/* Makes page `idx` writable for the lock holder (counted: nested opens), and closes it. */
void open_page(uint32_t idx);
void close_page(uint32_t idx);

/* Every byte of [lo, lo+n) on a page we protect (and that is closed). */
int range_tracked(uint64_t lo, uint64_t n);

/* ---- change detection, the work list, sync functions --------------------------------- */

/* Visit each item overlapping [lo, hi) once: at its first page inside the range. */
#define FOR_ITEMS_IN_RANGE(lo, hi, idx_var, body)                                              \
    do {                                                                                        \
        for (uint64_t pg_ = PAGE_OF(lo); pg_ < (hi); pg_ += PAGE) {                             \
            int32_t pk_ = find_page(pg_);                                                       \
            if (pk_ < 0) continue;                                                              \
            struct page_info *pp_ = &G.pages[pk_];                                              \
            for (uint32_t r_ = 0; r_ < pp_->ref_count; r_++) {                                  \
                uint32_t idx_var = G.refs[pp_->first_ref + r_];                                 \
                const struct polus_tracked_item *ci_ = &items()[idx_var];                       \
                if (ci_->address >= (hi) || ci_->address + ci_->size <= (lo)) continue;        \
                if (pg_ != PAGE_OF(lo) && ci_->address < pg_) continue;                         \
                body                                                                            \
            }                                                                                   \
        }                                                                                       \
    } while (0)


/* Index of the first byte where a[0..n) and b[0..n) differ; n if none. */
uint64_t first_diff(const uint8_t *a, const uint8_t *b, uint64_t n);

/* After bytes [lo, hi) were written: compare them with the shadows of the items they
 * overlap (a sync function's writes, by_sync, are absorbed; others put the item on the
 * work list). Returns how many items changed. */
uint32_t scan_written(uint64_t lo, uint64_t hi, int by_sync);

/* After page `idx` was open: compare every item on it. Items written by the sync function
 * that opened it (absorb_item, or containing absorb_addr if absorb_at_addr) are absorbed,
 * the others put on the work list. Returns how many items changed. */
uint32_t scan_page(uint32_t idx, uint32_t absorb_item, uint64_t absorb_addr, int absorb_at_addr);

/* What a sync function of item i is called with: its counterpart (NO_ITEM if none) and, when
 * the counterpart has a writable view (page_views.c), the view, so that the function's stores
 * do not fault and nothing needs opening. Shared by run_sync and the fast path's lanes. */
struct sync_call {
    uint32_t c;
    int has_cp;
    uint8_t *cp_view;
    struct polus_sync_args args;
};
static inline void sync_call_prepare(struct sync_call *s, uint32_t i, uint64_t offset, int tid) {
    const struct polus_tracked_item *it = &items()[i];
    s->c = it->counterpart;
    s->has_cp = s->c != NO_ITEM && s->c < G.count;
    s->cp_view = s->has_cp ? view_of(items()[s->c].address, items()[s->c].size) : NULL;
    s->args.written = (void *)(uintptr_t)it->address;
    s->args.counterpart = s->cp_view ? (void *)s->cp_view : s->has_cp ? (void *)(uintptr_t)items()[s->c].address : NULL;
    s->args.offset = offset;
    s->args.thread_id = (uint64_t)tid;
}

/* Runs sync function fn (kind: POLUS_SYNC_FAULT_POST / _PRE) for item i (written at
 * `offset`) on thread tid, inside a fence (sync_fence.h): if it faults, the counterpart's
 * bytes are put back, the fault is recorded and fn is never run again in this update.
 * windowed (entry points only, never in a handler): the counterpart's pages are opened
 * around the call. 0, or -1 if fn faulted (now or earlier). */
int run_sync(polus_sync_fn fn, uint32_t i, uint64_t offset, uint32_t kind, int windowed, int tid);

/* Runs the post_sync of every item on the work list (and of what that changes). */
void drain(int windowed, int tid);

/* pre_sync of every item overlapping [lo, hi), before the write is let through. */
void run_pre_syncs(uint64_t lo, uint64_t hi, int tid);

#pragma GCC visibility pop

#endif /* POLUS_AGENT_TRACKED_PAGES_H */
