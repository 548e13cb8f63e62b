/*
 * sync_fence.c — the fence around patch sync functions (see sync_fence.h for why and how),
 * inside libpolus-agent.so.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define POLUS_EXPORTED __attribute__((visibility("default")))

#include "fast_path.h"
#include "polus/agent_abi.h"
#include "raw_syscall.h"
#include "sync_fence.h"
#include "sync_state.h"

void fence_arm(struct sync_fence *f, int save_mask) {
    f->prev = G.fence;
    f->depth = G.fence ? G.fence->depth + 1 : 0;
    f->lock_depth = G.lock_depth;
    f->in_sync = G.in_sync;
    f->has_mask = 0;
    f->saved = 0;
    f->signal = 0;
    f->ready = 0;
    f->timed_out = 0;
    f->watch_slot = ~0u;
    if (save_mask) {
        uint64_t mask = 0;
        if (raw6(SYS_rt_sigprocmask, SIG_BLOCK, 0, (long)&mask, 8, 0, 0) == 0) {
            f->mask = mask;
            f->has_mask = 1;
        }
    }
    __atomic_store_n(&G.fence, f, __ATOMIC_RELAXED);
}

void fence_disarm(struct sync_fence *f) { __atomic_store_n(&G.fence, f->prev, __ATOMIC_RELAXED); }

/* ---- the watch over running sync functions, and the way out (agent_abi.h) ------------------
 *
 * A sync function that never returns (a loop, a wait for something that never comes) would
 * hold its thread for ever — inside the target's SIGSEGV handler, with the sync lock or its
 * items' locks taken, so every other writer of those items would wait too. The agent cannot
 * tell "slow" from "never" without a clock on the tracked-write path; the injector, which
 * inspects the target every few milliseconds while it syncs, can: a slot that shows the same
 * call (same `calls`) for longer than its limit. It then stops that thread and sends it into
 * polus_agent_escape_fence, which unwinds to the fence as fence_unwind does for a fault. */
POLUS_EXPORTED struct polus_fence_watch polus_agent_fence_watch = {.slot_count = POLUS_FENCE_WATCH_SLOTS};

void fence_ready(struct sync_fence *f, uint32_t slot, uint64_t fn, int tid) {
    f->watch_slot = slot;
    __atomic_store_n(&f->ready, 1, __ATOMIC_RELEASE);
    if (f->depth != 0 || slot >= POLUS_FENCE_WATCH_SLOTS) return;
    struct polus_fence_watch_slot *w = &polus_agent_fence_watch.slots[slot];
    __atomic_store_n(&w->calls, w->calls + 1, __ATOMIC_RELAXED);
    __atomic_store_n(&w->function, fn, __ATOMIC_RELAXED);
    __atomic_store_n(&w->tid, tid, __ATOMIC_RELEASE); /* last: the injector trusts a non-zero tid */
}

void fence_done(struct sync_fence *f) {
    if (f->depth == 0 && f->watch_slot < POLUS_FENCE_WATCH_SLOTS)
        __atomic_store_n(&polus_agent_fence_watch.slots[f->watch_slot].tid, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&f->ready, 0, __ATOMIC_RELAXED);
}

void fence_watch_fork_child(void) {
    for (uint32_t k = 0; k < POLUS_FENCE_WATCH_SLOTS; k++) polus_agent_fence_watch.slots[k].tid = 0;
}

static struct sync_fence *innermost_ready(struct sync_fence *f) {
    while (f && !__atomic_load_n(&f->ready, __ATOMIC_ACQUIRE)) f = f->prev;
    return f;
}

struct sync_fence *fence_innermost(struct sync_fence *lane, int tid) {
    struct sync_fence *held = __atomic_load_n(&G.lock_owner, __ATOMIC_RELAXED) == tid ? innermost_ready(G.fence) : NULL;
    struct sync_fence *laned = innermost_ready(lane);
    if (!held) return laned;
    if (!laned) return held;
    /* Both (a fast-path sync function's write that went the locked way, or the reverse): the
     * later one is deeper on this thread's stack. */
    return (uintptr_t)held < (uintptr_t)laned ? held : laned;
}

/* Called on a thread the injector stopped inside a sync function and sent here, with the pc
 * it was at and the signal it raised there (0: it did not return in time). A borrowed thread
 * running an entry point gets here for signals too: it blocks those the agent's handlers would
 * take (SIGABRT) or raises them where the injector, not the agent, sees them first. The injector wrote the thread's own context below its stack as a signal frame
 * whose return leads to rt_sigreturn: had the call ended meanwhile (it cannot: the thread was
 * stopped and the watch read then), returning here would put the thread back as it was. */
POLUS_EXPORTED void polus_agent_escape_fence(uint64_t pc, int32_t signal) {
    int tid = sys_gettid();
    struct sync_fence *f = fence_innermost(fast_lane_fence(tid), tid);
    if (!f) return;
    f->signal = signal;
    f->si_code = 0;
    f->fault_address = 0;
    f->pc = pc;
    f->timed_out = signal == 0;
    /* The handler's mask (the thread is inside the agent's SIGSEGV handler) stays; an entry
     * point's caller gets its own back, as after a fault. */
    if (f->has_mask) set_sigmask(f->mask);
    siglongjmp(f->env, 1);
}

