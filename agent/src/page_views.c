/*
 * page_views.c — a second, writable view of every tracked page, inside libpolus-agent.so.
 *
 * WHY. A tracked page is never writable at its address while tracking is on (tracked_pages.c,
 * MECHANISM): every store to it faults, and the handler carries the store out on the
 * application's behalf. Through /proc/self/mem (pwrite) that costs a system call per store,
 * and a sync function's own store to its (equally protected) counterpart faulted once more.
 * With a second mapping of the same physical page that is writable, the handler's store is a
 * plain store, and sync functions get their counterpart through it (polus_sync_args.
 * counterpart): one fault per tracked write, no system call on the path.
 *
 * HOW. For each run of adjacent tracked pages with the same protection, privately mapped:
 *   1. the pages are already read-only (closed) and we hold the sync lock: every store to them
 *      faults and waits for us, so their contents cannot change under the copy;
 *   2. a memfd of the run's size gets a copy of the pages' bytes, through a MAP_SHARED
 *      read-write mapping of it elsewhere — the view, marked MADV_DONTFORK (FORK);
 *   3. the memfd is mapped once more, MAP_SHARED with the closed protection, at a free address,
 *      and mremap(MREMAP_FIXED) moves that mapping over the original pages. mremap replaces the
 *      old mapping in one step under the mmap lock: a thread reading the pages meanwhile sees
 *      the old bytes or the new ones, which are the same; never an unmapped hole or zeroes;
 *   4. the memfd descriptor is closed (the mappings keep the file): no descriptor stays.
 * Both mappings name the same page-cache pages, so a store through the view is what a read at
 * the original address sees, at once (x86 caches are physically tagged).
 * Ending tracking (views_remove) does the reverse: a private anonymous copy, made read-only,
 * moved over the run with mremap (again atomic), the view unmapped; the caller then gives the
 * pages their original protection. The pages end as ordinary private memory with the same bytes.
 *
 * NOT VIEWED (the /proc/self/mem path stays): pages of a MAP_SHARED mapping (replacing it
 * would cut the sharing with other processes), pages without PROT_READ, and runs whose
 * memfd_create/mmap/mremap fails (a seccomp filter refusing memfd_create, for instance).
 *
 * FORK. A MAP_SHARED page stays shared with a child after fork(2): the parent's stores through
 * its view would show in the child's memory, and the child's in the parent's. So:
 *   - the view is MADV_DONTFORK: a child never has the parent's writable mapping;
 *   - pthread_atfork: `prepare` takes the sync lock (no store through a view can happen in the
 *     parent from then on: every writer faults and waits), `parent` moves the parent's runs
 *     onto new memfds (views_rehome: copy, new view, mremap over, old view unmapped) before it
 *     releases the lock, and `child` does the same in the child (no old view to unmap there).
 *     After that the old memfd is mapped by the child alone, and only until its own rehome;
 *     nobody wrote it since the clone, so each side keeps exactly the bytes of the fork instant.
 *   - a child whose own earlier-registered fork handlers write tracked data before ours runs
 *     finds the lock held by its parent's thread (sync_state.c) and rehomes there first.
 * A child made by a raw clone(2) without CLONE_VM (not fork, not posix_spawn) skips the
 * handlers: it would share the parent's pages; not supported while an update syncs.
 *
 * LIMITS. A process-shared futex (PTHREAD_PROCESS_SHARED) on a viewed page: a waiter queued
 * before the switch is keyed by address, a waker after it by the memfd's inode: not woken.
 * glibc's default (process-private) futexes are keyed by address either way.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include "page_views.h"
#include "raw_syscall.h"
#include "sync_state.h"

#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 1u
#endif

/* A run [j, k) of the page table that may share one memfd. */
static int viewable(const struct page_info *p) {
    return p->tracked && !p->shared && (p->prot & PROT_READ);
}

static uint32_t run_end(uint32_t j, int (*member)(const struct page_info *, const struct page_info *)) {
    uint32_t k = j + 1;
    while (k < G.page_count && G.pages[k].addr == G.pages[k - 1].addr + PAGE && member(&G.pages[j], &G.pages[k])) k++;
    return k;
}

