/*
 * tracked_pages.c — the tracked pages and the shadows of the bidirectional write-through
 * between the old and the new version of changed data (POLUS §2.2, §2.3, §3.1.5, §4.1.2),
 * inside libpolus-agent.so; and the design of that write-through, whose invariant this
 * file's data (protections, shadows, the work list) carries.
 *
 * ======================================================================================
 * FILES (each uses only those listed below it: calls go one way)
 *   sync_api.c         the exported entry points (sync.h)
 *   fault_handlers.c   the SIGSEGV/SIGTRAP handlers (steps 1-4 below), the single-step
 *                      fallback, CHAINING, END
 *   fast_path.c        tracked writes without the sync lock: per-pair locks, per-thread
 *                      lanes (LOCKS below)
 *   store_emulation.c  the out-of-line execution of MECHANISM
 *   tracked_pages.c    the page table, protections, shadows, change detection, the work
 *                      list, running sync functions (fenced)
 *   page_views.c       how stores reach tracked pages: each page's writable view (a memfd
 *                      mapped twice), or /proc/self/mem; fork
 *   sync_fence.c       the fence around sync functions: a fault in one is unwound, recorded
 *                      and never reaches the target (see sync_fence.h)
 *   sync_state.c       the state they share (G, one struct) and the sync LOCK
 *
 * WHAT IT DOES
 *
 * registry.sync.items lists tracked items (globals, heap objects); each names its
 * counterpart on the other side and a post_sync (optionally a pre_sync) function. While
 * sync is active every page holding a tracked item is read-only (original protection minus
 * PROT_WRITE), so every write to a tracked page raises SIGSEGV (SEGV_ACCERR, write bit in
 * the page-fault error code). The handler, under the locks of the items written (LOCKS):
 *   1. runs the pre_sync of the item(s) about to be written;
 *   2. carries out the write WITHOUT making the page writable (see MECHANISM);
 *   3. compares the written bytes with the item's shadow (its last synced image): if they
 *      changed, runs the item's post_sync, which brings the counterpart up to date; if no
 *      tracked item changed, the fault was false sharing (counted, no sync call);
 *   4. returns; the thread continues after the write, the counterpart already updated.
 *
 * MECHANISM: out-of-line execution ("emulation"), single-step as the fallback
 *
 * The classic way (and the paper's) is: make the page writable, let the instruction run
 * with the trap flag, re-protect at the SIGTRAP. We do NOT do that for ordinary stores,
 * for two reasons found while building this:
 *
 *  a) Correctness. mprotect is process-wide: while the page is open for thread A's one
 *     instruction, thread B can write any other tracked item on that page without faulting.
 *     The close-time shadow comparison does catch B's write and syncs it — but late: B may
 *     already have released its mutex, and thread C (other side, same mutex) may have read
 *     the still-stale counterpart and written a value computed from it (a load/add/store
 *     increment). The sync of B's write then overwrites C's, or C's overwrites B's: a lost
 *     update, although no write was ever "missed". The same holds for a counterpart page
 *     opened for a sync function. Fencing the counterparts (PROT_NONE) does not close it,
 *     because the sync function itself must read one side and write the other. The only
 *     airtight rule with page protections is: a tracked page is NEVER writable while
 *     sync is active. Measured (agent_sync_test threads_step: the test of 8 threads with
 *     per-pair mutexes, forced to single-step): ~1% of the increments lost, identically on
 *     both sides, and ~5% of the writes never faulted; with emulation: none, over
 *     ~300 000 writes per run.
 *  b) Cost. A TF trap is a #DB exception; under a hypervisor it is a VM exit: ~24 µs per
 *     trap measured on the CI VM, against ~1.3-1.9 µs for a whole SIGSEGV round trip. And
 *     mprotect in a multithreaded process pays TLB shootdowns: an RO+RW pair costs ~5 µs
 *     alone, ~21 µs with 3 other threads running (same VM). The emulation path makes no
 *     mprotect call at all.
 *
 * So for the instructions compilers emit for stores, the handler executes the faulting
 * instruction out of line, against a scratch buffer, with the thread's registers, and
 * stores the changed bytes with a plain store through the page's writable view: a second
 * mapping of the same physical page, read-write and elsewhere, while the page's own address
 * stays read-only (page_views.c: a memfd mapped at the page and once more, moved over the
 * page with one atomic mremap at sync_begin, back to private anonymous memory with the same
 * bytes at sync_end). Pages that cannot have a view (MAP_SHARED mappings, memfd_create
 * refused) are written with pwrite(/proc/self/mem), which the kernel allows on a read-only
 * private mapping (FOLL_FORCE) without making the page writable for anyone. Which
 * instructions, and how: store_emulation.c. Anything it does not emulate falls back to
 * open-page + single-step, with the window of (a): rare, counted in
 * polus_sync_stats.single_stepped (the one case where a tracked page is writable at its
 * address while tracking).
 *
 * Sync functions get their counterpart through its view (polus_sync_args.counterpart): their
 * stores do not fault, and what they stored is absorbed into the counterpart's shadow after
 * the call (a sync function's writes are never propagated back: no ping-pong). Stores they
 * make by name (paper style) to the protected original fault again, are emulated the same
 * way on the same thread, and are absorbed likewise.
 *
 * INVARIANT (emulation path)
 *   While sync is active and no single-step is in flight, every tracked page is mapped
 *   without PROT_WRITE, and for every tracked item X: either shadow(X) == X, or X is on
 *   the work list of the thread holding the sync lock, which will run X's post_sync
 *   before it releases the lock.
 * Why it holds:
 *   - User-space stores to a page without PROT_WRITE fault; the faulting thread takes the
 *     item's lock (LOCKS) before the store takes effect, and the store is performed only by
 *     the lock holder (through the view), followed, before the lock is released and before the thread
 *     resumes, by the shadow comparison of exactly the bytes written and the post_sync of
 *     every item they changed. So no write to a tracked item becomes visible without its
 *     counterpart being updated before the writer executes its next instruction — in
 *     particular before it can release the application's own lock protecting the item.
 *   - Stores by sync functions are the only other writes; they are made by the lock
 *     holder, are to counterparts (whose shadows absorb them) and happen inside the
 *     writer's critical section (the paper's model: old and new code take the same lock).
 *   - Shadows are only read/written by the lock holder.
 *   - Readers are never blocked. A reader of X' sees it stale only between the write to X
 *     and the end of X's post_sync, i.e. while the writer is still inside its critical
 *     section: a reader that takes the same lock cannot observe it.
 * With a single-step fallback in flight, one page is writable for one instruction of the
 * lock holder; the close-time comparison of every item on that page (after mprotect has
 * returned, i.e. after the TLB shootdown has made every earlier store of every CPU visible
 * and every later one fault) catches other threads' writes, with the lateness described
 * in (a).
 *
 * LOCKS. The common write (one operand, pages with views or /proc/self/mem, no pre_sync)
 * runs on the fast path (fast_path.c): under the locks of the pairs it touches (the page's
 * for bytes no item covers), taken in ascending order and held from before the store until
 * its sync functions are done, on a per-thread lane (work list, sync depth, fence,
 * out-of-line area). Two threads writing different pairs share no lock. Everything else
 * takes the sync LOCK: one process-wide futex lock (0 free, 1 held, 2 held with waiters),
 * recursive for its owner (a sync function's own faults re-enter it), timed for entry
 * points, and EXCLUSIVE: its holder waits until no thread is on the fast path, and no thread
 * enters the fast path while it is held. The INVARIANT's "the thread holding the sync lock"
 * reads, on the fast path, "the thread holding the item's pair lock". The sync lock is
 * held from the fault until the write and its syncs are done (for a single-step: until the
 * SIGTRAP), and so are the pair locks on the fast path. Our handlers block every
 * asynchronous signal (sa_mask; and during a single step, the stepped instruction's
 * uc_sigmask), so no application handler can run on a thread holding one. After fork, a
 * lock inherited from a thread that does not exist in the child is reset (the lock records
 * the holder's pid), the child's lanes are freed and its views made its own (page_views.c,
 * FORK); /proc/self/mem is reopened likewise.
 *
 * CHAINING: a SIGSEGV that is not a write to a page we protected goes to the previous
 * disposition as the kernel would have delivered it (SA_SIGINFO or not, its sa_mask, its
 * SA_NODEFER and SA_RESETHAND); SIG_DFL/SIG_IGN: SIG_DFL is restored and the faulting
 * instruction re-executes, so the process dies of that SIGSEGV exactly as without us.
 * A write fault at an address we do not (or no longer) track is retried once first: a
 * thread that faulted just before sync_end made the page writable again would otherwise
 * be handed to the application's handler for a fault that is gone.
 *
 * END: sync_end makes the pages writable at once, but puts the previous dispositions back
 * only after a quiet period (no SIGSEGV pending, no write fault entering our handler, for
 * 50 ms): a fault raised while the pages were read-only can reach a handler later (kernel
 * queueing after the VMA lock is dropped; a tracer re-injecting a signal it held). Without
 * it, the fig2 counter under the injector died ~5% of the time (its own handler re-arms
 * SIG_DFL on a fault it does not recognise). See sigsegv_pending_somewhere
 * (fault_handlers.c).
 *
 * LIMITATIONS (documented for the injector / patch authors)
 *   - Sync functions run inside a signal handler on the writing thread, with the sync lock
 *     held: they must be async-signal-safe (no malloc, no application locks).
 *   - System calls writing into tracked pages (read(2) into a tracked buffer) fail with
 *     EFAULT while sync is active: the kernel honours the protection.
 *   - Bytes stored on the application's behalf by the agent are copied by the kernel: a
 *     lock-free reader racing with a tracked write could see a multi-byte value torn.
 *     Data protected by locks (the paper's model) are unaffected.
 *   - A sync function that faults for real (a bug) while we hold the lock is unwound to its
 *     fence (sync_fence.h): recorded, disabled, its counterpart put back; the update is then
 *     the injector's to abandon. One that loops for ever or calls abort() is not caught.
 *   - Under ptrace, the SIGSEGV/SIGTRAP of every tracked write is a signal-delivery-stop:
 *     the tracer must pass them on. A thread stopped inside our handler holds the sync
 *     lock: entry points called on it return -EDEADLK, on another thread they wait ~2 s
 *     and return -ETIMEDOUT. Entry points never fault on the calling thread themselves
 *     (polus_agent_sync_initialize and register_heap_data open the counterpart's pages
 *     around the sync function instead), provided sync functions write only their
 *     counterparts' pages.
 *   - Instructions the agent does not emulate are single-stepped with the window of (a);
 *     stores through a MAP_SHARED mapping too (/proc/self/mem cannot write them). On the
 *     fast path a sync function cannot wait for the sync lock: such a store made by a sync
 *     function is unwound as that function's fault (fast_path.c).
 *   - Viewed pages are MAP_SHARED memfd pages while tracking: a process-shared futex on
 *     one, or a child made by a raw clone(2) without CLONE_VM, is not supported
 *     (page_views.c, FORK and LIMITS).
 * ======================================================================================
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include "polus/agent_abi.h"
#include "polus/patch.h"
#include "page_views.h"
#include "raw_syscall.h"
#include "sync.h"
#include "sync_fence.h"
#include "sync_state.h"
#include "tracked_pages.h"

/* ---- per-item auxiliary arrays, shadows ----------------------------------------------- */

