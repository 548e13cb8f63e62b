/*
 * fault_handlers.c — the SIGSEGV and SIGTRAP handlers of the write-through sync (POLUS §2.2,
 * §4.1.2), inside libpolus-agent.so: a write fault on a tracked page is carried out by the
 * store emulator (store_emulation.c) or, failing that, single-stepped on an opened page;
 * every other signal goes to the disposition that was there before ours. The design
 * (MECHANISM, INVARIANT, CHAINING, END): tracked_pages.c.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>

#include "fast_path.h"
#include "fault_handlers.h"
#include "raw_syscall.h"
#include "store_emulation.h"
#include "sync_fence.h"
#include "sync_state.h"
#include "tracked_pages.h"

#define TF_FLAG 0x100ull

/* Signals that stay deliverable while we hold the lock: the synchronous ones. */
#define SYNCHRONOUS_SIGNALS \
    (sigbit(SIGSEGV) | sigbit(SIGTRAP) | sigbit(SIGBUS) | sigbit(SIGILL) | sigbit(SIGFPE) | sigbit(SIGSYS))
#define ASYNC_BLOCK (~SYNCHRONOUS_SIGNALS & ~(sigbit(SIGKILL) | sigbit(SIGSTOP)))

/* ---- single-step fallback ------------------------------------------------------------ */

static void start_step(ucontext_t *uc, uint32_t page, uint64_t fault_addr, int in_sync) {
    greg_t *gr = uc->uc_mcontext.gregs;
    G.step.active = 1;
    G.step.in_sync = (uint32_t)in_sync;
    G.step.tf_was_set = ((uint64_t)gr[REG_EFL] & TF_FLAG) != 0;
    G.step.page_count = 1;
    G.step.pages[0] = page;
    G.step.fault_addr = fault_addr;
    G.step.saved_mask = *uc_mask_word(uc);
    /* No application handler may run on this thread while it holds the lock. */
    *uc_mask_word(uc) = (G.step.saved_mask | ASYNC_BLOCK) & ~SYNCHRONOUS_SIGNALS;
    gr[REG_EFL] |= (greg_t)TF_FLAG;
    open_page(page);
    if (!in_sync) G.stats.single_stepped++;
}

/* Closes the step's pages and compares what is on them. Returns the items that changed. */
static uint32_t finish_step(ucontext_t *uc) {
    greg_t *gr = uc->uc_mcontext.gregs;
    if (!G.step.tf_was_set) gr[REG_EFL] &= ~(greg_t)TF_FLAG;
    *uc_mask_word(uc) = G.step.saved_mask;
    for (uint32_t k = 0; k < G.step.page_count; k++) close_page(G.step.pages[k]);
    uint32_t changed = 0;
    for (uint32_t k = 0; k < G.step.page_count; k++) {
        if (G.step.in_sync) changed += scan_page(G.step.pages[k], G.sync_counterpart, G.step.fault_addr, 1);
        else changed += scan_page(G.step.pages[k], NO_ITEM, 0, 0);
    }
    G.step.active = 0;
    return changed;
}

/* ---- signal handlers ------------------------------------------------------------------ */

static void on_segv(int sig, siginfo_t *si, void *ctx);
static void on_trap(int sig, siginfo_t *si, void *ctx);

/* A signal the agent does not handle itself: a patch's sync function faulting inside its
 * fence is unwound to the fence (sync_fence.h), never passed on. A fault the kernel raised, or
 * a signal the thread sent itself (raise); not one sent from outside. */
static void unwind_if_fenced(int sig, siginfo_t *si, ucontext_t *uc, int tid) {
    if (si->si_code > 0 || ((si->si_code == SI_TKILL || si->si_code == SI_USER) && si->si_pid == sys_getpid())) {
        fast_unwind_if_fenced(sig, si, uc, tid); /* one running on the fast path */
        fence_unwind(sig, si, uc, tid);
        callback_fence_unwind(sig, si, uc, tid); /* a patch callback Polus runs on this thread */
    }
}

