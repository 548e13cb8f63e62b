/*
 * store_emulation.c — out-of-line execution of store instructions, for the write-through
 * sync (POLUS §2.2, §4.1.2), inside libpolus-agent.so.
 *
 * While sync is active, a tracked page is never writable (tracked_pages.c: MECHANISM,
 * INVARIANT): a store to it faults, and the SIGSEGV handler (fault_handlers.c), holding the
 * sync lock, asks emulate() to carry the store out without opening the page. This file
 * decodes the x86-64 instruction at the faulting rip and runs it against a scratch buffer;
 * the page layer's side (store_bytes, range_tracked, run_pre_syncs, scan_written) is reached
 * through tracked_pages.h, which never calls back here.
 *
 * For the instructions compilers emit for stores (mov, the read-modify-write ALU group,
 * inc/dec/neg/not, shifts, xchg/xadd/cmpxchg/cmpxchg8b/16b, setcc, bts/btr/btc imm, shld/
 * shrd, movnti, SSE/AVX/AVX-512 vector stores incl. masked ones, pextr*, vextract*, and
 * stos/movs with or without rep), the handler:
 *   - decodes the instruction at the faulting rip and computes its effective address;
 *   - copies the instruction into an XOL slot with its memory operand rewritten to a
 *     rip-relative reference to a 64-byte scratch buffer holding the target bytes;
 *   - runs it there with the thread's registers (GPRs and flags from the ucontext; vector
 *     state via xrstor of the signal frame), so flags, atomics' results, masks and every
 *     corner of x86 semantics are the CPU's own; each concurrent user has its own area (the
 *     sync lock holder's, and one per lane of the fast path, fast_path.c);
 *   - stores the changed bytes through the page's writable view (page_views.c), or with
 *     pwrite(/proc/self/mem) for a page without one;
 *   - copies registers back and advances rip past the instruction.
 * stos/movs are carried out directly (chunked, rep count honoured, DF=1 not emulated).
 * Anything else (x87 stores, fxsave/xsave, segment overrides, 32-bit addressing, an
 * operand straddling a page that is not ours) falls back to open-page + single-step, with
 * the window described in tracked_pages.c (MECHANISM, a): rare, counted in
 * polus_sync_stats.single_stepped.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>

#include "raw_syscall.h"
#include "page_views.h"
#include "store_emulation.h"
#include "sync_state.h"
#include "tracked_pages.h"

#define HIDDEN __attribute__((visibility("hidden")))

#define DF_FLAG 0x400ull
#define STATUS_FLAGS 0x8d5ull /* CF PF AF ZF SF OF */

/* The emulator's state, written only by the sync lock holder. Tracked items may not share
 * a page with it (emu_state_overlaps). */
static struct {
    struct xol_area main; /* the sync lock holder's (the slow path); lanes have their own */
    uint64_t emulated;        /* polus_sync_stats.emulated (atomic) */
    uint64_t xol_slots_built; /* polus_sync_stats.xol_slots_built (atomic) */
} E;

/* ---- x86-64 decoding of the store instructions we execute out of line ------------------ */

/* What a whitelisted opcode is: kind, bytes written, immediate length, ModRM.reg use.
 * reg_use: 0 = opcode extension (allowed set in ext_mask), 1 = GPR operand, 2 = vector. */
struct op_class {
    uint8_t kind, size, imm, reg_use, ext_mask, byte_op;
};