int ensure_aux(uint32_t capacity) {
    if (capacity <= G.aux_capacity) return 0;
    uint64_t cap = capacity;
    uint64_t bytes = (cap * (8 + 4 + 4 + 1) + PAGE - 1) & ~(PAGE - 1);
    uint8_t *m = sys_mmap(bytes);
    if (!m) return -ENOMEM;
    uint64_t *off = (uint64_t *)(void *)m;
    uint32_t *work = (uint32_t *)(void *)(m + cap * 8);
    int *locks = (int *)(void *)(m + cap * 12);
    uint8_t *flags = m + cap * 16;
    if (G.aux_capacity) {
        /* Called under the exclusive lock; a caller on the fast path (a sync function
         * registering heap data) may hold item locks: their words move with their values. */
        memcpy(off, G.item_offset, G.aux_capacity * 8ull);
        memcpy(work, G.work, G.aux_capacity * 4ull);
        memcpy(locks, G.item_lock, G.aux_capacity * 4ull);
        memcpy(flags, G.item_flags, G.aux_capacity);
        sys_munmap(G.item_offset, G.aux_bytes);
    }
    G.item_lock = locks;
    G.item_offset = off;
    G.work = work;
    G.item_flags = flags;
    G.aux_capacity = capacity;
    G.aux_bytes = bytes;
    return 0;
}

