/*
 * store_emulation.h — out-of-line execution of the store instructions that fault on pages
 * tracked by the sync machinery (internal to libpolus-agent.so, not installed; every symbol
 * here is hidden). How it works: store_emulation.c; why sync uses it instead of opening the
 * page: tracked_pages.c (MECHANISM).
 *
 * The emulator sits on the page layer (tracked_pages.h: it writes tracked memory with poke
 * and accounts for what it wrote with scan_written) and is used by the layers above:
 * fault_handlers.c's SIGSEGV handler emulates, sync_api.c's entry points map the XOL area,
 * check items against the emulator's state and read its counters. Everything below is
 * called with the sync lock held, from a signal handler or an entry point: no malloc, no
 * errno, no locks.
 *
 * Include it after defining _GNU_SOURCE (ucontext_t's register names).
 */
#ifndef POLUS_AGENT_STORE_EMULATION_H
#define POLUS_AGENT_STORE_EMULATION_H

#include <stdint.h>
#include <ucontext.h>

#pragma GCC visibility push(hidden)

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

/* The emulator's counters (polus_sync_stats.emulated and .xol_slots_built). */
struct emu_stats {
    uint64_t emulated;        /* application writes executed out of line */
    uint64_t xol_slots_built; /* distinct instructions relocated */
};
void emu_get_stats(struct emu_stats *out);

/* Zeroes those counters (polus_agent_sync_clear). */
void emu_clear_stats(void);

#pragma GCC visibility pop

#endif /* POLUS_AGENT_STORE_EMULATION_H */
