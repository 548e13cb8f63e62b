/*
 * trap_sites.c — sending on the threads that hit an int3 a commit placed at a function's entry
 * (struct polus_trap_site in polus/agent_abi.h).
 *
 * The injector writes a jump over live code the way the kernel does in text_poke_bp
 * (arch/x86/kernel/alternative.c): an int3 over the jump's first byte, the other four bytes,
 * then the first byte, every thread serialised between the steps (injector/src/update/
 * trap_commit.h). A single byte store is seen whole by a processor fetching it, and an int3 is
 * one byte, so a thread reaching the site meanwhile either runs the original first instruction
 * (before the int3) or traps; no thread can newly enter the bytes behind it, which the injector
 * checks to be empty, one thread at a time, before it rewrites them.
 *
 * The trap reaches us as SIGTRAP with si_code SI_KERNEL and the pc one byte past the int3
 * (arch/x86/kernel/traps.c, do_int3_user: force_sig(SIGTRAP)). The handler looks the site up
 * in the registry's table and sets the pc to where the site leads now. Our handler is put in
 * place before the first int3 and stays for good: a commit cut short (the injector killed)
 * leaves the int3 and its table entry, and threads keep being sent on until the next command
 * completes or undoes it. A trap whose site was cleared while the signal was on its way (the
 * thread was preempted, or held by a tracer, between the int3 and our handler) finds another
 * byte than int3 at the site: the commit is over, and the thread runs what is there now — as
 * uprobes does when its breakpoint is gone (kernel/events/uprobes.c, handle_swbp).
 *
 * force_sig kills the process if the thread blocks SIGTRAP; the injector unblocks it in every
 * thread before the first int3 (PTRACE_SETSIGMASK).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include "fault_handlers.h"
#include "polus/agent_abi.h"
#include "raw_syscall.h"
#include "sync_state.h"
#include "trap_sites.h"

#define POLUS_EXPORT __attribute__((visibility("default")))
#define INT3 0xccu

int trap_site_redirect(const siginfo_t *si, ucontext_t *uc) {
    if (si->si_code != SI_KERNEL || !__atomic_load_n(&G.traps_armed, __ATOMIC_ACQUIRE)) return 0;
    greg_t *gr = uc->uc_mcontext.gregs;
    uint64_t at = (uint64_t)gr[REG_RIP] - 1;
    for (uint32_t k = 0; k < POLUS_MAX_TRAP_SITES; k++) {
        struct polus_trap_site *t = &REG.traps[k];
        if (__atomic_load_n(&t->site, __ATOMIC_ACQUIRE) != at) continue;
        uint64_t switched = __atomic_load_n(&REG.trap_switched_patch, __ATOMIC_ACQUIRE);
        uint64_t to = __atomic_load_n(&t->patch_id, __ATOMIC_RELAXED) == switched ? t->after : t->before;
        if (to == 0) break;
        gr[REG_RIP] = (greg_t)to;
        __atomic_fetch_add(&REG.trap_hits, 1, __ATOMIC_RELAXED);
        return 1;
    }
    /* No entry: one cleared since this int3 was executed leaves another byte than int3 (`int
     * $3`, cd 03, is the other form of the instruction and is not ours). An int3 of the
     * application's own stays int3 and goes to its disposition. */
    uint8_t now = *(volatile const uint8_t *)(uintptr_t)at;
    if (now == INT3) return 0;
    if (now == 0x03 && *(volatile const uint8_t *)(uintptr_t)(at - 1) == 0xcd) return 0;
    gr[REG_RIP] = (greg_t)at;
    return 1;
}

/* Our SIGTRAP handler for good. Called on a borrowed thread before the first int3 of a commit
 * (idempotent: the disposition chained to stays the application's). */
POLUS_EXPORT int64_t polus_agent_arm_traps(void) {
    int installed = install_fault_handler(SIGTRAP);
    if (installed != 0) return installed;
    __atomic_store_n(&G.traps_armed, 1, __ATOMIC_RELEASE);
    return 0;
}