void *shadow_alloc(uint64_t size) {
    size = (size + 15) & ~15ull;
    for (uint32_t k = 0; k < G.chunk_count; k++) {
        struct shadow_chunk *c = &G.chunks[k];
        if (c->size - c->used >= size) {
            void *p = c->base + c->used;
            c->used += size;
            return p;
        }
    }
    if (G.chunk_count == sizeof G.chunks / sizeof G.chunks[0]) return NULL;
    uint64_t bytes = size > (1ull << 20) ? (size + PAGE - 1) & ~(PAGE - 1) : (1ull << 20);
    uint8_t *m = sys_mmap(bytes);
    if (!m) return NULL;
    G.chunks[G.chunk_count++] = (struct shadow_chunk){m, bytes, size};
    return m;
}

void shadows_free(void) {
    for (uint32_t k = 0; k < G.chunk_count; k++) sys_munmap(G.chunks[k].base, G.chunks[k].size);
    G.chunk_count = 0;
}

/* ---- the page table -------------------------------------------------------------------- */

static void sort_u64(uint64_t *a, uint64_t n) { /* heapsort: no recursion, no malloc */
    if (n < 2) return;
    for (uint64_t start = n / 2; start-- > 0;) {
        for (uint64_t root = start;;) {
            uint64_t child = 2 * root + 1;
            if (child >= n) break;
            if (child + 1 < n && a[child] < a[child + 1]) child++;
            if (a[root] >= a[child]) break;
            uint64_t t = a[root]; a[root] = a[child]; a[child] = t;
            root = child;
        }
    }
    for (uint64_t end = n - 1; end > 0; end--) {
        uint64_t t = a[0]; a[0] = a[end]; a[end] = t;
        for (uint64_t root = 0;;) {
            uint64_t child = 2 * root + 1;
            if (child >= end) break;
            if (child + 1 < end && a[child] < a[child + 1]) child++;
            if (a[root] >= a[child]) break;
            t = a[root]; a[root] = a[child]; a[child] = t;
            root = child;
        }
    }
}