static int classify(struct op_class *oc, int vex, int map, int op, int pp, int W, int L, int opsz16) {
    int v = W ? 8 : opsz16 ? 2 : 4; /* operand size "v" */
    int z = opsz16 ? 2 : 4;         /* immediate size "z" */
    memset(oc, 0, sizeof *oc);
    if (vex == 0 && map == 0) {
        switch (op) {
        case 0x00: case 0x08: case 0x10: case 0x18: case 0x20: case 0x28: case 0x30:
        case 0x86: case 0x88:
            *oc = (struct op_class){K_GPR, 1, 0, 1, 0, 1}; return 0;
        case 0x01: case 0x09: case 0x11: case 0x19: case 0x21: case 0x29: case 0x31:
        case 0x87: case 0x89:
            *oc = (struct op_class){K_GPR, (uint8_t)v, 0, 1, 0, 0}; return 0;
        case 0x80: *oc = (struct op_class){K_GPR, 1, 1, 0, 0x7f, 1}; return 0;
        case 0x81: *oc = (struct op_class){K_GPR, (uint8_t)v, (uint8_t)z, 0, 0x7f, 0}; return 0;
        case 0x83: *oc = (struct op_class){K_GPR, (uint8_t)v, 1, 0, 0x7f, 0}; return 0;
        case 0xc0: *oc = (struct op_class){K_GPR, 1, 1, 0, 0xff, 1}; return 0;
        case 0xc1: *oc = (struct op_class){K_GPR, (uint8_t)v, 1, 0, 0xff, 0}; return 0;
        case 0xd0: case 0xd2: *oc = (struct op_class){K_GPR, 1, 0, 0, 0xff, 1}; return 0;
        case 0xd1: case 0xd3: *oc = (struct op_class){K_GPR, (uint8_t)v, 0, 0, 0xff, 0}; return 0;
        case 0xc6: *oc = (struct op_class){K_GPR, 1, 1, 0, 0x01, 1}; return 0;
        case 0xc7: *oc = (struct op_class){K_GPR, (uint8_t)v, (uint8_t)z, 0, 0x01, 0}; return 0;
        case 0xf6: *oc = (struct op_class){K_GPR, 1, 0, 0, 0x0c, 1}; return 0;
        case 0xf7: *oc = (struct op_class){K_GPR, (uint8_t)v, 0, 0, 0x0c, 0}; return 0;
        case 0xfe: *oc = (struct op_class){K_GPR, 1, 0, 0, 0x03, 1}; return 0;
        case 0xff: *oc = (struct op_class){K_GPR, (uint8_t)v, 0, 0, 0x03, 0}; return 0;
        default: return -1;
        }
    }
    if (vex == 0 && map == 1) {
        if (op >= 0x90 && op <= 0x9f) { *oc = (struct op_class){K_GPR, 1, 0, 0, 0xff, 1}; return 0; }
        switch (op) {
        case 0xa4: case 0xac: *oc = (struct op_class){K_GPR, (uint8_t)v, 1, 1, 0, 0}; return 0;
        case 0xa5: case 0xad: *oc = (struct op_class){K_GPR, (uint8_t)v, 0, 1, 0, 0}; return 0;
        case 0xb0: case 0xc0: *oc = (struct op_class){K_GPR, 1, 0, 1, 0, 1}; return 0;
        case 0xb1: case 0xc1: *oc = (struct op_class){K_GPR, (uint8_t)v, 0, 1, 0, 0}; return 0;
        case 0xba: *oc = (struct op_class){K_GPR, (uint8_t)v, 1, 0, 0xe0, 0}; return 0;
        case 0xc3: if (pp) return -1; *oc = (struct op_class){K_GPR, (uint8_t)(W ? 8 : 4), 0, 1, 0, 0}; return 0;
        case 0xc7: if (pp) return -1; *oc = (struct op_class){K_GPR, (uint8_t)(W ? 16 : 8), 0, 0, 0x02, 0}; return 0;
        case 0x11: *oc = (struct op_class){K_VEC, (uint8_t)(pp == 2 ? 4 : pp == 3 ? 8 : 16), 0, 2, 0, 0}; return 0;
        case 0x13: case 0x17: if (pp > 1) return -1; *oc = (struct op_class){K_VEC, 8, 0, 2, 0, 0}; return 0;
        case 0x29: case 0x2b: if (pp > 1) return -1; *oc = (struct op_class){K_VEC, 16, 0, 2, 0, 0}; return 0;
        case 0x7e: if (pp > 1) return -1; *oc = (struct op_class){K_VEC, (uint8_t)(W ? 8 : 4), 0, 2, 0, 0}; return 0;
        case 0x7f: if (pp == 3) return -1; *oc = (struct op_class){K_VEC, (uint8_t)(pp ? 16 : 8), 0, 2, 0, 0}; return 0;
        case 0xd6: if (pp != 1) return -1; *oc = (struct op_class){K_VEC, 8, 0, 2, 0, 0}; return 0;
        case 0xe7: if (pp > 1) return -1; *oc = (struct op_class){K_VEC, (uint8_t)(pp ? 16 : 8), 0, 2, 0, 0}; return 0;
        default: return -1;
        }
    }
    if (vex == 0 && map == 3) {
        if (pp != 1) return -1;
        switch (op) {
        case 0x14: *oc = (struct op_class){K_VEC, 1, 1, 2, 0, 0}; return 0;
        case 0x15: *oc = (struct op_class){K_VEC, 2, 1, 2, 0, 0}; return 0;
        case 0x16: *oc = (struct op_class){K_VEC, (uint8_t)(W ? 8 : 4), 1, 2, 0, 0}; return 0;
        case 0x17: *oc = (struct op_class){K_VEC, 4, 1, 2, 0, 0}; return 0;
        default: return -1;
        }
    }
    if (vex == 0) return -1;
    /* VEX (vex == 2, L = 0/1) and EVEX (vex == 3, L = L'L = 0/1/2) */
    int vl = 16 << L;
    if (L > 2) return -1;
    if (map == 1) {
        switch (op) {
        case 0x11: *oc = (struct op_class){K_VEC, (uint8_t)(pp == 2 ? 4 : pp == 3 ? 8 : vl), 0, 2, 0, 0}; return 0;
        case 0x13: case 0x17: if (pp > 1) return -1; *oc = (struct op_class){K_VEC, 8, 0, 2, 0, 0}; return 0;
        case 0x29: case 0x2b: if (pp > 1) return -1; *oc = (struct op_class){K_VEC, (uint8_t)vl, 0, 2, 0, 0}; return 0;
        case 0x7e: if (pp != 1) return -1; *oc = (struct op_class){K_VEC, (uint8_t)(W ? 8 : 4), 0, 2, 0, 0}; return 0;
        case 0x7f:
            if (pp == 0 || (pp == 3 && vex == 2)) return -1;
            *oc = (struct op_class){K_VEC, (uint8_t)vl, 0, 2, 0, 0}; return 0;
        case 0xd6: if (pp != 1) return -1; *oc = (struct op_class){K_VEC, 8, 0, 2, 0, 0}; return 0;
        case 0xe7: if (pp != 1) return -1; *oc = (struct op_class){K_VEC, (uint8_t)vl, 0, 2, 0, 0}; return 0;
        default: return -1;
        }
    }
    if (map == 2 && vex == 2) {
        if (pp != 1) return -1;
        if (op == 0x2e || op == 0x2f || op == 0x8e) { *oc = (struct op_class){K_VEC, (uint8_t)vl, 0, 2, 0, 0}; return 0; }
        return -1;
    }
    if (map == 3) {
        if (pp != 1) return -1;
        switch (op) {
        case 0x14: *oc = (struct op_class){K_VEC, 1, 1, 2, 0, 0}; return 0;
        case 0x15: *oc = (struct op_class){K_VEC, 2, 1, 2, 0, 0}; return 0;
        case 0x16: *oc = (struct op_class){K_VEC, (uint8_t)(W ? 8 : 4), 1, 2, 0, 0}; return 0;
        case 0x17: *oc = (struct op_class){K_VEC, 4, 1, 2, 0, 0}; return 0;
        case 0x19: case 0x39: *oc = (struct op_class){K_VEC, 16, 1, 2, 0, 0}; return 0;
        case 0x1b: case 0x3b: if (vex != 3) return -1; *oc = (struct op_class){K_VEC, 32, 1, 2, 0, 0}; return 0;
        case 0x1d: if (vex != 2) return -1; *oc = (struct op_class){K_VEC, (uint8_t)(8 << L), 1, 2, 0, 0}; return 0;
        default: return -1;
        }
    }
    return -1;
}

