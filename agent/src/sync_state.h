/*
 * sync_state.h — the state of the agent's write-through sync and the lock that guards it
 * (internal to libpolus-agent.so, not installed; every symbol here is hidden).
 *
 * The bottom layer of the sync machinery (the layers: tracked_pages.c, FILES): it uses none
 * of the others. The state is one struct, G, so that one check (sync_api.c,
 * overlaps_agent_state) keeps tracked items off every page the handlers write. Only the
 * lock holder reads or writes it, except the lock's own words and the fields marked atomic.
 *
 * Include it after defining _GNU_SOURCE.
 */
#ifndef POLUS_AGENT_SYNC_STATE_H
#define POLUS_AGENT_SYNC_STATE_H

#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>

#include "polus/agent_abi.h"
#include "raw_syscall.h"
#include "sync.h"

/* The registry (agent.c): exported, so declared outside the hidden section below. */
extern struct polus_agent_registry polus_agent_registry;
#define REG polus_agent_registry

#pragma GCC visibility push(hidden)

#define NO_ITEM UINT32_MAX
#define LANES 64 /* threads that can be on the fast path at once (fast_path.c) */

struct sync_fence; /* sync_fence.h */
#define MAX_DISABLED 16 /* sync functions that faulted, never run again in this update */

struct page_info {
    uint64_t addr;
    uint32_t first_ref; /* refs[first_ref .. first_ref + ref_count): items on this page */
    uint32_t ref_count;
    int32_t prot;       /* protection before sync_begin */
    uint8_t tracked;    /* originally writable: read-only while active */
    uint8_t open;       /* opened (writable) by the lock holder: single-step / sync window */
    uint8_t fresh;      /* added by the last table rebuild */
    uint8_t shared;     /* the mapping is MAP_SHARED ('s' in maps): no view, stores go through pwrite */
    int lock;           /* the fast path's lock for bytes of this page no item covers (false sharing) */
    uint8_t *view;      /* the page's writable view (page_views.c), NULL if it has none */
    uint8_t *staged_view; /* sync_prepare: the view made ahead, not in use yet (page_views.c) */
    uint8_t *staged_map;  /* and the read-only mapping of its memfd that will move over the page */
};

#define MAX_STEP_PAGES 8
struct step {
    uint32_t active;
    uint32_t in_sync;    /* the stepped instruction belongs to a sync function */
    uint32_t tf_was_set; /* the application had TF set itself */
    uint32_t page_count;
    uint32_t pages[MAX_STEP_PAGES];
    uint64_t fault_addr;
    uint64_t saved_mask;
};

#define F_DIRTY 0x1u
#define F_PRE 0x2u

struct shadow_chunk {
    uint8_t *base;
    uint64_t size;
    uint64_t used;
};

struct sync_globals {
    /* the lock */
    int lock_word;
    int lock_owner;
    int lock_depth;
    int lock_pid;
    int holder_pid; /* getpid() of the current holder, computed once per acquisition */

    uint32_t active;
    uint32_t count; /* items covered by the page table / shadows */
    uint32_t config;
    uint32_t in_sync;        /* depth of sync functions running on the lock holder */
    uint32_t sync_item;      /* item whose sync function runs (innermost) */
    uint32_t sync_counterpart;
    uint32_t draining;
    uint32_t handlers_installed;
    uint64_t write_fault_entries; /* SEGV_ACCERR write faults that entered our handler (atomic) */

    struct page_info *pages;
    uint32_t page_count;
    uint32_t *refs;
    uint64_t table_bytes;

    uint8_t *item_flags;
    int *item_lock;          /* per item: the fast path's lock of its pair (fast_path.c) */
    uint64_t *item_offset;
    uint32_t *work;
    uint32_t work_count;
    uint32_t aux_capacity;
    uint64_t aux_bytes;

    struct shadow_chunk chunks[64];
    uint32_t chunk_count;

    struct step step;

    struct sigaction prev_segv;
    struct sigaction prev_trap;
    struct sigaction prev_bus, prev_fpe, prev_ill, prev_abrt; /* sync_fence.h: only to catch sync functions' faults */

