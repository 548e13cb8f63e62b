/*
 * fast_path.h — tracked writes carried out without the sync lock, under per-item locks
 * (internal to libpolus-agent.so, not installed; every symbol here is hidden). How and why:
 * fast_path.c.
 *
 * Uses sync_state, tracked_pages, page_views, store_emulation and sync_fence; used by
 * fault_handlers.c (the SIGSEGV handler tries it first) and sync_api.c / page_views.c
 * (lanes set up, forgotten in a fork child).
 */
#ifndef POLUS_AGENT_FAST_PATH_H
#define POLUS_AGENT_FAST_PATH_H

#include <signal.h>
#include <stdint.h>
#include <ucontext.h>

#pragma GCC visibility push(hidden)

/* The write fault at addr on thread tid, on the fast path if it can be: 1 done (the store,
 * its sync functions; rip advanced), 0 not taken (nothing happened: take the sync lock and
 * go the usual way), -1 a sync function running on the fast path made a store the agent
 * cannot carry out here (the caller unwinds it as that function's fault). */
int fast_write(ucontext_t *uc, uint64_t addr, int tid);

/* polus_wrote (sync_api.c) on the fast path: the NEW item holding addr is compared with its
 * shadow under its pair's lock and, if it changed, its post_sync runs. 1 done, -1 nothing to
 * do (no item there, or called from a sync function), 0 not taken (take the sync lock). */
int fast_notify(uint64_t addr, int tid);

/* For a signal that is not the agent's own, on a thread running a sync function on the fast
 * path: unwinds to that function's fence (does not return). Returns otherwise. */
void fast_unwind_if_fenced(int sig, const siginfo_t *si, ucontext_t *uc, int tid);

/* The innermost fence of the sync functions `tid` runs on the fast path, NULL if none
 * (polus_agent_escape_fence, sync_fence.c). */
struct sync_fence *fast_lane_fence(int tid);

/* Maps the lanes (once; entry points). 0 or -ENOMEM. */
int lanes_ensure(void);

/* A fork child: every lane free, their out-of-line areas (shared with the parent's code
 * memfds) dropped. */
void lanes_fork_child(void);

#pragma GCC visibility pop

#endif /* POLUS_AGENT_FAST_PATH_H */