/* Decodes the instruction at ip. Bytes are read one at a time and only as far as the
 * encoding requires, so nothing past the instruction (which the CPU fetched) is touched. */
static int decode(const uint8_t *ip, struct insn *d) {
    memset(d, 0, sizeof *d);
    d->base = d->index = -1;
    unsigned i = 0;
    int opsz16 = 0, lock = 0, last_rep = 0;
    for (;; i++) {
        if (i >= 14) return -1;
        uint8_t b = ip[i];
        if (b == 0x66) opsz16 = 1;
        else if (b == 0x67) d->addr32 = 1;
        else if (b == 0xf0) lock = 1;
        else if (b == 0xf2 || b == 0xf3) last_rep = b;
        else if (b == 0x2e || b == 0x36 || b == 0x3e || b == 0x26) { /* no-ops in 64-bit mode */ }
        else if (b == 0x64 || b == 0x65) d->seg = b;
        else break;
        d->bytes[i] = b;
    }
    d->pfx_len = (uint8_t)i;
    uint8_t rex = 0;
    if ((ip[i] & 0xf0) == 0x40) { rex = ip[i]; d->bytes[i++] = rex; }
    int vex = 0, map, pp, L = 0, W = (rex >> 3) & 1, R = (rex >> 2) & 1, X = (rex >> 1) & 1, B = rex & 1, op;
    uint8_t b = ip[i];
    if (b == 0xc5 || b == 0xc4 || b == 0x62) {
        if (rex || opsz16 || last_rep || lock) return -1;
        if (b == 0xc5) {
            uint8_t p1 = ip[i + 1];
            R = !(p1 & 0x80); X = B = 0; W = 0; L = (p1 >> 2) & 1; pp = p1 & 3; map = 1;
            d->bytes[i] = b; d->bytes[i + 1] = p1; i += 2; vex = 2;
        } else if (b == 0xc4) {
            uint8_t p1 = ip[i + 1], p2 = ip[i + 2];
            R = !(p1 & 0x80); X = !(p1 & 0x40); B = !(p1 & 0x20); map = p1 & 0x1f;
            W = p2 >> 7; L = (p2 >> 2) & 1; pp = p2 & 3;
            d->bytes[i] = b; d->bytes[i + 1] = p1; d->bytes[i + 2] = p2; i += 3; vex = 2;
        } else {
            uint8_t p0 = ip[i + 1], p1 = ip[i + 2], p2 = ip[i + 3];
            if ((p0 & 0x08) || !(p1 & 0x04) || (p2 & 0x10) || (p2 & 0x80)) return -1; /* reserved, b, z */
            R = !(p0 & 0x80); X = !(p0 & 0x40); B = !(p0 & 0x20); map = p0 & 7;
            W = p1 >> 7; pp = p1 & 3; L = (p2 >> 5) & 3;
            d->bytes[i] = b; d->bytes[i + 1] = p0; d->bytes[i + 2] = p1; d->bytes[i + 3] = p2; i += 4; vex = 3;
        }
        if (map < 1 || map > 3) return -1;
        op = ip[i]; d->bytes[i++] = (uint8_t)op;
    } else if (b == 0x0f) {
        d->bytes[i++] = b;
        uint8_t b2 = ip[i]; d->bytes[i++] = b2;
        if (b2 == 0x38 || b2 == 0x3a) { map = b2 == 0x38 ? 2 : 3; op = ip[i]; d->bytes[i++] = (uint8_t)op; }
        else { map = 1; op = b2; }
        pp = last_rep == 0xf3 ? 2 : last_rep == 0xf2 ? 3 : opsz16 ? 1 : 0;
    } else {
        map = 0; op = b; d->bytes[i++] = b;
        pp = last_rep == 0xf3 ? 2 : last_rep == 0xf2 ? 3 : opsz16 ? 1 : 0;
    }
    (void)R;

    if (vex == 0 && map == 0 && (op == 0xa4 || op == 0xa5 || op == 0xaa || op == 0xab)) {
        d->kind = (op == 0xa4 || op == 0xa5) ? K_MOVS : K_STOS;
        d->size = (uint8_t)((op & 1) ? (W ? 8 : opsz16 ? 2 : 4) : 1);
        d->rep = last_rep != 0;
        d->len = (uint8_t)i;
        return 0;
    }
    struct op_class oc;
    if (classify(&oc, vex, map, op, pp, W, L, opsz16) < 0) return -1;
    if (i >= 15) return -1;
    uint8_t modrm = ip[i];
    d->head_len = (uint8_t)i;
    d->modrm = modrm;
    d->bytes[i++] = modrm;
    int mod = modrm >> 6, reg = (modrm >> 3) & 7, rm = modrm & 7;
    if (mod == 3) return -1;
    if (oc.reg_use == 0 && !(oc.ext_mask & (1u << reg))) return -1;
    if (oc.reg_use == 1) { /* rsp as a register operand cannot be given to the thunk */
        int full = reg | (((rex >> 2) & 1) << 3);
        if (full == 4 && (!oc.byte_op || rex)) return -1;
    }
    int disp_len = 0;
    if (rm == 4) {
        if (i >= 15) return -1;
        uint8_t sib = ip[i]; d->bytes[i++] = sib;
        int idx = ((sib >> 3) & 7) | (X << 3);
        if (idx != 4) { d->index = (int8_t)idx; d->scale = (uint8_t)(1u << (sib >> 6)); }
        if (mod == 0 && (sib & 7) == 5) disp_len = 4;
        else d->base = (int8_t)((sib & 7) | (B << 3));
    } else if (mod == 0 && rm == 5) {
        d->rip_relative = 1;
        disp_len = 4;
    } else {
        d->base = (int8_t)(rm | (B << 3));
    }
    if (mod == 1) disp_len = 1;
    if (mod == 2) disp_len = 4;
    if (i + (unsigned)disp_len + oc.imm > 15) return -1;
    if (disp_len == 1) {
        int8_t d8 = (int8_t)ip[i]; d->bytes[i++] = (uint8_t)d8;
        d->disp = (int64_t)d8 * (vex == 3 ? oc.size : 1); /* EVEX disp8*N: N is the operand size here */
    } else if (disp_len == 4) {
        uint32_t d32 = 0;
        for (int k = 0; k < 4; k++, i++) {
            d32 |= (uint32_t)ip[i] << (8 * k);
            d->bytes[i] = ip[i];
        }
        d->disp = (int32_t)d32;
    }
    d->imm_at = (uint8_t)i;
    d->imm_len = oc.imm;
    for (int k = 0; k < oc.imm; k++) { d->bytes[i] = ip[i]; i++; }
    d->len = (uint8_t)i;
    d->kind = oc.kind;
    d->size = oc.size;
    return 0;
}

