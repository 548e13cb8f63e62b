/*
 * fast_path.c — tracked writes without the sync lock, inside libpolus-agent.so.
 *
 * WHY. With one process-wide lock, every tracked write of every thread waited for every
 * other: eight threads writing eight unrelated items ran one at a time. The lock guarded
 * three things: the per-item state (shadows, dirty marks), the per-thread state of a write in
 * progress (the work list, the sync function running, its fence), and the emulator's single
 * out-of-line area. Here each gets its own home:
 *   - per item: a lock per old/new pair (the word of the pair's lower index, G.item_lock).
 *     A write takes the locks of the pairs it touches, in ascending order, and holds them
 *     through its store and its sync functions: the consistency rule is unchanged (the
 *     counterpart is up to date before the writer's next instruction, in particular before it
 *     releases its own lock), and a writer of the counterpart waits for exactly that. Bytes
 *     on a tracked page that no item covers (false sharing) take the page's lock instead;
 *   - per thread: a lane (LANES of them), claimed by the faulting thread for the duration of
 *     its handler: its work list, its sync depth, its fence, its out-of-line area;
 *   - shared counters: atomics.
 * Two threads writing items of different pairs share no lock at all.
 *
 * WHAT TAKES IT. A store that the emulator handles as one operand (not a string
 * instruction), on pages that are tracked, closed and have a view (page_views.c) or a
 * usable /proc/self/mem, touching at most MAX_LOCKS pairs, none with a pre_sync. Anything
 * else goes the usual way: the sync lock (sync_state.c), which is exclusive — its holder
 * waits until no thread is on the fast path, and no thread enters it while the lock is held.
 * So the fast path never runs alongside a table rebuild, the end of tracking, a fork, a
 * single step or an entry point.
 *
 * SYNC FUNCTIONS run on the fast path too, fenced per lane. A store they make to a protected
 * page (by name, paper style) faults again and is carried out here, nested, its bytes
 * absorbed; if it touches a pair whose lock another thread holds, it waits a bounded time
 * and then goes ahead without it (counted: a sync function that writes outside its own pair
 * breaks the contract, and waiting for ever could deadlock two such functions). A nested
 * store the fast path cannot do (an instruction that would need single-stepping) is
 * unwound as that function's fault (recorded; the update is abandoned by the injector),
 * since the exclusive lock cannot be waited for from inside the fast path.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>

#include "fast_path.h"
#include "page_views.h"
#include "raw_syscall.h"
#include "store_emulation.h"
#include "sync_fence.h"
#include "sync_state.h"
#include "tracked_pages.h"

#define MAX_LOCKS 8   /* pairs one store may touch on the fast path */
#define MAX_HELD 32   /* locks a lane holds across nesting */
#define WORK_MAX 64   /* items a lane has queued (one store changes at most 2 * MAX_LOCKS) */

struct lane {
    uint32_t depth;    /* fast_write levels on this thread */
    uint32_t in_sync;  /* sync functions running on it */
    uint32_t held_count;
    uint32_t work_count;
    uint32_t draining;
    uint32_t reserved;
    uint64_t held[MAX_HELD]; /* lock ids (lock_word): the words move when a sync function registers heap data */
    uint32_t work[WORK_MAX];
    struct sync_fence *fence;
    uint8_t *fence_save; /* FENCE_SAVE_LEVELS * FENCE_SAVE_MAX, mapped on first use */
    struct xol_area xol;
};

static struct lane *lanes;
static void fast_fork_child(void);

int lanes_ensure(void) {
    if (lanes) return 0;
    uint64_t bytes = ((uint64_t)LANES * sizeof(struct lane) + LANES * sizeof(int) + PAGE - 1) & ~(PAGE - 1);
    uint8_t *m = sys_mmap(bytes);
    if (!m) return -ENOMEM;
    G.lane_owner = (int *)(void *)(m + (uint64_t)LANES * sizeof(struct lane));
    G.on_fork_child = fast_fork_child;
    __atomic_store_n(&lanes, (struct lane *)(void *)m, __ATOMIC_RELEASE);
    return 0;
}

static void fast_fork_child(void) {
    views_fork_child();
    lanes_fork_child();
    xol_main_forget();
}

