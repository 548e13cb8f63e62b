/*
 * page_views.h — a second, writable view of every tracked page (internal to
 * libpolus-agent.so, not installed; every symbol here is hidden). Why and how: page_views.c.
 *
 * How stores reach tracked pages: through their views, or through /proc/self/mem for pages
 * without one. Sits on sync_state (the page table in G); used by every layer above it
 * (tracked_pages.c: stores, the sync functions' counterparts; store_emulation.c, fast_path.c,
 * fault_handlers.c; sync_api.c: creating and removing views, fork). Everything below is called
 * with the sync lock held, or on the fast path under the items' locks (fast_path.c), or, for
 * fork, as said: no malloc, no errno, no locks.
 */
#ifndef POLUS_AGENT_PAGE_VIEWS_H
#define POLUS_AGENT_PAGE_VIEWS_H

#include <stdint.h>

#include "sync_state.h"

#pragma GCC visibility push(hidden)

/* ---- /proc/self/mem ------------------------------------------------------------------ */

/* This process's descriptor on /proc/self/mem (reopened in a fork child, or when the
 * application closed ours), or -errno. */
int mem_fd(void);

/* Writes bytes to tracked pages without making them writable (/proc/self/mem). 0 or -1. */
int poke(uint64_t addr, const void *src, uint64_t n);

/* 1 if emulation may be tried now: POLUS_SYNC_FORCE_SINGLE_STEP is not configured. (Stores
 * land through the pages' views, or /proc/self/mem; if neither works the emulation gives up
 * and the caller single-steps.) */
int may_emulate(void);

/* ---- views --------------------------------------------------------------------------- */

/* Gives a writable view to every tracked page without one (only the fresh ones if
 * fresh_only) that is privately mapped and readable. The pages must be closed already (so
 * no store can land between the copy and the switch) and the lock held. A run of pages whose
 * view cannot be made (memfd_create refused, e.g. by seccomp; out of memory) keeps none: its
 * stores go through /proc/self/mem as before. Returns how many runs got one. */
uint32_t views_create(int fresh_only);

/* sync_prepare, while the target runs: for each run views_create would make, the memfd, its
 * view and its read-only mapping, not in use yet. Lock held. */
void views_stage(void);

/* sync_begin: the staged runs take effect (bytes copied, mapping moved over the pages) as in
 * views_create, and views_create(0) for any run not staged. Pages closed, lock held. Returns
 * how many runs have a view now. */
uint32_t views_commit(void);

/* Unmaps staged views that never took effect (a failed or abandoned begin). */
void views_discard_staged(void);

/* Puts ordinary private anonymous pages, with identical contents and the closed protection,
 * back at every page that has a view, atomically per run (mremap over it), and unmaps the
 * views. Lock held; pages closed. */
void views_remove(void);

/* Registers the fork handlers (once): see page_views.c, FORK. Call where malloc is allowed
 * (pthread_atfork allocates). */
void views_register_fork_handlers(void);

/* A fork child found the lock held by a thread of its parent (sync_state.c): its views are
 * still the parent's memory; give it its own. */
void views_fork_child(void);

/* The writable view of [addr, addr+n) if the whole range has one and it is contiguous
 * there, else NULL. */
uint8_t *view_of(uint64_t addr, uint64_t n);

/* Stores n bytes at addr (on tracked pages) through the views, or /proc/self/mem for pages
 * without one. 0 or -1. */
int store_bytes(uint64_t addr, const void *src, uint64_t n);

#pragma GCC visibility pop

#endif /* POLUS_AGENT_PAGE_VIEWS_H */