/* Delivers the signal to the disposition that was there before ours, as the kernel would. */
static void chain(int sig, siginfo_t *si, ucontext_t *uc, struct sigaction *slot, int tid) {
    struct sigaction prev = *slot;
    if ((uintptr_t)prev.sa_handler <= 1) { /* SIG_DFL or SIG_IGN */
        int kernel_generated = si->si_code > 0;
        if (prev.sa_handler == SIG_IGN && !kernel_generated) return;
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        sigaction(sig, &dfl, NULL);
        /* A fault re-executes and kills the process with the same signal as without us;
         * a trap (already past) or a sent signal is raised again. */
        if (sig != SIGTRAP && kernel_generated) return;
        RAW(SYS_tgkill, sys_getpid(), tid, sig);
        return;
    }
    if (prev.sa_flags & SA_RESETHAND) {
        memset(&slot->sa_mask, 0, sizeof slot->sa_mask);
        slot->sa_handler = SIG_DFL;
        slot->sa_flags = 0;
    }
    uint64_t mask = *uc_mask_word(uc) | *(uint64_t *)(void *)&prev.sa_mask;
    if (!(prev.sa_flags & SA_NODEFER)) mask |= sigbit(sig);
    set_sigmask(mask);
    if (prev.sa_flags & SA_SIGINFO) prev.sa_sigaction(sig, si, uc);
    else prev.sa_handler(sig);
}

static int retry_once(int tid, uint64_t rip, uint64_t addr) {
    __typeof__(&G.retry[0]) r = &G.retry[(unsigned)tid % 64];
    if (r->tid == tid && r->rip == rip && r->addr == addr) {
        r->tid = 0;
        return 0;
    }
    r->tid = tid;
    r->rip = rip;
    r->addr = addr;
    G.stats.retried_faults++;
    return 1;
}

/* A write fault on tracked page `page`, lock held (one level, taken by the caller). */
static void handle_tracked_write(ucontext_t *uc, uint32_t page, uint64_t addr, int tid) {
    struct emu_result res;
    if (G.step.active) { /* the stepped instruction also writes another of our pages */
        if (G.step.page_count < MAX_STEP_PAGES) {
            G.step.pages[G.step.page_count++] = page;
            open_page(page);
        }
        lock_release();
        return;
    }
    if (G.in_sync) { /* a sync function writing (usually its counterpart) */
        G.stats.sync_writes++;
        emulate(uc, addr, 1, tid, &res);
        if (res.done) {
            lock_release();
            return;
        }
        int32_t k = find_page(addr);
        start_step(uc, k >= 0 ? (uint32_t)k : page, addr, 1); /* keeps this lock level until the SIGTRAP */
        return;
    }
    REG.sync.faults++;
    emulate(uc, addr, 0, tid, &res);
    if (res.done) {
        if (!res.changed) REG.sync.false_sharing++;
        drain(0, tid);
        lock_release();
        return;
    }
    if (!res.pre_done) run_pre_syncs(addr, addr + 1, tid);
    int32_t k = find_page(addr); /* a pre_sync may have registered data: table rebuilt */
    if (k < 0 || !G.pages[k].tracked) { /* cannot happen: pages are never dropped while active */
        lock_release();
        return;
    }
    start_step(uc, (uint32_t)k, addr, 0);
}

static void handle_segv(siginfo_t *si, ucontext_t *uc) {
    int tid = fast_tid(); /* no system call on the tracked-write path */
    greg_t *gr = uc->uc_mcontext.gregs;
    uint64_t addr = (uint64_t)(uintptr_t)si->si_addr;
    if (si->si_code == SEGV_ACCERR && ((uint64_t)gr[REG_ERR] & 2)) {
        __atomic_fetch_add(&G.write_fault_entries, 1, __ATOMIC_RELAXED); /* before the lock: see sync_end */
        /* First without the sync lock, under the items' own (fast_path.c). */
        int fast = fast_write(uc, addr, tid);
        if (fast > 0) return;
        if (fast < 0) fast_unwind_if_fenced(SIGSEGV, si, uc, tid); /* a sync function's store it cannot do */
        lock_acquire(tid, G.my_pid, 0);
        if (G.active) {
            int32_t k = find_page(addr);
            if (k >= 0 && G.pages[k].tracked) {
                handle_tracked_write(uc, (uint32_t)k, addr, tid);
                return;
            }
        }
        int retry = retry_once(tid, (uint64_t)gr[REG_RIP], addr);
        lock_release();
        if (retry) return;
    }
    if (__atomic_load_n(&G.lock_owner, __ATOMIC_RELAXED) == tid && G.step.active) {
        /* The stepped instruction faulted for a reason of its own: close the step first. */
        int in_sync = G.step.in_sync;
        finish_step(uc);
        if (!in_sync) drain(0, tid);
        lock_release();
    }
    unwind_if_fenced(SIGSEGV, si, uc, tid);
    __atomic_fetch_add(&REG.sync.chained_faults, 1, __ATOMIC_RELAXED);
    chain(SIGSEGV, si, uc, &G.prev_segv, tid);
}

static void on_segv(int sig, siginfo_t *si, void *ctx) {
    (void)sig;
    int saved_errno = errno;
    handle_segv(si, (ucontext_t *)ctx);
    errno = saved_errno;
}

