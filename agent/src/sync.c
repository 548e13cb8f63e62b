/*
 * sync.c — the SIGSEGV/SIGTRAP handlers and the entry points of the write-through sync
 * (POLUS §2.2, §4.1.2), inside libpolus-agent.so. The design and its invariant:
 * tracked_pages.c.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include "polus/agent_abi.h"
#include "polus/patch.h"
#include "raw_syscall.h"
#include "store_emulation.h"
#include "sync.h"
#include "sync_state.h"
#include "tracked_pages.h"

#define POLUS_EXPORT __attribute__((visibility("default")))

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
        /* A fault re-executes and kills the process with the same SIGSEGV as without us;
         * a trap (already past) or a sent signal is raised again. */
        if (sig == SIGSEGV && kernel_generated) return;
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
    int tid = sys_gettid();
    greg_t *gr = uc->uc_mcontext.gregs;
    uint64_t addr = (uint64_t)(uintptr_t)si->si_addr;
    if (si->si_code == SEGV_ACCERR && ((uint64_t)gr[REG_ERR] & 2)) {
        __atomic_fetch_add(&G.write_fault_entries, 1, __ATOMIC_RELAXED); /* before the lock: see sync_end */
        lock_acquire(tid, sys_getpid(), 0);
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
        chain(SIGTRAP, si, uc, &G.prev_trap, tid);
    }
    errno = saved_errno;
}

static int install_handler(int sig, void (*fn)(int, siginfo_t *, void *), struct sigaction *prev) {
    struct sigaction cur;
    if (sigaction(sig, NULL, &cur) != 0) return -errno;
    if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == fn) return 0; /* still ours */
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
    *prev = cur;
    if (sigaction(sig, &sa, NULL) != 0) return -errno;
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

/* ---- entry points --------------------------------------------------------------------- */

static int enter(int *tid) {
    *tid = sys_gettid();
    int rc = lock_acquire(*tid, sys_getpid(), 1);
    if (rc) return rc;
    if (G.lock_depth > 1) { /* from a sync function, or a thread stopped mid-step */
        lock_release();
        return -EDEADLK;
    }
    return 0;
}

static int overlaps_agent_state(uint64_t a, uint64_t size) {
    uint64_t lo = PAGE_OF(a), hi = PAGE_OF(a + size - 1) + PAGE;
    uint64_t g_lo = PAGE_OF((uintptr_t)&G), g_hi = PAGE_OF((uintptr_t)&G + sizeof G - 1) + PAGE;
    uint64_t r_lo = PAGE_OF((uintptr_t)&REG), r_hi = PAGE_OF((uintptr_t)&REG + sizeof REG - 1) + PAGE;
    return (lo < g_hi && g_lo < hi) || (lo < r_hi && r_lo < hi) || emu_state_overlaps(lo, hi);
}

static int validate_item(const struct polus_tracked_item *it, uint32_t i, uint32_t n) {
    if (!it->address || !it->size || it->size > (1ull << 40) || it->address + it->size < it->address) return -EINVAL;
    if (it->side != POLUS_OLD && it->side != POLUS_NEW) return -EINVAL;
    if (it->counterpart != NO_ITEM && (it->counterpart >= n || it->counterpart == i)) return -EINVAL;
    if (overlaps_agent_state(it->address, it->size)) return -EINVAL;
    return 0;
}

POLUS_EXPORT uint64_t polus_agent_sync_reserve(uint32_t capacity) {
    int tid;
    if (enter(&tid) != 0) return 0;
    uint64_t result = 0;
    if (capacity > REG.sync.item_capacity) {
        uint64_t old_bytes = ((uint64_t)REG.sync.item_capacity * sizeof(struct polus_tracked_item) + PAGE - 1) & ~(PAGE - 1);
        uint64_t new_bytes = ((uint64_t)capacity * sizeof(struct polus_tracked_item) + PAGE - 1) & ~(PAGE - 1);
        void *m = REG.sync.items ? sys_mremap(items(), old_bytes, new_bytes) : sys_mmap(new_bytes);
        if (!m || ensure_aux(capacity) < 0) goto out;
        REG.sync.items = (uint64_t)(uintptr_t)m;
        REG.sync.item_capacity = (uint32_t)(new_bytes / sizeof(struct polus_tracked_item));
    } else if (ensure_aux(REG.sync.item_capacity) < 0) {
        goto out;
    }
    /* Open /proc/self/mem and map the out-of-line page now, while the target runs, so
     * sync_begin (called with every thread stopped) has less to do. */
    (void)mem_fd();
    (void)xol_ensure();
    result = REG.sync.items;
out:
    lock_release();
    return result;
}