/* ---- out-of-line execution ------------------------------------------------------------ */

/* polus_xol_run(ctx): load the thread's registers from *ctx, jump to the slot; the slot ends
 * with an absolute jump to polus_xol_back, which stores them back into the same ctx (found on
 * the stack: the slot's instruction addresses only its scratch, rip-relative, never the stack)
 * and returns. Several threads may run slots at once, each with its own area (lanes). */
HIDDEN void polus_xol_run(struct xol_ctx *ctx);
HIDDEN extern const char polus_xol_back[];
__asm__(".text\n"
        ".p2align 4\n"
        ".globl polus_xol_run\n"
        ".hidden polus_xol_run\n"
        ".type polus_xol_run,@function\n"
        "polus_xol_run:\n"
        "  endbr64\n"
        "  push %rbp\n  push %rbx\n  push %r12\n  push %r13\n  push %r14\n  push %r15\n"
        "  push %rdi\n"
        "  mov %rsp, 160(%rdi)\n"
        "  mov 136(%rdi), %rsi\n"
        "  test %rsi, %rsi\n"
        "  jz 2f\n"
        "  mov 144(%rdi), %eax\n"
        "  mov 148(%rdi), %edx\n"
        "  cmpq $0, 152(%rdi)\n"
        "  je 1f\n"
        "  xrstor64 (%rsi)\n"
        "  jmp 2f\n"
        "1:\n"
        "  fxrstor64 (%rsi)\n"
        "2:\n"
        "  mov 128(%rdi), %rax\n"
        "  and $0x8d5, %eax\n"
        "  or $0x2, %eax\n"
        "  push %rax\n"
        "  popfq\n"
        "  push 168(%rdi)\n"
        "  mov 0(%rdi), %rax\n  mov 8(%rdi), %rcx\n  mov 16(%rdi), %rdx\n  mov 24(%rdi), %rbx\n"
        "  mov 40(%rdi), %rbp\n  mov 48(%rdi), %rsi\n"
        "  mov 64(%rdi), %r8\n  mov 72(%rdi), %r9\n  mov 80(%rdi), %r10\n  mov 88(%rdi), %r11\n"
        "  mov 96(%rdi), %r12\n  mov 104(%rdi), %r13\n  mov 112(%rdi), %r14\n  mov 120(%rdi), %r15\n"
        "  mov 56(%rdi), %rdi\n"
        "  jmp *(%rsp)\n"
        ".globl polus_xol_back\n"
        ".hidden polus_xol_back\n"
        "polus_xol_back:\n"
        "  endbr64\n"
        "  pushfq\n"
        "  xchg %rax, 16(%rsp)\n" /* rax = ctx; the thread's rax on the stack */
        "  mov %rcx, 8(%rax)\n  mov %rdx, 16(%rax)\n"
        "  mov %rbx, 24(%rax)\n  mov %rbp, 40(%rax)\n"
        "  mov %rsi, 48(%rax)\n  mov %rdi, 56(%rax)\n"
        "  mov %r8, 64(%rax)\n  mov %r9, 72(%rax)\n"
        "  mov %r10, 80(%rax)\n  mov %r11, 88(%rax)\n"
        "  mov %r12, 96(%rax)\n  mov %r13, 104(%rax)\n"
        "  mov %r14, 112(%rax)\n  mov %r15, 120(%rax)\n"
        "  pop %rcx\n  mov %rcx, 128(%rax)\n" /* flags */
        "  pop %rcx\n"                        /* the slot */
        "  pop %rcx\n  mov %rcx, 0(%rax)\n"   /* the thread's rax */
        "  mov 160(%rax), %rsp\n"
        "  add $8, %rsp\n"
        "  pop %r15\n  pop %r14\n  pop %r13\n  pop %r12\n  pop %rbx\n  pop %rbp\n"
        "  ret\n"
        ".size polus_xol_run, .-polus_xol_run\n");