static void on_trap(int sig, siginfo_t *si, void *ctx) {
    (void)sig;
    int saved_errno = errno;
    ucontext_t *uc = (ucontext_t *)ctx;
    int tid = sys_gettid();
    /* Our single step's trap says TRAP_TRACE — or TRAP_BRKPT when the debug status register
     * lost its single-step bit, which happens under KVM here about once in 10^4 steps under
     * load (arch/x86/kernel/traps.c, get_si_code). Either is a kernel debug trap, and while
     * our step is on, this thread runs nothing else. */
    int debug_trap = si->si_code == TRAP_TRACE || si->si_code == TRAP_BRKPT;
    if (debug_trap && __atomic_load_n(&G.lock_owner, __ATOMIC_RELAXED) == tid && G.step.active) {
        int tf_was_set = (int)G.step.tf_was_set, in_sync = (int)G.step.in_sync;
        uint32_t changed = finish_step(uc);
        if (!in_sync) {
            if (!changed) REG.sync.false_sharing++;
            drain(0, tid);
        }
        lock_release();
        if (tf_was_set) chain(SIGTRAP, si, uc, &G.prev_trap, tid); /* the application's own step */
    } else {
        unwind_if_fenced(SIGTRAP, si, uc, tid); /* int3 in a sync function */
        chain(SIGTRAP, si, uc, &G.prev_trap, tid);
    }
    errno = saved_errno;
}

/* SIGBUS, SIGFPE, SIGILL, SIGABRT: installed while tracking only to catch sync functions'
 * faults. */
static struct sigaction *other_slot(int sig) {
    return sig == SIGBUS ? &G.prev_bus : sig == SIGFPE ? &G.prev_fpe : sig == SIGABRT ? &G.prev_abrt : &G.prev_ill;
}
static void on_other_fault(int sig, siginfo_t *si, void *ctx) {
    int saved_errno = errno;
    ucontext_t *uc = (ucontext_t *)ctx;
    int tid = sys_gettid();
    unwind_if_fenced(sig, si, uc, tid);
    chain(sig, si, uc, other_slot(sig), tid);
    errno = saved_errno;
}

/* One rt_sigaction (setting ours returns what was there): sync_begin runs in the commit
 * pause on a thread the injector follows system call by system call. */