/* Original protections of the sorted page addresses `addr[0..n)` from /proc/self/maps, for
 * the entries with want[k] set. -EFAULT if one is not mapped. */
static int read_protections(struct page_info *pages, uint32_t n) {
    long fd = raw6(SYS_openat, AT_FDCWD, (long)"/proc/self/maps", O_RDONLY | O_CLOEXEC, 0, 0, 0);
    if (fd < 0) return (int)fd;
    char buf[1024]; /* may run on a small alternate signal stack (register from a sync function) */
    uint64_t start = 0, end = 0;
    int field = 0, prot = 0, perm_index = 0, shared = 0;
    uint32_t k = 0;
    while (k < n && !pages[k].fresh) k++;
    int rc = 0;
    for (;;) {
        long got = RAW(SYS_read, fd, buf, sizeof buf);
        if (got <= 0) break;
        for (long j = 0; j < got; j++) {
            char ch = buf[j];
            if (ch == '\n') {
                while (k < n && pages[k].addr < end) {
                    if (pages[k].fresh) {
                        if (pages[k].addr < start) { rc = -EFAULT; goto done; }
                        pages[k].prot = prot;
                        pages[k].shared = (uint8_t)shared;
                    }
                    k++;
                }
                start = end = 0;
                field = prot = perm_index = shared = 0;
                continue;
            }
            if (field == 0) {
                if (ch == '-') field = 1;
                else start = start * 16 + (uint64_t)(ch <= '9' ? ch - '0' : (ch | 0x20) - 'a' + 10);
            } else if (field == 1) {
                if (ch == ' ') field = 2;
                else end = end * 16 + (uint64_t)(ch <= '9' ? ch - '0' : (ch | 0x20) - 'a' + 10);
            } else if (field == 2) {
                if (ch == ' ') { field = 3; continue; }
                if (perm_index == 0 && ch == 'r') prot |= PROT_READ;
                if (perm_index == 1 && ch == 'w') prot |= PROT_WRITE;
                if (perm_index == 2 && ch == 'x') prot |= PROT_EXEC;
                if (perm_index == 3 && ch == 's') shared = 1;
                perm_index++;
            }
        }
    }
    while (k < n && !pages[k].fresh) k++;
    if (k < n) rc = -EFAULT;
done:
    RAW(SYS_close, fd, 0, 0);
    return rc;
}