#define XOL_SLOTS 64
#define XOL_SLOT_BYTES 64
#define XOL_SCRATCH(x) ((x)->base + PAGE)     /* 128 bytes, 64-aligned */
#define XOL_BUFFER(x) ((x)->base + 2 * PAGE)  /* string instructions' chunk buffer */

/* Maps an area: its code page is a memfd mapped r-x there and read-write elsewhere (slots are
 * written with plain stores, never through a writable code mapping); if memfd_create is
 * refused, an anonymous r-x page written through /proc/self/mem. 0 or -errno. */
int xol_area_init(struct xol_area *x) {
    if (x->base) return 0;
    uint8_t *m = sys_mmap(XOL_BYTES);
    if (!m) return -ENOMEM;
    long fd = RAW(SYS_memfd_create, "polus-xol", 1 /* MFD_CLOEXEC */, 0);
    uint8_t *w = NULL;
    if (fd >= 0) {
        if (RAW(SYS_ftruncate, fd, PAGE, 0) == 0) w = sys_mmap_full(0, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, (int)fd, 0);
        if (w && !sys_mmap_full((uint64_t)(uintptr_t)m, PAGE, PROT_READ | PROT_EXEC, MAP_SHARED | MAP_FIXED, (int)fd, 0)) {
            sys_munmap(w, PAGE);
            w = NULL;
        }
        if (w) RAW(SYS_madvise, w, PAGE, MADV_DONTFORK); /* a child writes its own code through /proc/self/mem */
        RAW(SYS_close, fd, 0, 0);
    }
    if (!w && sys_mprotect((uint64_t)(uintptr_t)m, PAGE, PROT_READ | PROT_EXEC) < 0) {
        sys_munmap(m, XOL_BYTES);
        return -EACCES;
    }
    x->code_w = w;
    x->pid = sys_getpid();
    __atomic_store_n(&x->base, m, __ATOMIC_RELEASE);
    return 0;
}