static int install_handler(int sig, void (*fn)(int, siginfo_t *, void *), struct sigaction *prev) {
    struct sigaction cur;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = fn;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER | SA_RESTART;
    sigfillset(&sa.sa_mask);
    sigdelset(&sa.sa_mask, SIGSEGV);
    sigdelset(&sa.sa_mask, SIGTRAP);
    sigdelset(&sa.sa_mask, SIGBUS);
    sigdelset(&sa.sa_mask, SIGILL);
    sigdelset(&sa.sa_mask, SIGFPE);
    sigdelset(&sa.sa_mask, SIGSYS);
    if (sigaction(sig, &sa, &cur) != 0) return -errno;
    if (!((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == fn)) *prev = cur; /* still ours: the saved one stays */
    return 0;
}

/* 1 if ours was still installed and the previous disposition is back. */
static int restore_handler(int sig, void (*fn)(int, siginfo_t *, void *), struct sigaction *prev) {
    struct sigaction cur;
    if (sigaction(sig, NULL, &cur) != 0) return 0;
    if (!((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == fn)) return 0;
    return sigaction(sig, prev, NULL) == 0;
}

/* ---- end of sync: no SIGSEGV of ours may still be on its way ------------------------- */

/* After sync_end has made the pages writable again, a write fault raised while they were
 * read-only can still be on its way to a handler:
 *  - the kernel queues the signal only after it has dropped the VMA lock that mprotect
 *    serialises with (arch/x86/mm/fault.c: __bad_area unlocks, then force_sig_fault): a
 *    thread delayed there (preempted, vCPU stalled) queues it after mprotect returned;
 *  - a tracer (the injector) holding the signal in a signal-delivery-stop re-injects it when
 *    it lets the thread go; the signal is then no longer pending anywhere, and the thread
 *    may not run until later.
 * Delivery picks the disposition at that moment. If the application's were back already,
 * its handler would get a fault that is not its own (the fig2 counter then reinstalls
 * SIG_DFL, and the next such fault kills the process: seen in testing). So the previous
 * disposition is put back only after a quiet period: no SIGSEGV pending in any thread and
 * no write fault entering our handler for QUIET_MS; faults that do arrive meanwhile find
 * sync inactive and are retried. If it never gets quiet (~2 s), ours stays, as a
 * pass-through, and sync_end returns 1. Not a proof (a thread could stay descheduled
 * longer than the quiet period), hence POLUS_SYNC_KEEP_HANDLERS for the strictly safe
 * choice: ours stays installed for good, delivering everything else as the kernel would.
 *
 * sigsegv_pending_somewhere: 1 if some thread has SIGSEGV in its private pending set (SigPnd
 * in /proc/self/task/T/status). */
#define QUIET_MS 50
static int sigsegv_pending_somewhere(void) {
    long dir = raw6(SYS_openat, AT_FDCWD, (long)"/proc/self/task", O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0, 0, 0);
    if (dir < 0) return 1;
    char ents[2048];
    int pending = 0;
    for (;;) {
        long got = RAW(SYS_getdents64, dir, ents, sizeof ents);
        if (got <= 0) break;
        for (long off = 0; off < got;) {
            const char *name = ents + off + 19; /* struct linux_dirent64: ino 8, off 8, reclen 2, type 1 */
            unsigned short reclen;
            memcpy(&reclen, ents + off + 16, 2);
            off += reclen;
            if (name[0] < '0' || name[0] > '9') continue;
            char path[64] = "/proc/self/task/";
            size_t n = strlen(path), k = 0;
            while (name[k] && n < sizeof path - 8) path[n++] = name[k++];
            memcpy(path + n, "/status", 8);
            long fd = raw6(SYS_openat, AT_FDCWD, (long)path, O_RDONLY | O_CLOEXEC, 0, 0, 0);
            if (fd < 0) continue; /* the thread exited */
            char buf[2048];
            long len = RAW(SYS_read, fd, buf, sizeof buf - 1);
            RAW(SYS_close, fd, 0, 0);
            if (len <= 0) continue;
            buf[len] = 0;
            const char *line = strstr(buf, "\nSigPnd:");
            if (!line) continue;
            line += 8;
            while (*line == ' ' || *line == '\t') line++;
            uint64_t mask = 0;
            for (; (*line >= '0' && *line <= '9') || (*line >= 'a' && *line <= 'f'); line++)
                mask = mask * 16 + (uint64_t)(*line <= '9' ? *line - '0' : *line - 'a' + 10);
            if (mask & sigbit(SIGSEGV)) pending = 1;
        }
    }
    RAW(SYS_close, dir, 0, 0);
    return pending;
}

/* ---- the interface (fault_handlers.h) ------------------------------------------------- */

int install_fault_handler(int sig) {
    if (sig == SIGSEGV) return install_handler(SIGSEGV, on_segv, &G.prev_segv);
    if (sig == SIGTRAP) return install_handler(SIGTRAP, on_trap, &G.prev_trap);
    return install_handler(sig, on_other_fault, other_slot(sig));
}

int restore_fault_handler(int sig) {
    if (sig == SIGSEGV) return restore_handler(SIGSEGV, on_segv, &G.prev_segv);
    if (sig == SIGTRAP) return restore_handler(SIGTRAP, on_trap, &G.prev_trap);
    return restore_handler(sig, on_other_fault, other_slot(sig));
}

/* sync_end's wait for the quiet period described above (END). Each millisecond costs one
 * system call (nanosleep) and the pending scan (several per thread) runs once, when the
 * window is over: sync_end usually runs in a thread borrowed by the injector, which stops at
 * every system call the thread makes, and scanning every millisecond made the wait take
 * seconds on a loaded machine. A SIGSEGV pending at some moment of the window was either
 * delivered within it (a write fault entering our handler: the counter moved) or is still
 * pending at its end. */
int restore_fault_handlers_when_quiet(void) {
    uint64_t seen = __atomic_load_n(&G.write_fault_entries, __ATOMIC_RELAXED);
    int quiet_ms = 0;
    for (int waited_ms = 0; waited_ms < 2000; waited_ms++) {
        struct timespec ms = {0, 1000 * 1000};
        RAW(SYS_nanosleep, &ms, NULL, 0);
        uint64_t now = __atomic_load_n(&G.write_fault_entries, __ATOMIC_RELAXED);
        if (now != seen) {
            seen = now;
            quiet_ms = 0;
            continue;
        }
        if (++quiet_ms < QUIET_MS) continue;
        if (sigsegv_pending_somewhere()) {
            quiet_ms = 0;
            continue;
        }
        int restored = restore_handler(SIGSEGV, on_segv, &G.prev_segv);
        restored &= restore_handler(SIGTRAP, on_trap, &G.prev_trap);
        for (int k = 0; k < FENCED_SIGNAL_COUNT; k++) restored &= restore_fault_handler(FENCED_SIGNALS[k]);
        return restored;
    }
    return 0;
}