/* (Re)builds the table for items [0, n). Pages already in the old table keep their state. */
int build_table(uint32_t n) {
    struct polus_tracked_item *it = items();
    uint64_t total = 0;
    for (uint32_t i = 0; i < n; i++) total += (PAGE_OF(it[i].address + it[i].size - 1) - PAGE_OF(it[i].address)) / PAGE + 1;
    if (total > (1ull << 26)) return -E2BIG;
    uint64_t tmp_bytes = ((total ? total : 1) * 8 + PAGE - 1) & ~(PAGE - 1);
    uint64_t *tmp = sys_mmap(tmp_bytes);
    if (!tmp) return -ENOMEM;
    uint64_t t = 0;
    for (uint32_t i = 0; i < n; i++)
        for (uint64_t p = PAGE_OF(it[i].address); p <= PAGE_OF(it[i].address + it[i].size - 1); p += PAGE) tmp[t++] = p;
    sort_u64(tmp, total);
    uint64_t m = 0;
    for (uint64_t j = 0; j < total; j++)
        if (m == 0 || tmp[m - 1] != tmp[j]) tmp[m++] = tmp[j];

    uint64_t bytes = (m * sizeof(struct page_info) + total * 4 + PAGE - 1) & ~(PAGE - 1);
    if (!bytes) bytes = PAGE;
    struct page_info *pages = sys_mmap(bytes);
    if (!pages) { sys_munmap(tmp, tmp_bytes); return -ENOMEM; }
    uint32_t *refs = (uint32_t *)(void *)(pages + m);
    for (uint64_t j = 0; j < m; j++) {
        pages[j].addr = tmp[j];
        int32_t old = G.pages ? find_page(tmp[j]) : -1;
        if (old >= 0) {
            pages[j].prot = G.pages[old].prot;
            pages[j].tracked = G.pages[old].tracked;
            pages[j].open = G.pages[old].open;
            pages[j].shared = G.pages[old].shared;
            pages[j].view = G.pages[old].view;
            pages[j].lock = G.pages[old].lock;
            pages[j].staged_view = G.pages[old].staged_view;
            pages[j].staged_map = G.pages[old].staged_map;
        } else {
            pages[j].fresh = 1;
        }
    }
    int rc = read_protections(pages, (uint32_t)m);
    if (rc) { sys_munmap(pages, bytes); sys_munmap(tmp, tmp_bytes); return rc; }

    /* refs, grouped by page: count, prefix sums, fill (ref_count is the fill cursor). */
    struct page_info *old_pages = G.pages;
    uint32_t old_count = G.page_count;
    G.pages = pages;
    G.page_count = (uint32_t)m;
    for (uint32_t i = 0; i < n; i++)
        for (uint64_t p = PAGE_OF(it[i].address); p <= PAGE_OF(it[i].address + it[i].size - 1); p += PAGE)
            pages[find_page(p)].first_ref++;
    uint32_t sum = 0;
    for (uint64_t j = 0; j < m; j++) {
        uint32_t c = pages[j].first_ref;
        pages[j].first_ref = sum;
        pages[j].ref_count = 0;
        sum += c;
    }
    for (uint32_t i = 0; i < n; i++)
        for (uint64_t p = PAGE_OF(it[i].address); p <= PAGE_OF(it[i].address + it[i].size - 1); p += PAGE) {
            struct page_info *pg = &pages[find_page(p)];
            refs[pg->first_ref + pg->ref_count++] = i;
        }
    (void)old_count;
    /* A fresh page is protected if it was writable and holds an item whose writes are not
     * notified (POLUS_ITEM_WRITES_NOTIFIED: new code calls polus_wrote instead of faulting). */
    for (uint64_t j = 0; j < m; j++) {
        if (!pages[j].fresh) continue;
        int needs = 0;
        for (uint32_t r = 0; r < pages[j].ref_count; r++)
            if (!(it[refs[pages[j].first_ref + r]].side & POLUS_ITEM_WRITES_NOTIFIED)) needs = 1;
        pages[j].tracked = (pages[j].prot & PROT_WRITE) != 0 && needs;
    }
    if (old_pages) sys_munmap(old_pages, G.table_bytes);
    G.refs = refs;
    G.table_bytes = bytes;
    sys_munmap(tmp, tmp_bytes);
    return 0;
}

