/*
 * sync_fence.h — the fence around every patch sync function the agent runs (internal to
 * libpolus-agent.so, not installed; every symbol here is hidden).
 *
 * A sync function is patch code, run by the agent inside its SIGSEGV handler on whatever
 * thread wrote a tracked item, with the sync lock held (or from an entry point). If it faults
 * (a NULL dereference, a division by zero, ud2, a store to read-only memory), the signal must
 * not reach the target's own disposition: SIG_DFL would kill a process that did nothing wrong,
 * and an application handler would get a fault that is not its own. So:
 *
 *   run_sync (tracked_pages.c) arms a fence before the call: sigsetjmp in its own frame, the
 *   lock depth and sync depth of that moment, and a copy of the counterpart's bytes (up to
 *   FENCE_SAVE_MAX). The agent's handlers for SIGSEGV, SIGBUS, SIGFPE, SIGILL and SIGTRAP
 *   call fence_unwind first for any signal that is not theirs to handle (not a tracked write,
 *   not our single step): on the lock holder with a fence armed, it is the sync function's
 *   fault, and fence_unwind siglongjmps back to the fence (allowed from a signal handler: the
 *   jump buffer was set in the same thread, in a frame below which the handler runs, and
 *   the code interrupted is the sync function, bound by the async-signal-safe contract).
 *   run_sync then puts the counterpart's bytes back, records the fault (fence_record: the
 *   registry's sync.fault, read by the injector), disables the function for the rest of the
 *   update and returns. The thread goes on: the write that triggered the sync has landed
 *   in the item it was made to, and the counterpart is as before that sync began.
 *
 * The injector then abandons the update (it watches sync.fault at every inspection, and
 * sync_end refuses to end tracking while a fault is recorded and not being abandoned).
 *
 * A function that never returns is unwound the same way from outside: each outermost call
 * shows in the fence watch (polus_agent_fence_watch, agent_abi.h) once its fence is ready,
 * and the injector sends a thread it finds in one call for too long into
 * polus_agent_escape_fence, which jumps to that thread's innermost ready fence.
 *
 * Uses sync_state and fast_path (the lanes' fences); used by tracked_pages.c and fast_path.c
 * (arming) and fault_handlers.c (unwinding).
 */
#ifndef POLUS_AGENT_SYNC_FENCE_H
#define POLUS_AGENT_SYNC_FENCE_H

#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <ucontext.h>

#pragma GCC visibility push(hidden)

/* Counterparts up to this size are copied before each sync call and put back if it faults
 * (the copy costs about what the sync function's own copy does; bigger items are left as the
 * faulting function left them, and the fault record says so). */
#define FENCE_SAVE_MAX (64u * 1024u)
#define FENCE_SAVE_LEVELS 2u

struct sync_fence {
    sigjmp_buf env;
    struct sync_fence *prev;
    uint32_t depth;      /* 0 for the outermost fence */
    int lock_depth;      /* the sync lock's depth when the function was called */
    uint32_t in_sync;    /* G.in_sync then */
    uint32_t has_mask;   /* entry points: the caller's signal mask, put back after a fault */
    uint64_t mask;
    uint32_t saved;      /* the counterpart's bytes were copied before the call */
    uint32_t held;       /* fast path (fast_path.c): item locks its lane held at the call */
    uint32_t ready;      /* env is set: an escape (polus_agent_escape_fence) may jump to it */
    uint32_t timed_out;  /* it did not return: the injector sent its thread out (fence_escape) */
    uint32_t watch_slot; /* its slot in polus_agent_fence_watch (outermost calls only) */
    /* what the fault was, filled by fence_unwind */
    int32_t signal, si_code;
    uint64_t fault_address, pc;
};

/* Arms `f` on the lock holder (call right before sigsetjmp(f->env, 0)). save_mask: the
 * caller is an entry point, not a handler (whose mask is the faulting context's). */
void fence_arm(struct sync_fence *f, int save_mask);

/* Disarms it (after the call returned, or after the unwind). */
void fence_disarm(struct sync_fence *f);

/* Right after sigsetjmp(f->env, 0) returned 0, before the sync function `fn` is called: the
 * fence may now be escaped to, and an outermost call (depth 0) shows in the watch
 * (polus_fence_watch, agent_abi.h) in `slot`: 0 for the sync lock's holder, 1 + lane index on
 * the fast path. */
void fence_ready(struct sync_fence *f, uint32_t slot, uint64_t fn, int tid);

/* After the call returned or was unwound: gone from the watch. */
void fence_done(struct sync_fence *f);

/* A fork child: the calls the watch shows ran on threads of the parent. */
void fence_watch_fork_child(void);

/* The innermost ready fence of `tid` among the lock holder's (G.fence) and the lane fence
 * `lane` (NULL: none), NULL if neither. */
struct sync_fence *fence_innermost(struct sync_fence *lane, int tid);

/* Where to keep the counterpart's bytes for fence `f`, NULL if size is too big. */
uint8_t *fence_save_area(const struct sync_fence *f, uint64_t size);

/* From a handler, for a signal that is not the agent's own: if this thread holds the sync
 * lock inside a fenced sync function, unwinds to the fence (does not return). */
void fence_unwind(int sig, const siginfo_t *si, ucontext_t *uc, int tid);

/* After an unwind: records the fault in registry.sync.fault (first one; count always) and
 * disables `fn` for the rest of the update. kind: POLUS_SYNC_FAULT_POST / _PRE. */
void fence_record(const struct sync_fence *f, uint64_t fn, uint32_t item, uint32_t kind, uint32_t flags, int tid);

/* 1 if `fn` faulted earlier in this update (it is not run again). */
int fence_disabled(uint64_t fn);

/* A new update (sync_begin): no fault, nothing disabled, not abandoning; the save area
 * mapped. 0 or -ENOMEM. */
int fence_reset(void);

/* The fence around a patch callback (pre/post-update, thread, function, data callbacks) that
 * the injector runs on a borrowed thread while write tracking is on, through
 * polus_agent_run_callback (agent.c). Then the borrowed thread's fault signals go to the
 * agent's handlers (its tracked writes must reach them), so a fault of the callback's own
 * would reach the target's disposition and kill it. Instead, a fault no sync fence claims, on
 * the fenced thread while it does not hold the sync lock, is unwound here: the callback is
 * abandoned (as the injector abandons a crashed call when tracking is off), the thread goes
 * on. One at a time: the injector borrows one thread. */
struct callback_fence {
    sigjmp_buf env;
    int tid;
    uint64_t mask;     /* the caller's signal mask, put back after a fault */
    int32_t signal;    /* what the fault was, filled by callback_fence_unwind */
    uint64_t pc, fault_address;
};

/* Arms `f` for the calling thread (right before sigsetjmp(f->env, 0)). */
void callback_fence_arm(struct callback_fence *f);

/* Disarms it (after the callback returned, or after the unwind). */
void callback_fence_disarm(void);

/* From a handler, for a signal that is not the agent's own and no sync fence claimed: on the
 * thread of an armed callback fence that does not hold the sync lock, unwinds to it (does not
 * return). */
void callback_fence_unwind(int sig, const siginfo_t *si, ucontext_t *uc, int tid);

#pragma GCC visibility pop

#endif /* POLUS_AGENT_SYNC_FENCE_H */