int xol_ensure(void) { return xol_area_init(&E.main); }

void xol_main_forget(void) {
    if (E.main.base) sys_munmap(E.main.base, XOL_BYTES); /* its code page is the parent's memfd */
    memset(&E.main, 0, sizeof E.main);
}

static void serialize_instructions(void) {
    uint32_t a = 0, b, c = 0, d;
    __asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d)::"memory");
}

/* The slot of area x running `d` with its memory operand on x's scratch buffer; 0 on failure. */
static uint64_t xol_slot(struct xol_area *x, const struct insn *d) {
    uint32_t h = 2166136261u;
    for (unsigned k = 0; k < d->len; k++) h = (h ^ d->bytes[k]) * 16777619u;
    unsigned idx = (h ^ (h >> 16)) % XOL_SLOTS;
    uint64_t slot = (uint64_t)(uintptr_t)x->base + idx * XOL_SLOT_BYTES;
    uint8_t *key = x->keys[idx];
    if (key[0] == d->len && memcmp(key + 1, d->bytes, d->len) == 0) return slot;

    uint8_t out[XOL_SLOT_BYTES];
    unsigned n = 0;
    out[n++] = 0xf3; out[n++] = 0x0f; out[n++] = 0x1e; out[n++] = 0xfa; /* endbr64: reached by jmp * */
    for (unsigned k = 0; k < d->pfx_len; k++) {
        uint8_t b = d->bytes[k];
        if (b == 0x26 || b == 0x2e || b == 0x36 || b == 0x3e || b == 0x64 || b == 0x65) continue;
        out[n++] = b;
    }
    for (unsigned k = d->pfx_len; k < d->head_len; k++) out[n++] = d->bytes[k];
    out[n++] = (uint8_t)((d->modrm & 0x38) | 0x05); /* mod 00, rm 101: [rip + disp32] */
    unsigned disp_at = n;
    n += 4;
    for (unsigned k = 0; k < d->imm_len; k++) out[n++] = d->bytes[d->imm_at + k];
    if (n - 4 > 15) return 0; /* the rewritten instruction would be too long */
    int64_t disp = (int64_t)(uintptr_t)XOL_SCRATCH(x) - (int64_t)(slot + n);
    for (int k = 0; k < 4; k++) out[disp_at + k] = (uint8_t)((uint64_t)disp >> (8 * k));
    out[n++] = 0xff; out[n++] = 0x25; /* jmp *0(%rip) */
    for (int k = 0; k < 4; k++) out[n++] = 0;
    uint64_t back = (uint64_t)(uintptr_t)polus_xol_back;
    for (int k = 0; k < 8; k++) out[n++] = (uint8_t)(back >> (8 * k));
    key[0] = 0;
    if (x->code_w && x->pid == G.my_pid) memcpy(x->code_w + idx * XOL_SLOT_BYTES, out, n);
    else if (poke(slot, out, n) < 0) return 0;
    serialize_instructions(); /* cross-modified code: serialise before executing it */
    key[0] = d->len;
    memcpy(key + 1, d->bytes, d->len);
    __atomic_fetch_add(&E.xol_slots_built, 1, __ATOMIC_RELAXED);
    return slot;
}