void table_free(void) {
    if (G.pages) sys_munmap(G.pages, G.table_bytes);
    G.pages = NULL;
    G.refs = NULL;
    G.page_count = 0;
    G.table_bytes = 0;
}

/* ---- page protection ------------------------------------------------------------------- */

/* Every tracked page (only the fresh ones if fresh_only) to its closed or original
 * protection, in runs of adjacent pages. */
int protect_pages(int closed, int fresh_only) {
    uint32_t j = 0;
    while (j < G.page_count) {
        struct page_info *p = &G.pages[j];
        if (!p->tracked || (fresh_only && !p->fresh)) { j++; continue; }
        uint32_t k = j + 1;
        while (k < G.page_count && G.pages[k].tracked && (!fresh_only || G.pages[k].fresh) &&
               G.pages[k].addr == G.pages[k - 1].addr + PAGE && G.pages[k].prot == p->prot)
            k++;
        long r = sys_mprotect(p->addr, (uint64_t)(k - j) * PAGE, closed ? closed_prot(p) : p->prot);
        if (r < 0) return (int)r;
        j = k;
    }
    return 0;
}

void open_page(uint32_t idx) {
    struct page_info *p = &G.pages[idx];
    if (p->open++ == 0) sys_mprotect(p->addr, PAGE, p->prot);
}

void close_page(uint32_t idx) {
    struct page_info *p = &G.pages[idx];
    if (p->open && --p->open == 0) sys_mprotect(p->addr, PAGE, closed_prot(p));
}

/* Every byte of [lo, lo+n) on a page we protect (and that is closed). */
int range_tracked(uint64_t lo, uint64_t n) {
    for (uint64_t p = PAGE_OF(lo); p <= PAGE_OF(lo + n - 1); p += PAGE) {
        int32_t k = find_page(p);
        if (k < 0 || !G.pages[k].tracked || G.pages[k].open) return 0;
    }
    return 1;
}

/* ---- change detection and the work list ----------------------------------------------- */

uint64_t first_diff(const uint8_t *a, const uint8_t *b, uint64_t n) {
    for (uint64_t k = 0; k < n; k++)
        if (a[k] != b[k]) return k;
    return n;
}

/* After bytes [lo, hi) were written: compare them with the shadows of the items they
 * overlap. A sync function's writes are absorbed; others put the item on the work list.
 * Returns how many items changed. */
uint32_t scan_written(uint64_t lo, uint64_t hi, int by_sync) {
    uint32_t changed = 0;
    FOR_ITEMS_IN_RANGE(lo, hi, i, {
        struct polus_tracked_item *it = &items()[i];
        uint64_t a = it->address > lo ? it->address : lo;
        uint64_t b = it->address + it->size < hi ? it->address + it->size : hi;
        uint8_t *shadow = (uint8_t *)(uintptr_t)it->shadow + (a - it->address);
        uint64_t d = first_diff((const uint8_t *)(uintptr_t)a, shadow, b - a);
        if (d == b - a) continue;
        changed++;
        if (by_sync) memcpy(shadow, (const void *)(uintptr_t)a, b - a);
        else note_change(i, a - it->address + d);
    });
    return changed;
}