/* Puts a new memfd, holding the bytes now at `addr`, under [addr, addr+len) (closed
 * protection `prot`); returns its view, or NULL (nothing changed). */
static uint8_t *home_run(uint64_t addr, uint64_t len, int prot) {
    long fd = RAW(SYS_memfd_create, "polus-view", MFD_CLOEXEC, 0);
    if (fd < 0) return NULL;
    uint8_t *view = NULL, *tmp = NULL;
    if (RAW(SYS_ftruncate, fd, len, 0) != 0) goto fail;
    view = sys_mmap_full(0, len, PROT_READ | PROT_WRITE, MAP_SHARED, (int)fd, 0);
    if (!view) goto fail;
    /* The child of a fork must never hold our writable mapping (FORK above). */
    if (RAW(SYS_madvise, view, len, MADV_DONTFORK) != 0) goto fail;
    memcpy(view, (const void *)(uintptr_t)addr, len);
    tmp = sys_mmap_full(0, len, prot, MAP_SHARED, (int)fd, 0);
    if (!tmp) goto fail;
    if (sys_mremap_fixed(tmp, len, addr) != 0) goto fail;
    RAW(SYS_close, fd, 0, 0);
    return view;
fail:
    if (tmp) sys_munmap(tmp, len);
    if (view) sys_munmap(view, len);
    RAW(SYS_close, fd, 0, 0);
    return NULL;
}

static int same_create_run(const struct page_info *a, const struct page_info *b) {
    return viewable(b) && !b->view && b->prot == a->prot && b->fresh == a->fresh;
}

uint32_t views_create(int fresh_only) {
    uint32_t made = 0;
    for (uint32_t j = 0; j < G.page_count;) {
        struct page_info *p = &G.pages[j];
        if (!viewable(p) || p->view || (fresh_only && !p->fresh)) { j++; continue; }
        uint32_t k = run_end(j, same_create_run);
        uint8_t *view = home_run(p->addr, (uint64_t)(k - j) * PAGE, closed_prot(p));
        if (view) {
            for (uint32_t m = j; m < k; m++) G.pages[m].view = view + (uint64_t)(m - j) * PAGE;
            made++;
        }
        j = k;
    }
    __atomic_fetch_add(&G.view_runs, made, __ATOMIC_RELEASE);
    if (made) G.views_pid = sys_getpid();
    return made;
}

static int same_stage_run(const struct page_info *a, const struct page_info *b) {
    return viewable(b) && !b->view && !b->staged_view && b->prot == a->prot;
}

/* Step 2 and the mapping of step 3 ahead of time (sync_prepare, while the target runs): the
 * memfd, its view and its read-only mapping; the copy and the move happen in views_commit. */
void views_stage(void) {
    for (uint32_t j = 0; j < G.page_count;) {
        struct page_info *p = &G.pages[j];
        if (!viewable(p) || p->view || p->staged_view) { j++; continue; }
        uint32_t k = run_end(j, same_stage_run);
        uint64_t len = (uint64_t)(k - j) * PAGE;
        long fd = RAW(SYS_memfd_create, "polus-view", MFD_CLOEXEC, 0);
        uint8_t *view = NULL, *map = NULL;
        if (fd >= 0) {
            if (RAW(SYS_ftruncate, fd, len, 0) == 0) view = sys_mmap_full(0, len, PROT_READ | PROT_WRITE, MAP_SHARED, (int)fd, 0);
            if (view && RAW(SYS_madvise, view, len, MADV_DONTFORK) == 0) map = sys_mmap_full(0, len, closed_prot(p), MAP_SHARED, (int)fd, 0);
            if (!map && view) { sys_munmap(view, len); view = NULL; }
            RAW(SYS_close, fd, 0, 0);
        }
        for (uint32_t m = j; view && m < k; m++) {
            G.pages[m].staged_view = view + (uint64_t)(m - j) * PAGE;
            G.pages[m].staged_map = map + (uint64_t)(m - j) * PAGE;
        }
        j = k;
    }
}