void lanes_fork_child(void) {
    if (!lanes) return;
    for (unsigned k = 0; k < LANES; k++) {
        G.lane_owner[k] = 0;
        struct lane *L = &lanes[k];
        if (L->xol.base) sys_munmap(L->xol.base, XOL_BYTES); /* its code page is the parent's memfd */
        memset(&L->xol, 0, sizeof L->xol);
        L->depth = L->in_sync = L->held_count = L->work_count = L->draining = 0;
        L->fence = NULL;
    }
    __atomic_store_n(&G.fast_users, 0, __ATOMIC_RELAXED);
}

static struct lane *lane_find(int tid) {
    if (!lanes) return NULL;
    for (unsigned k = 0; k < LANES; k++)
        if (__atomic_load_n(&G.lane_owner[k], __ATOMIC_RELAXED) == tid) return &lanes[k];
    return NULL;
}

static struct lane *lane_claim(int tid) {
    unsigned start = (unsigned)tid % LANES;
    for (unsigned n = 0; n < LANES; n++) {
        unsigned k = (start + n) % LANES;
        int free_ = 0;
        if (__atomic_load_n(&G.lane_owner[k], __ATOMIC_RELAXED) == 0 &&
            __atomic_compare_exchange_n(&G.lane_owner[k], &free_, tid, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
            struct lane *L = &lanes[k];
            if (!L->xol.base && xol_area_init(&L->xol) != 0) {
                __atomic_store_n(&G.lane_owner[k], 0, __ATOMIC_RELEASE);
                return NULL;
            }
            return L;
        }
    }
    return NULL;
}

static void lane_release(struct lane *L) {
    __atomic_store_n(&G.lane_owner[L - lanes], 0, __ATOMIC_RELEASE);
}

/* ---- item locks: futex words (0 free, 1 held, 2 held with waiters) ------------------- */

static int lk_try(int *w) {
    int c = 0;
    return __atomic_compare_exchange_n(w, &c, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}
static void lk_lock(int *w) {
    if (lk_try(w)) return;
    __atomic_fetch_add(&G.stats.lock_waits, 1, __ATOMIC_RELAXED);
    for (int spin = 0; spin < 100; spin++) {
        __asm__ volatile("pause");
        if (__atomic_load_n(w, __ATOMIC_RELAXED) == 0 && lk_try(w)) return;
    }
    int c = __atomic_exchange_n(w, 2, __ATOMIC_ACQUIRE);
    while (c != 0) {
        futex_wait(w, 2, NULL);
        c = __atomic_exchange_n(w, 2, __ATOMIC_ACQUIRE);
    }
}
static void lk_unlock(int *w) {
    if (__atomic_exchange_n(w, 0, __ATOMIC_RELEASE) == 2) futex_wake(w);
}
/* Bounded: ~10 ms, then 0 (the nested case, see the top). */
static int lk_lock_bounded(int *w) {
    for (unsigned n = 0; n < 20000; n++) {
        if (lk_try(w)) return 1;
        if (n < 200) __asm__ volatile("pause");
        else RAW(SYS_sched_yield, 0, 0, 0);
    }
    return 0;
}

/* Lock ids: an item index (its pair's lock), or PAGE_LOCK | page address. Words are looked up
 * at each use: a sync function registering heap data (sync_api.c, under the exclusive lock)
 * may move the arrays holding them. */
#define PAGE_LOCK (1ull << 63)
static int *lock_word(uint64_t id) {
    if (id & PAGE_LOCK) return &G.pages[find_page(id & ~PAGE_LOCK)].lock;
    return &G.item_lock[id];
}

static int holds(const struct lane *L, uint64_t id) {
    for (uint32_t k = 0; k < L->held_count; k++)
        if (L->held[k] == id) return 1;
    return 0;
}

static void release_above(struct lane *L, uint32_t count) {
    while (L->held_count > count) lk_unlock(lock_word(L->held[--L->held_count]));
}

/* The lock of item i: its pair's (the lower index of the two). */
static uint64_t item_lock_id(uint32_t i) {
    uint32_t c = items()[i].counterpart;
    return c != NO_ITEM && c < G.count && c < i ? c : i;
}

/* ---- the lane's work list and sync functions (tracked_pages.c's, per lane) ------------ */

static void lane_note_change(struct lane *L, uint32_t i, uint64_t offset) {
    if (G.item_flags[i] & F_DIRTY) return;
    if (L->work_count == WORK_MAX) return; /* cannot happen: MAX_LOCKS pairs per store */
    G.item_flags[i] |= F_DIRTY;
    G.item_offset[i] = offset;
    L->work[L->work_count++] = i;
}

static uint8_t *lane_save_area(struct lane *L, uint32_t depth, uint64_t size) {
    if (size > FENCE_SAVE_MAX || depth >= FENCE_SAVE_LEVELS) return NULL;
    if (!L->fence_save) L->fence_save = sys_mmap((uint64_t)FENCE_SAVE_MAX * FENCE_SAVE_LEVELS);
    return L->fence_save ? L->fence_save + (uint64_t)depth * FENCE_SAVE_MAX : NULL;
}

static int lane_run_sync(struct lane *L, polus_sync_fn fn, uint32_t i, uint64_t offset, int tid) {
    if (fence_disabled((uint64_t)(uintptr_t)fn)) return -1;
    struct sync_call call;
    sync_call_prepare(&call, i, offset, tid);
    const uint32_t c = call.c;
    const int has_cp = call.has_cp;
    uint8_t *const cp_view = call.cp_view;
    struct sync_fence fence;
    memset(&fence, 0, sizeof fence);
    fence.prev = L->fence;
    fence.depth = L->fence ? L->fence->depth + 1 : 0;
    fence.lock_depth = (int)L->depth;
    fence.in_sync = L->in_sync;
    fence.held = L->held_count;
    uint8_t *const save = has_cp ? lane_save_area(L, fence.depth, items()[c].size) : NULL;
    volatile uint32_t *const saved = &fence.saved;
    L->in_sync++;
    __atomic_store_n(&L->fence, &fence, __ATOMIC_RELAXED);
    int rc = 0;
    if (sigsetjmp(fence.env, 0) == 0) {
        if (save) {
            memcpy(save, (const void *)(uintptr_t)items()[c].address, items()[c].size);
            *saved = 1;
        }
        fence_ready(&fence, 1u + (uint32_t)(L - lanes), (uint64_t)(uintptr_t)fn, tid);
        fn(&call.args);
    } else {
        /* Back from fast_unwind_if_fenced or polus_agent_escape_fence: what the nested levels
         * held is let go. */
        L->depth = (uint32_t)fence.lock_depth;
        release_above(L, fence.held);
        rc = -1;
    }
    fence_done(&fence);
    L->fence = fence.prev;
    L->in_sync = fence.in_sync;
    if (has_cp) {
        struct polus_tracked_item *cp = &items()[c];
        if (rc == 0 && (cp_view || !range_tracked(cp->address, cp->size))) { /* its stores did not fault: absorb */
            memcpy((void *)(uintptr_t)cp->shadow, (const void *)(uintptr_t)cp->address, cp->size);
        } else if (rc != 0 && *saved) {
            uint8_t *v = view_of(cp->address, cp->size);
            if (v) memcpy(v, save, cp->size);
            else store_bytes(cp->address, save, cp->size);
            if (!(G.item_flags[c] & F_DIRTY)) memcpy((void *)(uintptr_t)cp->shadow, save, cp->size);
        }
    }
    if (rc != 0)
        fence_record(&fence, (uint64_t)(uintptr_t)fn, i, POLUS_SYNC_FAULT_POST,
                     has_cp && *saved ? POLUS_SYNC_FAULT_RESTORED : 0, tid);
    return rc;
}

static void lane_drain(struct lane *L, int tid) {
    if (L->draining) return;
    L->draining = 1;
    while (L->work_count) {
        uint32_t i = L->work[--L->work_count];
        G.item_flags[i] &= ~F_DIRTY;
        struct polus_tracked_item *it = &items()[i];
        memcpy((void *)(uintptr_t)it->shadow, (const void *)(uintptr_t)it->address, it->size);
        if (it->post_sync &&
            lane_run_sync(L, (polus_sync_fn)(uintptr_t)it->post_sync, i, G.item_offset[i], tid) == 0)
            __atomic_fetch_add(&items()[i].sync_calls, 1, __ATOMIC_RELAXED);
    }
    L->draining = 0;
}

/* ---- the write -------------------------------------------------------------------------- */

/* Stores bytes on the fast path: through the view, or /proc/self/mem if it is open for this
 * process already (mem_fd() itself may reopen it: sync lock only). 0 or -1. */
static int fast_store(uint64_t addr, const uint8_t *src, uint64_t n) {
    uint8_t *v = view_of(addr, n);
    if (v) return store_bytes(addr, src, n);
    if (G.mem_fd < 0 || G.mem_pid != G.my_pid) return -1;
    return sys_pwrite(G.mem_fd, src, n, addr) == (long)n ? 0 : -1;
}

static int sort_unique(uint64_t *w, int n) {
    for (int a = 1; a < n; a++)
        for (int b = a; b > 0 && w[b - 1] > w[b]; b--) { uint64_t t = w[b]; w[b] = w[b - 1]; w[b - 1] = t; }
    int m = 0;
    for (int a = 0; a < n; a++)
        if (m == 0 || w[m - 1] != w[a]) w[m++] = w[a];
    return m;
}

/* One level of a write on lane L. 1 done, 0 not for the fast path (nothing happened). */
static int write_on_lane(struct lane *L, ucontext_t *uc, uint64_t addr, int tid, int nested) {
    struct insn d;
    uint64_t ea = 0;
    if (emu_decode(uc, addr, &d, &ea) != 0) return 0;
    const uint64_t size = d.size, hi = ea + size;
    if (!range_tracked(ea, size)) return 0;
    if (!view_of(ea, size) && (G.mem_fd < 0 || G.mem_pid != G.my_pid)) return 0;
    /* the locks: each pair the store touches, or the page's for bytes no item covers */
    uint64_t want[MAX_LOCKS + 2];
    int n = 0, too_many = 0;
    uint64_t covered = 0;
    FOR_ITEMS_IN_RANGE(ea, hi, i, {
        if (!nested && items()[i].pre_sync) too_many = 1;
        if (n >= MAX_LOCKS) too_many = 1;
        else want[n++] = item_lock_id(i);
        uint64_t a = items()[i].address > ea ? items()[i].address : ea;
        uint64_t b = items()[i].address + items()[i].size < hi ? items()[i].address + items()[i].size : hi;
        covered += b - a;
    });
    if (too_many) return 0;
    if (covered < size) {
        for (uint64_t p = PAGE_OF(ea); p < hi; p += PAGE) want[n++] = PAGE_LOCK | p;
    }
    n = sort_unique(want, n);
    const uint32_t held_before = L->held_count;
    for (int k = 0; k < n; k++) {
        if (holds(L, want[k])) continue;
        if (L->held_count == MAX_HELD) { release_above(L, held_before); return 0; }
        if (!nested) lk_lock(lock_word(want[k]));
        else if (!lk_lock_bounded(lock_word(want[k]))) continue; /* see the top: bounded, then without it */
        L->held[L->held_count++] = want[k];
    }
    uint8_t before[64], after[64];
    memcpy(before, (const void *)(uintptr_t)ea, size);
    if (emu_run(&L->xol, uc, &d, before, after) != 0) { release_above(L, held_before); return 0; }
    uint64_t first = first_diff(before, after, size);
    if (first < size) {
        uint64_t last = size - 1;
        while (last > first && before[last] == after[last]) last--;
        if (fast_store(ea + first, after + first, last - first + 1) != 0) { release_above(L, held_before); return 0; }
    }
    emu_finish(&L->xol, uc, &d);
    /* what changed: absorbed (a sync function's store) or queued */
    uint32_t changed = 0;
    FOR_ITEMS_IN_RANGE(ea, hi, i, {
        struct polus_tracked_item *it = &items()[i];
        uint64_t a = it->address > ea ? it->address : ea;
        uint64_t b = it->address + it->size < hi ? it->address + it->size : hi;
        uint8_t *shadow = (uint8_t *)(uintptr_t)it->shadow + (a - it->address);
        uint64_t df = first_diff((const uint8_t *)(uintptr_t)a, shadow, b - a);
        if (df != b - a) {
            changed++;
            if (nested) memcpy(shadow, (const void *)(uintptr_t)a, b - a);
            else lane_note_change(L, i, a - it->address + df);
        }
    });
    if (nested) {
        __atomic_fetch_add(&G.stats.sync_writes, 1, __ATOMIC_RELAXED);
    } else {
        __atomic_fetch_add(&REG.sync.faults, 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(&G.stats.fast_path, 1, __ATOMIC_RELAXED);
        emu_count();
        if (!changed) __atomic_fetch_add(&REG.sync.false_sharing, 1, __ATOMIC_RELAXED);
        lane_drain(L, tid);
    }
    release_above(L, held_before);
    return 1;
}

int fast_write(ucontext_t *uc, uint64_t addr, int tid) {
    if (!lanes || (G.config & (POLUS_SYNC_FORCE_SINGLE_STEP | POLUS_SYNC_NO_FAST_PATH))) return 0;
    if (__atomic_load_n(&G.lock_owner, __ATOMIC_RELAXED) == tid) return 0; /* inside the slow path */
    struct lane *L = lane_find(tid);
    if (L) { /* a sync function of ours storing, on this thread */
        if (!L->in_sync) return 0;
        int32_t k = find_page(addr);
        if (k < 0 || !G.pages[k].tracked) return 0; /* not ours: a real fault, the fence's */
        L->depth++;
        int done = write_on_lane(L, uc, addr, tid, 1);
        L->depth--;
        return done ? 1 : -1;
    }
    __atomic_fetch_add(&G.fast_users, 1, __ATOMIC_SEQ_CST);
    int done = 0;
    if (__atomic_load_n(&G.lock_word, __ATOMIC_SEQ_CST) == 0 && G.active) {
        int32_t k = find_page(addr);
        if (k >= 0 && G.pages[k].tracked && (L = lane_claim(tid)) != NULL) {
            L->depth = 1;
            done = write_on_lane(L, uc, addr, tid, 0);
            L->depth = 0;
            lane_release(L);
        }
    }
    __atomic_fetch_sub(&G.fast_users, 1, __ATOMIC_SEQ_CST);
    return done;
}

int fast_notify(uint64_t addr, int tid) {
    if (!lanes || (G.config & POLUS_SYNC_NO_FAST_PATH)) return 0;
    if (__atomic_load_n(&G.lock_owner, __ATOMIC_RELAXED) == tid) return 0;
    if (lane_find(tid)) return -1; /* from a sync function: its stores are absorbed already */
    __atomic_fetch_add(&G.fast_users, 1, __ATOMIC_SEQ_CST);
    int done = 0;
    struct lane *L;
    if (__atomic_load_n(&G.lock_word, __ATOMIC_SEQ_CST) == 0 && G.active && (L = lane_claim(tid)) != NULL) {
        done = -1;
        int32_t k = find_page(addr);
        if (k >= 0) {
            struct page_info *p = &G.pages[k];
            for (uint32_t r = 0; r < p->ref_count; r++) {
                uint32_t i = G.refs[p->first_ref + r];
                struct polus_tracked_item *it = &items()[i];
                if (addr < it->address || addr >= it->address + it->size) continue;
                L->depth = 1;
                uint64_t id = item_lock_id(i);
                lk_lock(lock_word(id));
                L->held[L->held_count++] = id;
                uint64_t d = first_diff((const uint8_t *)(uintptr_t)it->address, (const uint8_t *)(uintptr_t)it->shadow, it->size);
                if (d < it->size) lane_note_change(L, i, d);
                lane_drain(L, tid);
                release_above(L, 0);
                L->depth = 0;
                done = 1;
                break;
            }
        }
        lane_release(L);
    }
    __atomic_fetch_sub(&G.fast_users, 1, __ATOMIC_SEQ_CST);
    return done;
}

struct sync_fence *fast_lane_fence(int tid) {
    struct lane *L = lane_find(tid);
    return L ? L->fence : NULL;
}

void fast_unwind_if_fenced(int sig, const siginfo_t *si, ucontext_t *uc, int tid) {
    struct lane *L = lane_find(tid);
    if (!L || !L->fence) return;
    struct sync_fence *f = L->fence;
    f->signal = sig;
    f->si_code = si->si_code;
    f->fault_address = (uint64_t)(uintptr_t)si->si_addr;
    f->pc = (uint64_t)uc->uc_mcontext.gregs[REG_RIP];
    set_sigmask(*uc_mask_word(uc));
    siglongjmp(f->env, 1);
}