uint8_t *fence_save_area(const struct sync_fence *f, uint64_t size) {
    if (!G.fence_save || size > FENCE_SAVE_MAX || f->depth >= FENCE_SAVE_LEVELS) return NULL;
    return G.fence_save + (uint64_t)f->depth * FENCE_SAVE_MAX;
}

void fence_unwind(int sig, const siginfo_t *si, ucontext_t *uc, int tid) {
    if (__atomic_load_n(&G.lock_owner, __ATOMIC_RELAXED) != tid) return;
    struct sync_fence *f = G.fence;
    if (!f) return;
    f->signal = sig;
    f->si_code = si->si_code;
    f->fault_address = (uint64_t)(uintptr_t)si->si_addr;
    f->pc = (uint64_t)uc->uc_mcontext.gregs[REG_RIP];
    /* The mask the sync function ran with (a handler's: every asynchronous signal blocked),
     * or the entry point's caller's. siglongjmp with a buffer saved without the mask leaves
     * the mask alone: set it here, where the kernel would have on return. */
    set_sigmask(f->has_mask ? f->mask : *uc_mask_word(uc));
    siglongjmp(f->env, 1);
}

static uint64_t unix_ns(void) {
    struct timespec ts = {0, 0};
    RAW(SYS_clock_gettime, CLOCK_REALTIME, &ts, 0);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void fence_record(const struct sync_fence *f, uint64_t fn, uint32_t item, uint32_t kind, uint32_t flags, int tid) {
    struct polus_sync_fault *r = &REG.sync.fault;
    /* Threads on the fast path (fast_path.c) may record at once: the first one writes. */
    uint32_t unclaimed = 0;
    if (!r->function && __atomic_compare_exchange_n(&G.fault_claim, &unclaimed, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
        const struct polus_tracked_item *it = &items()[item];
        r->item_address = it->address;
        r->fault_address = f->fault_address;
        r->pc = f->pc;
        r->tid = (uint64_t)tid;
        r->at_unix_ns = unix_ns();
        r->item = item;
        r->side = it->side & POLUS_ITEM_SIDE_MASK;
        r->kind = kind;
        r->signal = (uint32_t)f->signal;
        r->si_code = f->si_code;
        r->flags = flags | (f->timed_out ? POLUS_SYNC_FAULT_TIMED_OUT : 0);
        /* last: the injector takes a non-zero function as the whole record being there */
        __atomic_store_n(&r->function, fn, __ATOMIC_RELEASE);
    }
    __atomic_fetch_add(&r->count, 1, __ATOMIC_RELAXED);
    uint32_t slot = __atomic_fetch_add(&G.disabled_count, 1, __ATOMIC_ACQ_REL);
    if (slot < MAX_DISABLED) __atomic_store_n(&G.disabled[slot], fn, __ATOMIC_RELEASE);
}

int fence_disabled(uint64_t fn) {
    if (G.disabled_count > MAX_DISABLED) return 1; /* more faulting functions than slots: run none */
    for (uint32_t k = 0; k < G.disabled_count; k++)
        if (G.disabled[k] == fn) return 1;
    return 0;
}

int fence_reset(void) {
    memset(&REG.sync.fault, 0, sizeof REG.sync.fault);
    REG.sync.abandoning = 0;
    G.disabled_count = 0;
    G.fault_claim = 0;
    G.fence = NULL;
    if (!G.fence_save) G.fence_save = sys_mmap((uint64_t)FENCE_SAVE_MAX * FENCE_SAVE_LEVELS);
    return G.fence_save ? 0 : -ENOMEM;
}

/* ---- the callback fence (sync_fence.h) ---------------------------------------------------- */

static struct callback_fence *armed_callback;

void callback_fence_arm(struct callback_fence *f) {
    f->tid = sys_gettid();
    f->signal = 0;
    uint64_t mask = 0;
    raw6(SYS_rt_sigprocmask, SIG_BLOCK, 0, (long)&mask, 8, 0, 0);
    f->mask = mask;
    __atomic_store_n(&armed_callback, f, __ATOMIC_RELEASE);
}

void callback_fence_disarm(void) { __atomic_store_n(&armed_callback, NULL, __ATOMIC_RELEASE); }

void callback_fence_unwind(int sig, const siginfo_t *si, ucontext_t *uc, int tid) {
    struct callback_fence *f = __atomic_load_n(&armed_callback, __ATOMIC_ACQUIRE);
    if (!f || f->tid != tid) return;
    /* A fence left armed by a callback the injector gave up on (it did not return in time:
     * the thread was put back in its own context by rt_sigreturn, past this fence's frame).
     * The fence lives in polus_agent_run_callback's frame, above every frame of the callback:
     * code interrupted above it on the stack is no longer inside the callback. */
    if ((uint64_t)uc->uc_mcontext.gregs[REG_RSP] > (uint64_t)(uintptr_t)f) {
        __atomic_compare_exchange_n(&armed_callback, &f, NULL, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
        return;
    }
    /* Holding the sync lock, the thread is inside the agent's handling of a tracked write the
     * callback made: unwinding now would leave the lock taken. Such a fault is the agent's. */
    if (__atomic_load_n(&G.lock_owner, __ATOMIC_RELAXED) == tid) return;
    f->signal = sig;
    f->fault_address = (uint64_t)(uintptr_t)si->si_addr;
    f->pc = (uint64_t)uc->uc_mcontext.gregs[REG_RIP];
    set_sigmask(f->mask);  /* as fence_unwind: the buffer was saved without the mask */
    siglongjmp(f->env, 1);
}