static int same_staged_run(const struct page_info *a, const struct page_info *b) {
    (void)a;
    return b->staged_view && b->staged_view == (b - 1)->staged_view + PAGE;
}

void views_discard_staged(void) {
    for (uint32_t j = 0; j < G.page_count;) {
        struct page_info *p = &G.pages[j];
        if (!p->staged_view) { j++; continue; }
        uint32_t k = run_end(j, same_staged_run);
        uint64_t len = (uint64_t)(k - j) * PAGE;
        sys_munmap(p->staged_view, len);
        sys_munmap(p->staged_map, len);
        for (uint32_t m = j; m < k; m++) G.pages[m].staged_view = G.pages[m].staged_map = NULL;
        j = k;
    }
}

uint32_t views_commit(void) {
    uint32_t made = 0;
    for (uint32_t j = 0; j < G.page_count;) {
        struct page_info *p = &G.pages[j];
        if (!p->staged_view) { j++; continue; }
        uint32_t k = run_end(j, same_staged_run);
        uint64_t len = (uint64_t)(k - j) * PAGE;
        uint8_t *view = p->staged_view, *map = p->staged_map;
        memcpy(view, (const void *)(uintptr_t)p->addr, len); /* closed, and we hold the lock */
        int moved = sys_mremap_fixed(map, len, p->addr) == 0;
        if (!moved) {
            sys_munmap(map, len);
            sys_munmap(view, len);
        }
        for (uint32_t m = j; m < k; m++) {
            G.pages[m].view = moved ? view + (uint64_t)(m - j) * PAGE : NULL;
            G.pages[m].staged_view = G.pages[m].staged_map = NULL;
        }
        made += (uint32_t)moved;
        j = k;
    }
    __atomic_fetch_add(&G.view_runs, made, __ATOMIC_RELEASE);
    if (made) G.views_pid = G.my_pid; /* set by sync_prepare: no system call here, in the pause */
    return made + views_create(0); /* runs that were not staged (none, normally) */
}

static int same_view_run(const struct page_info *a, const struct page_info *b) {
    (void)a;
    return b->view && b->view == (b - 1)->view + PAGE;
}

void views_remove(void) {
    for (uint32_t j = 0; j < G.page_count;) {
        struct page_info *p = &G.pages[j];
        if (!p->view) { j++; continue; }
        uint32_t k = run_end(j, same_view_run);
        uint64_t len = (uint64_t)(k - j) * PAGE;
        uint8_t *copy = sys_mmap(len);
        int moved = 0;
        if (copy) {
            memcpy(copy, (const void *)(uintptr_t)p->addr, len);
            if (sys_mprotect((uint64_t)(uintptr_t)copy, len, closed_prot(p)) == 0 &&
                sys_mremap_fixed(copy, len, p->addr) == 0)
                moved = 1;
            else
                sys_munmap(copy, len);
        }
        /* If that failed (out of memory), the pages stay on the memfd: the same bytes, shared
         * with nobody once the view is gone; only a later fork would share them. */
        if (G.views_pid == sys_getpid()) sys_munmap(p->view, len);
        (void)moved;
        for (uint32_t m = j; m < k; m++) G.pages[m].view = NULL;
        j = k;
    }
    __atomic_store_n(&G.view_runs, 0, __ATOMIC_RELEASE);
}

/* Moves every viewed run onto a new memfd with the same bytes (FORK). unmap_old: the old views
 * are ours (the parent); a child never had them. A run that cannot move loses its view (its
 * stores go through /proc/self/mem). */