POLUS_EXPORT int polus_agent_sync_begin(void) {
    int tid, rc = enter(&tid);
    if (rc) return rc;
    int installed_segv = 0, installed_trap = 0;
    uint32_t n = REG.sync.item_count;
    if (G.active) { rc = -EBUSY; goto out; }
    if (n > REG.sync.item_capacity || (n && !REG.sync.items)) { rc = -EINVAL; goto out; }
    for (uint32_t i = 0; i < n; i++)
        if ((rc = validate_item(&items()[i], i, n)) != 0) goto out;
    if ((rc = ensure_aux(REG.sync.item_capacity > n ? REG.sync.item_capacity : n)) != 0) goto out;
    G.stats.emulation = (mem_fd() >= 0 && xol_ensure() == 0) ? 1 : 0;
    table_free();
    G.count = n;
    if ((rc = build_table(n)) != 0) goto fail;
    shadows_free();
    for (uint32_t i = 0; i < n; i++) {
        void *s = shadow_alloc(items()[i].size);
        if (!s) { rc = -ENOMEM; goto fail; }
        items()[i].shadow = (uint64_t)(uintptr_t)s;
        G.item_flags[i] = 0;
    }
    G.work_count = 0;
    if ((rc = install_handler(SIGSEGV, on_segv, &G.prev_segv)) != 0) goto fail;
    installed_segv = 1;
    if ((rc = install_handler(SIGTRAP, on_trap, &G.prev_trap)) != 0) goto fail;
    installed_trap = 1;
    /* Protect, then snapshot: every write that completed before the protection is in the
     * snapshot, every later one faults (and waits for this lock). */
    if ((rc = protect_pages(1, 0)) != 0) goto fail;
    for (uint32_t i = 0; i < n; i++) {
        struct polus_tracked_item *it = &items()[i];
        memcpy((void *)(uintptr_t)it->shadow, (const void *)(uintptr_t)it->address, it->size);
        it->sync_calls = 0;
    }
    for (uint32_t k = 0; k < G.page_count; k++) G.pages[k].fresh = 0;
    REG.sync.faults = REG.sync.false_sharing = 0;
    __atomic_store_n(&REG.sync.chained_faults, 0, __ATOMIC_RELAXED);
    G.active = 1;
    REG.sync.active = 1;
    rc = 0;
    goto out;
fail:
    if (G.pages) protect_pages(0, 0);
    if (installed_trap) restore_handler(SIGTRAP, on_trap, &G.prev_trap);
    if (installed_segv) restore_handler(SIGSEGV, on_segv, &G.prev_segv);
    shadows_free();
    for (uint32_t i = 0; i < n && REG.sync.items; i++) items()[i].shadow = 0;
    table_free();
    G.count = 0;
out:
    lock_release();
    return rc;
}

POLUS_EXPORT int polus_agent_sync_initialize(uint32_t from_side) {
    int tid, rc = enter(&tid);
    if (rc) return rc;
    if (!G.active) { rc = -EINVAL; goto out; }
    int ran = 0;
    for (uint32_t i = 0; i < G.count; i++) {
        struct polus_tracked_item *it = &items()[i];
        if (it->side != from_side || !it->post_sync || it->counterpart == NO_ITEM) continue;
        run_sync((polus_sync_fn)(uintptr_t)it->post_sync, i, 0, 1, tid);
        ran++;
    }
    drain(1, tid);
    rc = ran;
out:
    lock_release();
    return rc;
}

POLUS_EXPORT int polus_agent_sync_end(void) {
    int tid, rc = enter(&tid);
    if (rc) return rc;
    if (!G.active) { rc = 0; goto out; }
    G.active = 0;
    REG.sync.active = 0;
    protect_pages(0, 0);
    /* Threads that faulted just before this and wait for the lock find sync inactive and
     * retry their write, which now succeeds. Faults still on their way must reach our
     * handler too: the previous disposition comes back only after a quiet period (see
     * sigsegv_pending_somewhere); otherwise ours stays, as a pass-through. */
    int restored = 0;
    if (!(G.config & POLUS_SYNC_KEEP_HANDLERS)) {
        uint64_t seen = __atomic_load_n(&G.write_fault_entries, __ATOMIC_RELAXED);
        int quiet_ms = 0;
        for (int waited_ms = 0; waited_ms < 2000; waited_ms++) {
            struct timespec ms = {0, 1000 * 1000};
            RAW(SYS_nanosleep, &ms, NULL, 0);
            uint64_t now = __atomic_load_n(&G.write_fault_entries, __ATOMIC_RELAXED);
            if (now != seen || sigsegv_pending_somewhere()) {
                seen = now;
                quiet_ms = 0;
                continue;
            }
            if (++quiet_ms >= QUIET_MS) {
                restored = restore_handler(SIGSEGV, on_segv, &G.prev_segv);
                restored &= restore_handler(SIGTRAP, on_trap, &G.prev_trap);
                break;
            }
        }
    }
    shadows_free();
    for (uint32_t i = 0; i < G.count; i++) items()[i].shadow = 0;
    table_free();
    G.count = 0;
    G.work_count = 0;
    rc = restored ? 0 : 1;
out:
    lock_release();
    return rc;
}

