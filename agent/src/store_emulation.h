/*
 * store_emulation.h — out-of-line execution of the store instructions that fault on pages
 * tracked by the sync machinery (internal to libpolus-agent.so, not installed; every symbol
 * here is hidden). How it works: store_emulation.c; why sync uses it instead of opening the
 * page: sync.c (MECHANISM).
 *
 * The interface goes both ways: store_emulation.c provides the emulation to sync.c's
 * SIGSEGV handler and entry points, and uses a few services of the sync machinery
 * (sync.c) to write tracked memory and account for what it wrote. Everything below is
 * called with the sync lock held, from a signal handler or an entry point: no malloc, no
 * errno, no locks.
 *
 * Include it after defining _GNU_SOURCE (ucontext_t's register names).
 */
#ifndef POLUS_AGENT_STORE_EMULATION_H
#define POLUS_AGENT_STORE_EMULATION_H

#include <stdint.h>
#include <ucontext.h>

#include "sync.h"

#pragma GCC visibility push(hidden)

/* ---- provided by store_emulation.c ----------------------------------------------------- */

/* What an emulation attempt did. */
struct emu_result {
    int done;       /* the write was carried out (rip advanced) */
    int pre_done;   /* pre_syncs were run (do not run them again on fallback) */
    uint32_t changed; /* tracked items whose bytes changed */
};

/* Carries out the faulting store at uc's rip (which faulted at fault_addr) without making
 * its page writable: runs the pre_syncs (unless in_sync), executes the instruction out of
 * line, writes the changed bytes with poke and compares them with scan_written. res->done
 * is 0 when the instruction cannot be emulated: the caller falls back to single-stepping.
 * in_sync: the write is a sync function's (not counted, absorbed into the shadows). */
void emulate(ucontext_t *uc, uint64_t fault_addr, int in_sync, int tid, struct emu_result *res);

/* Maps the XOL area (code slots, scratch, string buffer) once. 0 or -errno. */
int xol_ensure(void);

/* 1 once the XOL area is mapped. */
int xol_ready(void);

/* 1 if [lo, hi) shares a page with the emulator's own state (polus_xol_ctx, slot keys,
 * counters): tracked items must not, or the handler would fault on its own writes. */
int emu_state_overlaps(uint64_t lo, uint64_t hi);

/* The emulator's counters: fills out->emulated and out->xol_slots_built. */
void emu_get_stats(struct polus_sync_stats *out);

/* Zeroes those counters (polus_agent_sync_clear). */
void emu_clear_stats(void);

/* ---- provided by sync.c: the sync machinery's side --------------------------------------- */

/* 1 if emulation may be tried now: POLUS_SYNC_FORCE_SINGLE_STEP is not configured and
 * /proc/self/mem is open. */
int may_emulate(void);

/* Writes bytes to tracked pages without making them writable (/proc/self/mem). 0 or -1. */
int poke(uint64_t addr, const void *src, uint64_t n);

/* Every byte of [lo, lo+n) on a page we protect (and that is closed). */
int range_tracked(uint64_t lo, uint64_t n);

/* pre_sync of every item overlapping [lo, hi), before the write is let through. */
void run_pre_syncs(uint64_t lo, uint64_t hi, int tid);

/* After bytes [lo, hi) were written: compare them with the shadows of the items they
 * overlap (a sync function's writes, by_sync, are absorbed; others put the item on the
 * work list). Returns how many items changed. */
uint32_t scan_written(uint64_t lo, uint64_t hi, int by_sync);

/* Index of the first byte where a[0..n) and b[0..n) differ; n if none. */
uint64_t first_diff(const uint8_t *a, const uint8_t *b, uint64_t n);

#pragma GCC visibility pop

#endif /* POLUS_AGENT_STORE_EMULATION_H */