static void views_rehome(int unmap_old) {
    uint32_t runs = 0;
    for (uint32_t j = 0; j < G.page_count;) {
        struct page_info *p = &G.pages[j];
        if (!p->view) { j++; continue; }
        uint32_t k = run_end(j, same_view_run);
        uint64_t len = (uint64_t)(k - j) * PAGE;
        uint8_t *old = p->view;
        uint8_t *view = home_run(p->addr, len, closed_prot(p));
        if (unmap_old) sys_munmap(old, len);
        for (uint32_t m = j; m < k; m++) G.pages[m].view = view ? view + (uint64_t)(m - j) * PAGE : NULL;
        runs += view != NULL;
        j = k;
    }
    __atomic_store_n(&G.view_runs, runs, __ATOMIC_RELEASE);
    G.views_pid = sys_getpid();
}

void views_fork_child(void) {
    int pid = sys_getpid();
    G.my_pid = pid;
    if (G.views_pid && G.views_pid != pid) views_rehome(0);
}

/* ---- the fork handlers --------------------------------------------------------------- */

static void fork_prepare(void) {
    /* No view: nothing to keep apart (a view made between this check and the clone would
     * need a commit pause to stop this thread inside fork(), which the injector avoids). */
    if (!__atomic_load_n(&G.view_runs, __ATOMIC_ACQUIRE)) return;
    int tid = fast_tid();
    lock_acquire(tid, G.my_pid, 0);
    G.fork_locked = 1;
}

static void fork_parent(void) {
    if (!G.fork_locked) return;
    G.fork_locked = 0;
    views_rehome(1);
    lock_release();
}

static void fork_child(void) {
    /* One thread here, ours. The lock, if the parent's prepare took it, names the parent's
     * forking thread: this thread is it, under a new tid. */
    int locked = G.fork_locked;
    G.fork_locked = 0;
    if (G.on_fork_child) G.on_fork_child(); /* the views, and the fast path's lanes (fast_path.c) */
    else views_fork_child();
    if (locked) {
        G.lock_owner = 0;
        G.lock_depth = 0;
        __atomic_store_n(&G.lock_word, 0, __ATOMIC_RELEASE);
    }
}

void views_register_fork_handlers(void) {
    if (G.atfork_registered) return;
    if (!G.on_fork_child) G.on_fork_child = views_fork_child;
    if (pthread_atfork(fork_prepare, fork_parent, fork_child) == 0) G.atfork_registered = 1;
}

/* ---- /proc/self/mem ------------------------------------------------------------------ */

/* The size of the descriptor table now (FDSize in /proc/self/status); 64 if unknown. */
static long fd_table_size(void) {
    long fd = raw6(SYS_openat, AT_FDCWD, (long)"/proc/self/status", O_RDONLY | O_CLOEXEC, 0, 0, 0);
    if (fd < 0) return 64;
    char buf[768]; /* FDSize is in the first few hundred bytes; this may run in a signal handler
                    * on a small alternate stack (see read_protections) */
    long got = RAW(SYS_read, fd, buf, sizeof buf - 1);
    RAW(SYS_close, fd, 0, 0);
    if (got <= 0) return 64;
    buf[got] = 0;
    static const char key[] = "\nFDSize:";
    for (long i = 0; i + (long)sizeof key - 1 < got; ++i) {
        if (memcmp(buf + i, key, sizeof key - 1) != 0) continue;
        long size = 0;
        for (const char *c = buf + i + sizeof key - 1; *c == ' ' || *c == '\t' || (*c >= '0' && *c <= '9'); ++c) {
            if (*c >= '0' && *c <= '9') size = size * 10 + (*c - '0');
        }
        return size >= 64 ? size : 64;
    }
    return 64;
}

/* A high descriptor number that is free and inside the table as it is, or -1. Asking for a
 * number beyond the table (F_DUPFD 600, as we once did) makes the kernel grow it, and growing
 * a table shared by several threads waits for an RCU grace period (fs/file.c, expand_fdtable:
 * synchronize_rcu) — seconds on a busy virtual machine, while Polus waited for the agent. */
static long high_free_descriptor(void) {
    long size = fd_table_size();
    for (long k = size - 1, tries = 0; k >= 3 && tries < 64; --k, ++tries) {
        if (RAW(SYS_fcntl, k, F_GETFD, 0) == -EBADF) return k;
    }
    return -1;
}