/* After page `idx` was open: compare every item on it. Items written by the sync function
 * that opened it (absorb_item, or containing absorb_addr) are absorbed. */
uint32_t scan_page(uint32_t idx, uint32_t absorb_item, uint64_t absorb_addr, int absorb_at_addr) {
    uint32_t changed = 0;
    struct page_info *p = &G.pages[idx];
    for (uint32_t r = 0; r < p->ref_count; r++) {
        uint32_t i = G.refs[p->first_ref + r];
        struct polus_tracked_item *it = &items()[i];
        uint8_t *shadow = (uint8_t *)(uintptr_t)it->shadow;
        uint64_t d = first_diff((const uint8_t *)(uintptr_t)it->address, shadow, it->size);
        if (d == it->size) continue;
        changed++;
        int absorb = i == absorb_item ||
                     (absorb_at_addr && absorb_addr >= it->address && absorb_addr < it->address + it->size);
        if (absorb) memcpy(shadow, (const void *)(uintptr_t)it->address, it->size);
        else note_change(i, d);
    }
    return changed;
}

/* Opens (open != 0) or closes the tracked pages of [lo, hi] (page addresses). */
static void window(uint64_t lo, uint64_t hi, int open) {
    for (uint64_t p = lo; p <= hi; p += PAGE) {
        int32_t k = find_page(p);
        if (k < 0 || !G.pages[k].tracked || G.pages[k].view) continue; /* a viewed page is never opened */
        if (open) open_page((uint32_t)k);
        else close_page((uint32_t)k);
    }
}

/* After a fenced sync function faulted: the counterpart gets back its bytes from before the
 * call (its shadow too, unless it is queued: drain refreshes a queued item's shadow). */
static uint32_t restore_counterpart(uint32_t c, const uint8_t *save) {
    if (!save) return 0;
    struct polus_tracked_item *cp = &items()[c];
    if (store_bytes(cp->address, save, cp->size) != 0) {
        /* no /proc/self/mem: through the page's own protection, opened for the copy */
        uint64_t lo = PAGE_OF(cp->address), hi = PAGE_OF(cp->address + cp->size - 1);
        window(lo, hi, 1);
        memcpy((void *)(uintptr_t)cp->address, save, cp->size);
        window(lo, hi, 0);
    }
    if (!(G.item_flags[c] & F_DIRTY)) memcpy((void *)(uintptr_t)cp->shadow, save, cp->size);
    return POLUS_SYNC_FAULT_RESTORED;
}

/* Runs a sync function for item i, inside a fence (sync_fence.h). windowed (entry points
 * only, never in a handler): the counterpart's pages are opened around the call so that it
 * does not fault (the injector's borrowed thread must not take signals); in a handler its
 * writes fault and are emulated. 0, or -1 if the function faulted (or faulted before). */
