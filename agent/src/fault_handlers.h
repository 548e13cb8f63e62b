/*
 * fault_handlers.h — the SIGSEGV and SIGTRAP handlers of the write-through sync (internal
 * to libpolus-agent.so, not installed; every symbol here is hidden). How they work:
 * fault_handlers.c; the design (MECHANISM, CHAINING, END): tracked_pages.c.
 *
 * The handlers use the layers below (sync_state, tracked_pages, store_emulation); the entry
 * points (sync_api.c) install and restore them through this header. Call with the sync lock
 * held, from an entry point.
 */
#ifndef POLUS_AGENT_FAULT_HANDLERS_H
#define POLUS_AGENT_FAULT_HANDLERS_H

#include <signal.h>

#pragma GCC visibility push(hidden)

/* The other fault signals a sync function can raise — SIGABRT too: abort() and a failed
 * assert() raise it on their own thread; ours are installed for them while tracking, only to
 * catch those (sync_fence.h); anything else goes on as before. Unwinding out of abort() is
 * what glibc allows a SIGABRT handler (stdlib/abort.c, glibc 2.36: its lock is released and
 * its stage reset before it raises, so a later abort() in the target still ends it). */
#define FENCED_SIGNAL_COUNT 4
static const int FENCED_SIGNALS[FENCED_SIGNAL_COUNT] = {SIGBUS, SIGFPE, SIGILL, SIGABRT};

/* Puts ours in front for `sig` (SIGSEGV, SIGTRAP or one of FENCED_SIGNALS): the previous
 * disposition is saved for chaining, unless ours is still installed (then the one saved
 * before is kept). 0 or -errno. */
int install_fault_handler(int sig);

/* Puts the saved disposition of `sig` back, at once. 1 if ours was still installed and the
 * previous one is back, 0 otherwise. */
int restore_fault_handler(int sig);

/* For sync_end, once the pages are writable again: puts the previous SIGSEGV, SIGTRAP (and
 * FENCED_SIGNALS) dispositions back after a quiet period (QUIET_MS without a SIGSEGV pending in any thread
 * or a write fault entering our handler; see sigsegv_pending_somewhere), waiting ~2 s at
 * most. 1 if both are back, 0 if ours stays installed, as a pass-through. */
int restore_fault_handlers_when_quiet(void);

#pragma GCC visibility pop

#endif /* POLUS_AGENT_FAULT_HANDLERS_H */