POLUS_EXPORT int polus_agent_sync_clear(void) {
    int tid, rc = enter(&tid);
    if (rc) return rc;
    if (G.active) { rc = -EBUSY; goto out; }
    REG.sync.item_count = 0;
    REG.sync.faults = REG.sync.false_sharing = 0;
    __atomic_store_n(&REG.sync.chained_faults, 0, __ATOMIC_RELAXED);
    memset(&G.stats, 0, sizeof G.stats);
    emu_clear_stats();
out:
    lock_release();
    return rc;
}

POLUS_EXPORT int polus_register_heap_data(void *old_item, void *new_item, uint64_t size_old, uint64_t size_new,
                                          polus_sync_fn old_post_sync, polus_sync_fn new_post_sync) {
    if (!old_item || !new_item || !size_old || !size_new) return -EINVAL;
    int tid = sys_gettid();
    int rc = lock_acquire(tid, sys_getpid(), 1);
    if (rc) return rc;
    /* Allowed from a sync function (lock re-entered by its owner), not mid-step. */
    int from_sync = G.lock_depth > 1 && G.in_sync;
    if (G.lock_depth > 1 && (!from_sync || G.step.active)) { rc = -EDEADLK; goto out; }
    uint32_t n = REG.sync.item_count;
    if (overlaps_agent_state((uint64_t)(uintptr_t)old_item, size_old) ||
        overlaps_agent_state((uint64_t)(uintptr_t)new_item, size_new)) { rc = -EINVAL; goto out; }
    if (n + 2 > REG.sync.item_capacity) {
        uint32_t cap = REG.sync.item_capacity ? REG.sync.item_capacity * 2 : 64;
        while (cap < n + 2) cap *= 2;
        uint64_t old_bytes = ((uint64_t)REG.sync.item_capacity * sizeof(struct polus_tracked_item) + PAGE - 1) & ~(PAGE - 1);
        uint64_t new_bytes = ((uint64_t)cap * sizeof(struct polus_tracked_item) + PAGE - 1) & ~(PAGE - 1);
        void *m = REG.sync.items ? sys_mremap(items(), old_bytes, new_bytes) : sys_mmap(new_bytes);
        if (!m) { rc = -ENOMEM; goto out; }
        REG.sync.items = (uint64_t)(uintptr_t)m;
        REG.sync.item_capacity = (uint32_t)(new_bytes / sizeof(struct polus_tracked_item));
    }
    if ((rc = ensure_aux(REG.sync.item_capacity)) != 0) goto out;
    struct polus_tracked_item *it = items();
    it[n] = (struct polus_tracked_item){(uint64_t)(uintptr_t)old_item, size_old, (uint64_t)(uintptr_t)old_post_sync, 0,
                                        n + 1, POLUS_OLD, 0, 0};
    it[n + 1] = (struct polus_tracked_item){(uint64_t)(uintptr_t)new_item, size_new, (uint64_t)(uintptr_t)new_post_sync,
                                            0, n, POLUS_NEW, 0, 0};
    G.item_flags[n] = G.item_flags[n + 1] = 0;
    if (!G.active) {
        REG.sync.item_count = n + 2;
        goto out;
    }
    void *s0 = shadow_alloc(size_old), *s1 = shadow_alloc(size_new);
    if (!s0 || !s1) { rc = -ENOMEM; goto out; }
    it[n].shadow = (uint64_t)(uintptr_t)s0;
    it[n + 1].shadow = (uint64_t)(uintptr_t)s1;
    if ((rc = build_table(n + 2)) != 0) goto out;
    if ((rc = protect_pages(1, 1)) != 0) {
        protect_pages(0, 1);
        build_table(n); /* forget the pair */
        goto out;
    }
    for (uint32_t k = 0; k < G.page_count; k++) G.pages[k].fresh = 0;
    memcpy(s0, old_item, size_old);
    memcpy(s1, new_item, size_new);
    G.count = n + 2;
    REG.sync.item_count = n + 2;
    /* Writes to old_item between the caller's conversion and the protection above did not
     * fault: bring new_item up to date once (a sync function calling us made it so). */
    if (!from_sync && old_post_sync) {
        run_sync(old_post_sync, n, 0, 1, tid);
        drain(1, tid);
    }
out:
    lock_release();
    return rc;
}

POLUS_EXPORT void polus_agent_sync_get_stats(struct polus_sync_stats *out) {
    if (!out) return;
    *out = G.stats;
    struct emu_stats emu;
    emu_get_stats(&emu);
    out->emulated = emu.emulated;
    out->xol_slots_built = emu.xol_slots_built;
    out->emulation = xol_ready() && !(G.config & POLUS_SYNC_FORCE_SINGLE_STEP) ? 1 : 0;
}

POLUS_EXPORT void polus_agent_sync_configure(uint32_t flags) { G.config = flags; }