static const int greg_of_x86[16] = {REG_RAX, REG_RCX, REG_RDX, REG_RBX, REG_RSP, REG_RBP, REG_RSI, REG_RDI,
                                    REG_R8,  REG_R9,  REG_R10, REG_R11, REG_R12, REG_R13, REG_R14, REG_R15};

static uint64_t gpr(const ucontext_t *uc, int x86) { return (uint64_t)uc->uc_mcontext.gregs[greg_of_x86[x86]]; }

static void emulate_string(struct xol_area *x, ucontext_t *uc, const struct insn *d, uint64_t fault_addr, int in_sync,
                           int tid, struct emu_result *res) {
    greg_t *gr = uc->uc_mcontext.gregs;
    if (d->addr32 || d->seg || ((uint64_t)gr[REG_EFL] & DF_FLAG)) return;
    uint64_t size = d->size;
    uint64_t count = d->rep ? (uint64_t)gr[REG_RCX] : 1;
    uint64_t dst = (uint64_t)gr[REG_RDI], src = (uint64_t)gr[REG_RSI];
    if (count == 0 || fault_addr < dst || fault_addr >= dst + size) return;
    /* The run of whole elements lying on our pages (at most 1 MiB per fault). */
    uint64_t limit = count < (1ull << 20) / size ? count : (1ull << 20) / size, n = 0;
    while (n < limit) {
        uint64_t a = dst + n * size;
        if (!range_tracked(a, size)) break;
        n++;
        uint64_t page_end = PAGE_OF(a) + PAGE;
        if (a + size <= page_end) { /* the following elements wholly on this page are ours too */
            uint64_t more = (page_end - (a + size)) / size;
            n += more < limit - n ? more : limit - n;
        }
    }
    if (n == 0) return;
    if (d->kind == K_MOVS && dst > src && dst < src + n * size && dst - src < size) return;
    if (!in_sync) run_pre_syncs(dst, dst + n * size, tid);
    res->pre_done = 1;
    uint8_t *buf = XOL_BUFFER(x);
    uint64_t done = 0, start = dst;
    while (done < n) {
        uint64_t elems = n - done;
        if (elems * size > PAGE) elems = PAGE / size;
        if (d->kind == K_MOVS && dst > src && dst < src + elems * size) elems = (dst - src) / size;
        uint64_t bytes = elems * size;
        if (d->kind == K_STOS) {
            uint64_t rax = (uint64_t)gr[REG_RAX];
            for (uint64_t k = 0; k < bytes; k++) buf[k] = (uint8_t)(rax >> (8 * (k % size)));
        } else if (sys_read_self(buf, (const void *)(uintptr_t)src, bytes) != (long)bytes) {
            break; /* unreadable source: the re-executed instruction faults on it natively */
        }
        if (store_bytes(dst, buf, bytes) < 0) break;
        dst += bytes;
        src += bytes;
        done += elems;
    }
    if (done == 0) return;
    gr[REG_RDI] = (greg_t)dst;
    if (d->kind == K_MOVS) gr[REG_RSI] = (greg_t)src;
    if (d->rep) gr[REG_RCX] = (greg_t)(count - done);
    if (!d->rep || count == done) gr[REG_RIP] += d->len;
    res->done = 1;
    res->changed = scan_written(start, dst, in_sync);
}

int emu_decode(const ucontext_t *uc, uint64_t fault_addr, struct insn *d, uint64_t *ea_out) {
    const greg_t *gr = uc->uc_mcontext.gregs;
    uint64_t rip = (uint64_t)gr[REG_RIP];
    if (decode((const uint8_t *)(uintptr_t)rip, d) < 0) return -1;
    if (d->kind == K_STOS || d->kind == K_MOVS) return 1;
    if (d->seg || d->addr32) return -1;
    uint64_t ea = (uint64_t)d->disp;
    if (d->rip_relative) ea += rip + d->len;
    if (d->base >= 0) ea += gpr(uc, d->base);
    if (d->index >= 0) ea += gpr(uc, d->index) * d->scale;
    if (fault_addr < ea || fault_addr >= ea + d->size) return -1;
    *ea_out = ea;
    return 0;
}

