/*
 * sync_state.c — the state of the write-through sync (G) and its lock, inside
 * libpolus-agent.so. The lock's design (one process-wide futex lock, recursive for its
 * owner, timed for entry points, reset in a fork child): tracked_pages.c, LOCK.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <time.h>

#include "raw_syscall.h"
#include "sync_fence.h"
#include "sync_state.h"

struct sync_globals G = {.mem_fd = -1, .sync_item = NO_ITEM, .sync_counterpart = NO_ITEM};

static void reset_inherited_state(void) {
    /* We are a fork child and the lock was held by a thread of the parent, somewhere in a
     * tracked write. The work it had queued (items marked F_DIRTY, whose post_sync had not run
     * yet) is kept and drained by this process's next tracked write; the item whose sync
     * function it was running is queued again (a post_sync is a copy: running it twice is
     * harmless). Dropping the queue but not the F_DIRTY marks, as before, left those items
     * never synced again in the child. */
    uint32_t interrupted = G.in_sync ? G.sync_item : NO_ITEM;
    /* drain() pops an item before running its sync: the slot just above the queue says which */
    uint32_t popped = G.draining && G.work ? G.work[G.work_count] : NO_ITEM;
    G.lock_owner = 0;
    G.lock_depth = 0;
    G.in_sync = 0;
    G.draining = 0;
    G.sync_item = NO_ITEM;
    G.sync_counterpart = NO_ITEM;
    G.fence = NULL; /* it was on the stack of a thread this process does not have */
    fence_watch_fork_child();
    for (uint32_t i = 0; i < G.count; i++) G.item_flags[i] &= ~F_DIRTY; /* marks = the queue */
    for (uint32_t k = 0; k < G.work_count; k++) G.item_flags[G.work[k]] |= F_DIRTY;
    if (interrupted < G.count) note_change(interrupted, 0);
    if (popped < G.count) note_change(popped, 0);
    G.step.active = 0;
    /* Threads of the parent on the fast path are not here. */
    __atomic_store_n(&G.fast_users, 0, __ATOMIC_RELAXED);
    for (unsigned k = 0; G.lane_owner && k < LANES; k++) G.lane_owner[k] = 0;
    /* A page the parent's thread had open for a single step is writable here: close it. */
    for (uint32_t k = 0; G.active && k < G.page_count; k++)
        if (G.pages[k].open) {
            G.pages[k].open = 0;
            sys_mprotect(G.pages[k].addr, PAGE, closed_prot(&G.pages[k]));
        }
    /* The views of tracked pages are still the parent's memory (page_views.c, FORK). */
    if (G.on_fork_child) G.on_fork_child();
    __atomic_store_n(&G.lock_word, 0, __ATOMIC_RELEASE);
}

void learn_tcb_tid(void) {
    int tid = sys_gettid();
    uint64_t self;
    __asm__("mov %%fs:0x10, %0" : "=r"(self));
    G.tcb_tid_offset = self && *(volatile int *)(uintptr_t)(self + 0x2d0) == tid ? 0x2d0 : 0;
}

/* timed: give up after ~2 s (entry points); handlers wait for ever. */
int lock_acquire(int tid, int pid, int timed) {
    if (__atomic_load_n(&G.lock_owner, __ATOMIC_RELAXED) == tid) {
        G.lock_depth++;
        return 0;
    }
    int c = 0;
    if (!__atomic_compare_exchange_n(&G.lock_word, &c, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
        int holder_pid = __atomic_load_n(&G.lock_pid, __ATOMIC_RELAXED);
        /* `pid` may be the cached one (G.my_pid): a fork child's before its fork handler ran.
         * Only here, on contention, ask the kernel. */
        if (holder_pid != 0 && holder_pid == pid) pid = sys_getpid();
        if (holder_pid != 0 && holder_pid != pid) {
            reset_inherited_state();
            c = 0;
            if (__atomic_compare_exchange_n(&G.lock_word, &c, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) goto got;
        }
        uint64_t deadline = timed ? mono_ns() + 2000000000ull : 0;
        struct timespec slice = {0, 10 * 1000 * 1000};
        if (c != 2) c = __atomic_exchange_n(&G.lock_word, 2, __ATOMIC_ACQUIRE);
        while (c != 0) {
            futex_wait(&G.lock_word, 2, timed ? &slice : NULL);
            if (timed && mono_ns() > deadline) return -ETIMEDOUT;
            c = __atomic_exchange_n(&G.lock_word, 2, __ATOMIC_ACQUIRE);
        }
    }
got:
    __atomic_store_n(&G.lock_owner, tid, __ATOMIC_RELAXED);
    G.lock_depth = 1;
    __atomic_store_n(&G.lock_pid, pid, __ATOMIC_RELAXED);
    G.holder_pid = pid;
    /* Exclusive: wait for the threads on the fast path to leave it (each is a few µs from
     * done: its write and its sync functions). New ones see lock_word set and do not enter.
     * The lock word was taken with a locked instruction (a full fence), and the fast path
     * raises fast_users with one before it reads lock_word: one of the two sees the other.
     * A caller that is itself on the fast path (a sync function registering heap data) waits
     * for the others only, and never for ever: two such callers would wait for each other. */
    int self = on_fast_path(tid);
    if (self) timed = 1;
    uint64_t deadline = 0;
    for (unsigned spins = 0; __atomic_load_n(&G.fast_users, __ATOMIC_SEQ_CST) > self; spins++) {
        if (spins < 256) { __asm__ volatile("pause"); continue; }
        if (timed) {
            if (!deadline) deadline = mono_ns() + 2000000000ull;
            else if (mono_ns() > deadline) { lock_release(); return -ETIMEDOUT; }
        }
        RAW(SYS_sched_yield, 0, 0, 0);
    }
    return 0;
}

int on_fast_path(int tid) {
    if (!G.lane_owner) return 0;
    for (unsigned k = 0; k < LANES; k++)
        if (__atomic_load_n(&G.lane_owner[k], __ATOMIC_RELAXED) == tid) return 1;
    return 0;
}

void lock_release(void) {
    if (--G.lock_depth > 0) return;
    __atomic_store_n(&G.lock_owner, 0, __ATOMIC_RELAXED);
    if (__atomic_exchange_n(&G.lock_word, 0, __ATOMIC_RELEASE) == 2) futex_wake(&G.lock_word);
}