int run_sync(polus_sync_fn fn, uint32_t i, uint64_t offset, uint32_t kind, int windowed, int tid) {
    if (fence_disabled((uint64_t)(uintptr_t)fn)) return -1;
    struct sync_call call;
    sync_call_prepare(&call, i, offset, tid);
    const uint32_t c = call.c;
    const int has_cp = call.has_cp;
    uint8_t *const cp_view = call.cp_view;
    const uint32_t saved_item = G.sync_item, saved_cp = G.sync_counterpart;
    G.sync_item = i;
    G.sync_counterpart = has_cp ? c : NO_ITEM;
    G.in_sync++;
    const uint64_t lo = has_cp ? PAGE_OF(items()[c].address) : 0;
    const uint64_t hi = has_cp ? PAGE_OF(items()[c].address + items()[c].size - 1) : 0;
    struct sync_fence fence;
    fence_arm(&fence, windowed);
    uint8_t *const save = has_cp ? fence_save_area(&fence, items()[c].size) : NULL;
    volatile uint32_t *const saved = &fence.saved; /* read after a longjmp: from memory */
    const int open_window = windowed && has_cp && !cp_view;
    if (open_window) window(lo, hi, 1);
    int rc = 0;
    if (sigsetjmp(fence.env, 0) == 0) {
        if (save) {
            memcpy(save, (const void *)(uintptr_t)items()[c].address, items()[c].size);
            *saved = 1;
        }
        fence_ready(&fence, 0, (uint64_t)(uintptr_t)fn, tid);
        fn(&call.args);
    } else {
        /* Back from fence_unwind (the function faulted) or polus_agent_escape_fence (it did
         * not return). Nothing it left half-done stays: the
         * lock at its depth of the call, the step it may have started closed (handle_segv
         * finished it), the counterpart as it was. */
        G.lock_depth = fence.lock_depth;
        G.in_sync = fence.in_sync;
        G.step.active = 0;
        rc = -1;
    }
    fence_done(&fence);
    fence_disarm(&fence);
    if (rc == 0 && has_cp && (cp_view || !range_tracked(items()[c].address, items()[c].size))) {
        /* What it stored through the view is absorbed, never propagated back (no ping-pong).
         * A queued counterpart keeps its mark: drain still runs its own post_sync. */
        struct polus_tracked_item *cp = &items()[c];
        memcpy((void *)(uintptr_t)cp->shadow, (const void *)(uintptr_t)cp->address, cp->size);
    }
    if (open_window) {
        /* Close first (mprotect returns after the TLB shootdown: every store made through
         * the window is visible, every later one faults), then compare. */
        window(lo, hi, 0);
        if (rc == 0) {
            for (uint64_t p = lo; p <= hi; p += PAGE) {
                int32_t k = find_page(p);
                if (k >= 0 && G.pages[k].tracked) scan_page((uint32_t)k, c, 0, 0);
            }
        }
    }
    if (rc != 0) {
        uint32_t flags = has_cp && *saved ? restore_counterpart(c, save) : 0;
        fence_record(&fence, (uint64_t)(uintptr_t)fn, i, kind, flags, tid);
    }
    G.in_sync--;
    G.sync_item = saved_item;
    G.sync_counterpart = saved_cp;
    return rc;
}

/* Runs the post_sync of every item on the work list (and of what that changes). */
void drain(int windowed, int tid) {
    if (G.draining) return; /* the outer drain picks the new work up */
    G.draining = 1;
    while (G.work_count) {
        uint32_t i = G.work[--G.work_count];
        G.item_flags[i] &= ~F_DIRTY;
        struct polus_tracked_item *it = &items()[i];
        memcpy((void *)(uintptr_t)it->shadow, (const void *)(uintptr_t)it->address, it->size);
        if (it->post_sync &&
            run_sync((polus_sync_fn)(uintptr_t)it->post_sync, i, G.item_offset[i], POLUS_SYNC_FAULT_POST, windowed, tid) == 0)
            items()[i].sync_calls++;
    }
    G.draining = 0;
}

/* pre_sync of every item overlapping [lo, hi), before the write is let through. */
void run_pre_syncs(uint64_t lo, uint64_t hi, int tid) {
    for (;;) {
        uint32_t found = NO_ITEM;
        uint64_t off = 0;
        FOR_ITEMS_IN_RANGE(lo, hi, i, {
            if (found == NO_ITEM && items()[i].pre_sync && !(G.item_flags[i] & F_PRE)) {
                found = i;
                off = lo > items()[i].address ? lo - items()[i].address : 0;
            }
        });
        if (found == NO_ITEM) break;
        G.item_flags[found] |= F_PRE;
        run_sync((polus_sync_fn)(uintptr_t)items()[found].pre_sync, found, off, POLUS_SYNC_FAULT_PRE, 0, tid);
    }
    FOR_ITEMS_IN_RANGE(lo, hi, i, { G.item_flags[i] &= (uint8_t)~F_PRE; });
}