int emu_run(struct xol_area *x, ucontext_t *uc, const struct insn *d, const uint8_t *before, uint8_t *after) {
    greg_t *gr = uc->uc_mcontext.gregs;
    uint64_t slot = xol_slot(x, d);
    if (!slot) return -1;
    uint8_t *scratch = XOL_SCRATCH(x);
    memcpy(scratch, before, d->size);
    struct xol_ctx *c = &x->ctx;
    for (int k = 0; k < 16; k++) c->gpr[k] = gpr(uc, k);
    c->rflags = (uint64_t)gr[REG_EFL];
    c->fpstate = 0;
    if (d->kind == K_VEC) {
        const uint8_t *fp = (const uint8_t *)uc->uc_mcontext.fpregs;
        if (!fp) return -1;
        uint32_t magic;
        uint64_t features;
        memcpy(&magic, fp + 464, 4);
        memcpy(&features, fp + 472, 8);
        c->fpstate = (uint64_t)(uintptr_t)fp;
        c->use_xsave = magic == 0x46505853u; /* FP_XSTATE_MAGIC1: an XSAVE frame */
        c->xmask = c->use_xsave ? features & ~(1ull << 9) /* never PKRU */ : 0;
    }
    c->slot = slot;
    polus_xol_run(c);
    memcpy(after, scratch, d->size);
    return 0;
}

void emu_finish(struct xol_area *x, ucontext_t *uc, const struct insn *d) {
    greg_t *gr = uc->uc_mcontext.gregs;
    if (d->kind == K_GPR) {
        for (int k = 0; k < 16; k++)
            if (k != 4) gr[greg_of_x86[k]] = (greg_t)x->ctx.gpr[k];
        gr[REG_EFL] = (greg_t)(((uint64_t)gr[REG_EFL] & ~STATUS_FLAGS) | (x->ctx.rflags & STATUS_FLAGS));
    }
    gr[REG_RIP] += d->len;
}

void emu_count(void) { __atomic_fetch_add(&E.emulated, 1, __ATOMIC_RELAXED); }

/* Carries out the faulting store without opening its page (see the top of the file). */
void emulate(ucontext_t *uc, uint64_t fault_addr, int in_sync, int tid, struct emu_result *res) {
    memset(res, 0, sizeof *res);
    struct xol_area *x = &E.main;
    if (!may_emulate() || (!x->base && xol_area_init(x) != 0)) return;
    struct insn d;
    uint64_t ea = 0;
    int kind = emu_decode(uc, fault_addr, &d, &ea);
    if (kind < 0) return;
    if (kind == 1) {
        emulate_string(x, uc, &d, fault_addr, in_sync, tid, res);
        if (res->done && !in_sync) emu_count();
        return;
    }
    uint64_t size = d.size;
    if (!range_tracked(ea, size)) return;
    if (!in_sync) run_pre_syncs(ea, ea + size, tid);
    res->pre_done = 1;
    uint8_t before[64], after[64];
    memcpy(before, (const void *)(uintptr_t)ea, size);
    if (emu_run(x, uc, &d, before, after) < 0) return; /* after the pre_syncs: they may have used the slots */
    uint64_t first = first_diff(before, after, size);
    if (first < size) {
        uint64_t last = size - 1;
        while (last > first && before[last] == after[last]) last--;
        if (store_bytes(ea + first, after + first, last - first + 1) < 0) return;
    }
    emu_finish(x, uc, &d);
    res->done = 1;
    if (!in_sync) emu_count();
    res->changed = first < size ? scan_written(ea, ea + size, in_sync) : 0;
}

/* ---- the rest of the interface (store_emulation.h) ------------------------------------ */

int xol_ready(void) { return E.main.base != NULL; }

int emu_state_overlaps(uint64_t lo, uint64_t hi) {
    uint64_t x_lo = 0, x_hi = 0;
    uint64_t e_lo = PAGE_OF((uintptr_t)&E), e_hi = PAGE_OF((uintptr_t)&E + sizeof E - 1) + PAGE;
    return (lo < x_hi && x_lo < hi) || (lo < e_hi && e_lo < hi);
}

void emu_get_stats(struct emu_stats *out) {
    out->emulated = E.emulated;
    out->xol_slots_built = E.xol_slots_built;
}

void emu_clear_stats(void) {
    E.emulated = 0;
    E.xol_slots_built = 0;
}
