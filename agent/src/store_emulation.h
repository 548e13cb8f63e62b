/*
 * store_emulation.h — out-of-line execution of the store instructions that fault on pages
 * tracked by the sync machinery (internal to libpolus-agent.so, not installed; every symbol
 * here is hidden). How it works: store_emulation.c; why sync uses it instead of opening the
 * page: tracked_pages.c (MECHANISM).
 *
 * The emulator sits on the page layer (tracked_pages.h, page_views.h: it writes tracked memory with store_bytes
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

/* A decoded store instruction (store_emulation.c's decoder). */
enum { K_NONE, K_GPR, K_VEC, K_STOS, K_MOVS };
struct insn {
    uint8_t bytes[16];
    uint8_t len;
    uint8_t kind;
    uint8_t size;      /* bytes stored (GPR/VEC), element size (STOS/MOVS) */
    uint8_t rep;
    uint8_t seg;       /* fs/gs override seen */
    uint8_t addr32;
    uint8_t pfx_len;   /* legacy prefixes */
    uint8_t head_len;  /* everything before ModRM */
    uint8_t modrm;
    uint8_t imm_at;
    uint8_t imm_len;
    uint8_t rip_relative;
    int8_t base, index;
    uint8_t scale;
    int64_t disp;
};

/* The registers an out-of-line instruction runs with (offsets used by the assembly). */
struct xol_ctx {
    uint64_t gpr[16];   /*   0: rax rcx rdx rbx rsp rbp rsi rdi r8..r15 (x86 numbering) */
    uint64_t rflags;    /* 128 */
    uint64_t fpstate;   /* 136: signal frame FPU state to xrstor/fxrstor, 0 = none */
    uint64_t xmask;     /* 144 */
    uint64_t use_xsave; /* 152 */
    uint64_t saved_rsp; /* 160 */
    uint64_t slot;      /* 168 */
};

/* Where instructions run out of line: page 0 code slots (r-x), page 1 scratch, page 2 the
 * string instructions' buffer. One per concurrent user: the sync lock holder's, and one per
 * lane of the fast path (fast_path.c). */
#define XOL_BYTES (3 * 4096ull)
struct xol_area {
    uint8_t *base;
    uint8_t *code_w;          /* a writable view of the code page, NULL: written via /proc/self/mem */
    int pid;                  /* the process that made code_w (a fork child has none) */
    int reserved;
    uint8_t keys[64][16];     /* [0] = length, then the original instruction bytes */
    struct xol_ctx ctx;
};

/* Maps area x (once). 0 or -errno. */
int xol_area_init(struct xol_area *x);

/* Decodes the store at uc's rip that faulted at fault_addr: 0 for a single-operand GPR/vector
 * store (its effective address in *ea), 1 for a string instruction, -1 if it is not emulated. */
int emu_decode(const ucontext_t *uc, uint64_t fault_addr, struct insn *d, uint64_t *ea);

/* Runs `d` on area x with the thread's registers against a copy of `before` (d->size bytes):
 * `after` gets the bytes it stored. Nothing is written to memory, uc is not changed. 0 or -1. */
int emu_run(struct xol_area *x, ucontext_t *uc, const struct insn *d, const uint8_t *before, uint8_t *after);

/* After emu_run's bytes have been stored: the registers and flags it left, rip past it. */
void emu_finish(struct xol_area *x, ucontext_t *uc, const struct insn *d);

/* Counts one application write emulated. */
void emu_count(void);

/* What an emulation attempt did. */
struct emu_result {
    int done;       /* the write was carried out (rip advanced) */
    int pre_done;   /* pre_syncs were run (do not run them again on fallback) */
    uint32_t changed; /* tracked items whose bytes changed */
};

/* Carries out the faulting store at uc's rip (which faulted at fault_addr) without making
 * its page writable: runs the pre_syncs (unless in_sync), executes the instruction out of
 * line, writes the changed bytes with store_bytes and compares them with scan_written. res->done
 * is 0 when the instruction cannot be emulated: the caller falls back to single-stepping.
 * in_sync: the write is a sync function's (not counted, absorbed into the shadows). */
void emulate(ucontext_t *uc, uint64_t fault_addr, int in_sync, int tid, struct emu_result *res);

/* Maps the sync lock holder's XOL area once. 0 or -errno. */
int xol_ensure(void);

/* A fork child: drops the lock holder's area (its code page is the parent's memfd); it is
 * made again on first use. */
void xol_main_forget(void);

/* 1 once the XOL area is mapped. */
int xol_ready(void);

/* 1 if [lo, hi) shares a page with the emulator's own state (slot keys,
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