int mem_fd(void) {
    int pid = sys_getpid(); /* not a cached one: a fork child must never write its parent */
    struct stat st;
    if (G.mem_fd >= 0) {
        if (G.mem_pid == pid && RAW(SYS_fstat, G.mem_fd, &st, 0) == 0 && (uint64_t)st.st_dev == G.mem_dev &&
            (uint64_t)st.st_ino == G.mem_ino)
            return G.mem_fd;
        /* A fork child (the inherited fd writes the parent's memory), or the application
         * closed our descriptor and the number now means something else: never use it. */
        if (G.mem_pid != pid) RAW(SYS_close, G.mem_fd, 0, 0);
        G.mem_fd = -1;
    }
    long fd = raw6(SYS_openat, AT_FDCWD, (long)"/proc/self/mem", O_RDWR | O_CLOEXEC, 0, 0, 0);
    if (fd < 0) return (int)fd;
    /* Out of the way of applications that assume low descriptor numbers. */
    long high = high_free_descriptor();
    if (high > fd) high = RAW(SYS_fcntl, fd, F_DUPFD_CLOEXEC, high);
    if (high > fd) {
        RAW(SYS_close, fd, 0, 0);
        fd = high;
    }
    if (RAW(SYS_fstat, fd, &st, 0) != 0) {
        RAW(SYS_close, fd, 0, 0);
        return -EIO;
    }
    G.mem_fd = (int)fd;
    G.mem_pid = pid;
    G.mem_dev = (uint64_t)st.st_dev;
    G.mem_ino = (uint64_t)st.st_ino;
    return G.mem_fd;
}

/* Writes bytes to tracked pages without making them writable. */
int poke(uint64_t addr, const void *src, uint64_t n) {
    int fd = mem_fd();
    if (fd < 0) return -1;
    return sys_pwrite(fd, src, n, addr) == (long)n ? 0 : -1;
}

/* For store_emulation.c: emulation is not switched off, and stores can be poked. */
int may_emulate(void) { return !(G.config & POLUS_SYNC_FORCE_SINGLE_STEP); }

/* ---- stores ------------------------------------------------------------------------- */

uint8_t *view_of(uint64_t addr, uint64_t n) {
    int32_t k = find_page(addr);
    if (k < 0 || !G.pages[k].view) return NULL;
    uint8_t *v = G.pages[k].view + (addr & (PAGE - 1));
    uint64_t last = PAGE_OF(addr + n - 1);
    for (uint64_t p = PAGE_OF(addr) + PAGE; p <= last; p += PAGE) {
        k++;
        if ((uint32_t)k >= G.page_count || G.pages[k].addr != p || G.pages[k].view != G.pages[k - 1].view + PAGE)
            return NULL;
    }
    return v;
}

int store_bytes(uint64_t addr, const void *src, uint64_t n) {
    uint8_t *v = view_of(addr, n);
    if (v) {
        /* One store of the natural width when it fits, as the application's own would be. */
        if (n == 8 && !((uintptr_t)v & 7)) { uint64_t x; memcpy(&x, src, 8); *(volatile uint64_t *)(void *)v = x; }
        else if (n == 4 && !((uintptr_t)v & 3)) { uint32_t x; memcpy(&x, src, 4); *(volatile uint32_t *)(void *)v = x; }
        else if (n == 2 && !((uintptr_t)v & 1)) { uint16_t x; memcpy(&x, src, 2); *(volatile uint16_t *)(void *)v = x; }
        else memcpy(v, src, n);
        return 0;
    }
    /* Pages without a view, or a range over several runs: page by page. */
    const uint8_t *s = src;
    while (n) {
        uint64_t chunk = PAGE - (addr & (PAGE - 1));
        if (chunk > n) chunk = n;
        uint8_t *pv = view_of(addr, chunk);
        if (pv) memcpy(pv, s, chunk);
        else if (poke(addr, s, chunk) != 0) return -1;
        addr += chunk;
        s += chunk;
        n -= chunk;
    }
    return 0;
}