    /* the fence around sync functions (sync_fence.h): the lock holder's innermost one */
    struct sync_fence *fence;
    uint64_t disabled[MAX_DISABLED]; /* sync functions that faulted in this update */
    uint32_t disabled_count;         /* > MAX_DISABLED: every sync function is disabled */
    uint8_t *fence_save;             /* counterpart bytes from before the call, per nesting level */

    /* the writable views of tracked pages (page_views.c) */
    uint32_t view_runs;     /* runs of pages that have a view (atomic: read by the fork handler) */
    int my_pid;             /* getpid() as of sync_begin or the last fork (no system call per fault) */
    uint32_t tcb_tid_offset; /* where glibc keeps the thread's tid in its TCB, 0 = ask the kernel */
    uint32_t atfork_registered;
    uint32_t fork_locked;   /* the fork handler holds the lock across fork() */
    uint32_t prepared;      /* sync_prepare built the table, shadows and staged views for this many items */
    int views_pid;          /* the process whose memfds back the views (a fork child has its parent's) */
    void (*on_fork_child)(void); /* page_views.c: a fork child's views become its own */
    /* the fast path (fast_path.c): threads inside it; the exclusive lock waits for none */
    int fast_users;
    int *lane_owner;        /* tid owning each lane, 0 free */
    uint32_t fault_claim;   /* fence_record's first-writer flag */

    int mem_fd;
    int mem_pid;
    uint64_t mem_dev, mem_ino;

    struct {
        int tid;
        uint64_t rip, addr;
    } retry[64];

    struct polus_sync_stats stats;
};
extern struct sync_globals G;

static inline struct polus_tracked_item *items(void) {
    return (struct polus_tracked_item *)(uintptr_t)REG.sync.items;
}

/* A tracked page's protection while sync is active: its original one minus PROT_WRITE. */
static inline int closed_prot(const struct page_info *p) { return p->prot & ~PROT_WRITE; }

/* Puts item i on the work list (once), its first changed byte at `offset`. The work list is
 * what a lock holder still owes: drain (tracked_pages.c) runs the post_sync of each item. */
static inline void note_change(uint32_t i, uint64_t offset) {
    if (G.item_flags[i] & F_DIRTY) return;
    G.item_flags[i] |= F_DIRTY;
    G.item_offset[i] = offset;
    G.work[G.work_count++] = i;
}

/* This thread's id without a system call where glibc's TCB holds it (checked once, see
 * sync_begin), else gettid(). */
static inline int fast_tid(void) {
    if (G.tcb_tid_offset) {
        uint64_t self;
        __asm__("mov %%fs:0x10, %0" : "=r"(self)); /* tcbhead_t.self */
        return *(volatile int *)(uintptr_t)(self + G.tcb_tid_offset);
    }
    return (int)raw6(SYS_gettid, 0, 0, 0, 0, 0, 0);
}

/* Learns where glibc keeps the tid in its TCB (struct pthread.tid, 0x2d0 on x86-64 since
 * glibc 2.x), if the calling thread's is there. */
void learn_tcb_tid(void);

/* Index in G.pages of the page holding addr, -1 if none (binary search: the table is sorted). */
static inline int32_t find_page(uint64_t addr) {
    uint64_t p = PAGE_OF(addr);
    int64_t lo = 0, hi = (int64_t)G.page_count - 1;
    while (lo <= hi) {
        int64_t mid = (lo + hi) / 2;
        uint64_t a = G.pages[mid].addr;
        if (a == p) return (int32_t)mid;
        if (a < p) lo = mid + 1;
        else hi = mid - 1;
    }
    return -1;
}

/* Takes the sync lock — the exclusive one: once it is ours, we wait until no other thread is
 * on the fast path (fast_path.c), and none enters it until we release — recursive for its
 * owner, timed (~2 s, then -ETIMEDOUT) for entry points, for ever in handlers. A lock left held by a thread of the parent process (we are
 * a fork child) is reset first. 0 or -ETIMEDOUT. */
int lock_acquire(int tid, int pid, int timed);

/* 1 if thread `tid` is on the fast path (owns a lane). */
int on_fast_path(int tid);

/* Releases one level of it. */
void lock_release(void);

#pragma GCC visibility pop

#endif /* POLUS_AGENT_SYNC_STATE_H */
