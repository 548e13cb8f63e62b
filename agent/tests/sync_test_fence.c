/*
 * sync_test_fence.c — agent_sync_test scenario "fence": patch sync functions that fault
 * (SIGSEGV, SIGFPE, SIGILL, SIGTRAP, a store to read-only memory; post_sync and pre_sync; in
 * the handler and from an entry point; while threads write) are caught by the agent's fence:
 * the target's own handler never sees them, the write that ran the sync function lands, the
 * counterpart gets back its bytes from before the call, the fault is recorded in
 * registry.sync.fault, the function is not run again, and sync_end waits for the injector to
 * abandon the update.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "sync_test.h"

/* The target's own handlers: a sync function's fault must never reach them. */
static void own_handler(int sig) {
    (void)sig;
    static const char msg[] = "the target's own handler got a sync function's fault\n";
    (void)!write(2, msg, sizeof msg - 1);
    _exit(21); /* returning would re-execute the fault for ever */
}

enum fault_kind { F_NULL, F_DIV, F_UD2, F_INT3, F_READ_ONLY, F_KINDS };
static const int kind_signal[F_KINDS] = {SIGSEGV, SIGFPE, SIGILL, SIGTRAP, SIGSEGV};
static volatile int fence_calls, fault_on_call, fault_kind;
static int *volatile null_pointer;
static volatile int zero, hundred = 100;
static char *read_only_page;

static void do_fault(void) {
    switch (fault_kind) {
        case F_NULL: *(volatile int *)null_pointer = 1; break;
        case F_DIV: zero = hundred / zero; break; /* (1 / x is compiled without a division) */
        case F_UD2: __builtin_trap();
        case F_INT3: __asm__ volatile("int3"); break;
        case F_READ_ONLY: *(volatile char *)read_only_page = 1; break;
    }
}

/* old -> new, half-writing the counterpart before it faults on call number fault_on_call. */
static void faulty_old_to_new(const struct polus_sync_args *a) {
    fence_calls++;
    volatile struct AB_v1 *n = a->counterpart; /* volatile: the stores stay in this order */
    const volatile struct AB *o = a->written;
    n->a.i = o->a.i + 1000;
    if (fence_calls == fault_on_call) do_fault();
    n->a.i = o->a.i;
    n->b = o->b;
}

static void faulty_pre(const struct polus_sync_args *a) {
    (void)a;
    fence_calls++;
    if (fence_calls == fault_on_call) do_fault();
}

static void fresh_session(polus_sync_fn old_post) {
    SYNC.item_count = 0;
    CHECK_EQ(polus_agent_sync_clear(), 0);
    fence_calls = 0;
    ab = (struct AB){{1}, 2};
    ab_v1 = (struct AB_v1){{0, 1}, 2};
    add_pair(&ab, sizeof ab, old_post, &ab_v1, sizeof ab_v1, ab_new_to_old);
    CHECK_EQ(polus_agent_sync_begin(), 0);
    CHECK_EQ(SYNC.fault.function, 0);
}

static void abandon(void) {
    CHECK_EQ(polus_agent_sync_end(), -ECANCELED); /* refused: nothing changed */
    CHECK_EQ(SYNC.active, 1);
    char perms[3];
    page_perms(&ab, perms);
    CHECK(perms[1] == '-');
    SYNC.abandoning = 1; /* what the injector writes when it abandons the update */
    CHECK_EQ(polus_agent_sync_end(), 0);
    CHECK_EQ(SYNC.active, 0);
}

/* Every kind of fault, from the handler: caught, recorded, the counterpart put back. */
static void faults_in_the_handler(void) {
    for (int kind = 0; kind < F_KINDS; kind++) {
        fault_kind = kind;
        fault_on_call = 2;
        fresh_session(faulty_old_to_new);
        ab.a.i = 10; /* call 1 */
        barrier();
        CHECK_EQ(ab_v1.a.i, 10);
        ab.b = 20; /* call 2 faults after writing ab_v1.a.i = 1010 */
        barrier();
        CHECK_EQ(ab.b, 20);      /* the write landed */
        CHECK_EQ(ab_v1.a.i, 10); /* the counterpart is as before the call */
        CHECK_EQ(ab_v1.b, 2);
        CHECK_EQ(SYNC.fault.function, (uintptr_t)faulty_old_to_new);
        CHECK_EQ(SYNC.fault.item, 0);
        CHECK_EQ(SYNC.fault.item_address, (uintptr_t)&ab);
        CHECK_EQ(SYNC.fault.side, POLUS_OLD);
        CHECK_EQ(SYNC.fault.kind, POLUS_SYNC_FAULT_POST);
        CHECK_EQ(SYNC.fault.signal, kind_signal[kind]);
        CHECK_EQ(SYNC.fault.flags, POLUS_SYNC_FAULT_RESTORED);
        CHECK_EQ(SYNC.fault.count, 1);
        CHECK_EQ(SYNC.fault.tid, gettid_());
        CHECK(SYNC.fault.at_unix_ns > 0);
        if (kind == F_NULL) CHECK_EQ(SYNC.fault.fault_address, 0);
        if (kind == F_READ_ONLY) CHECK_EQ(SYNC.fault.fault_address, (uintptr_t)read_only_page);
        CHECK_EQ(item_table()[0].sync_calls, 1); /* the faulted run does not count */

        ab.a.i = 11; /* disabled: not run again */
        barrier();
        CHECK_EQ(fence_calls, 2);
        CHECK_EQ(ab.a.i, 11);
        CHECK_EQ(ab_v1.a.i, 10);
        ab_v1.a.i = 50; /* the other direction still syncs */
        barrier();
        CHECK_EQ(ab.a.i, 50);
        abandon();
    }
}

/* A pre_sync fault: the write it preceded still lands. */
static void fault_in_pre_sync(void) {
    fault_kind = F_NULL;
    fault_on_call = 1;
    fresh_session(ab_old_to_new);
    item_table()[0].pre_sync = (uint64_t)(uintptr_t)faulty_pre;
    barrier(); /* before the write (a store of another type could be moved past it) */
    ab.a.i = 33;
    barrier();
    CHECK_EQ(ab.a.i, 33);
    CHECK_EQ(SYNC.fault.function, (uintptr_t)faulty_pre);
    CHECK_EQ(SYNC.fault.kind, POLUS_SYNC_FAULT_PRE);
    CHECK_EQ(ab_v1.a.i, 33); /* the post_sync ran */
    abandon();
}

/* From an entry point (the counterpart's pages opened around the call): -EFAULT, the
 * caller's signal mask as it was, the counterpart put back. */
static void fault_from_an_entry_point(void) {
    fault_kind = F_NULL;
    fault_on_call = 1;
    fresh_session(faulty_old_to_new);
    sigset_t usr1, before, after;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, &before);
    CHECK_EQ(polus_agent_sync_initialize(POLUS_OLD), -EFAULT);
    pthread_sigmask(SIG_SETMASK, NULL, &after);
    CHECK(sigismember(&after, SIGUSR1) && !sigismember(&after, SIGUSR2));
    pthread_sigmask(SIG_SETMASK, &before, NULL);
    CHECK_EQ(ab_v1.a.i, 1); /* not the 1001 written before the fault */
    CHECK_EQ(SYNC.fault.function, (uintptr_t)faulty_old_to_new);
    char perms[3];
    page_perms(&ab_v1, perms);
    CHECK(perms[1] == '-'); /* the window closed again */
    ab.a.i = 7;             /* the lock was given back */
    barrier();
    CHECK_EQ(ab.a.i, 7);
    abandon();
}

/* Threads incrementing the old side under their mutex; the sync function faults once: no
 * increment lost, no thread stuck, one fault recorded. */
static atomic_long increments;
static void *incrementer(void *arg) {
    (void)arg;
    while (!atomic_load(&stop_flag)) {
        pthread_mutex_lock(&pair_lock[0]);
        __asm__ volatile("addl $1, %0" : "+m"(ab.a.i));
        pthread_mutex_unlock(&pair_lock[0]);
        atomic_fetch_add(&increments, 1);
    }
    return NULL;
}

static void fault_under_threads(void) {
    fault_kind = F_NULL;
    fault_on_call = 500;
    fresh_session(faulty_old_to_new);
    ab.a.i = 0;
    barrier();
    pthread_mutex_init(&pair_lock[0], NULL);
    atomic_store(&stop_flag, 0);
    pthread_t th[4];
    for (int t = 0; t < 4; t++) CHECK(pthread_create(&th[t], NULL, incrementer, NULL) == 0);
    while (fence_calls < 600 && !SYNC.fault.function) {
        struct timespec d = {0, 1000 * 1000};
        nanosleep(&d, NULL);
    }
    struct timespec d = {0, 100 * 1000 * 1000};
    nanosleep(&d, NULL);
    atomic_store(&stop_flag, 1);
    for (int t = 0; t < 4; t++) pthread_join(th[t], NULL);
    CHECK_EQ(ab.a.i, atomic_load(&increments));
    CHECK_EQ(SYNC.fault.count, 1);
    CHECK_EQ(fence_calls, 500);
    CHECK(ab_v1.a.i < ab.a.i); /* no longer synced: the update is to be abandoned */
    printf("fence: %ld increments by 4 threads, the sync function faulted once at call 500\n",
           (long)atomic_load(&increments));
    abandon();
}

int test_fence(void) {
    for (int sig = 1; sig < 32; sig++)
        if (sig == SIGSEGV || sig == SIGFPE || sig == SIGILL || sig == SIGTRAP || sig == SIGBUS) signal(sig, own_handler);
    read_only_page = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(read_only_page != MAP_FAILED);
    faults_in_the_handler();
    fault_in_pre_sync();
    fault_from_an_entry_point();
    fault_under_threads();
    /* a later update starts clean */
    fresh_session(ab_old_to_new);
    ab.a.i = 5;
    barrier();
    CHECK_EQ(ab_v1.a.i, 5);
    CHECK_EQ(SYNC.fault.function, 0);
    CHECK_EQ(polus_agent_sync_end(), 0);
    printf("fence: SIGSEGV, SIGFPE, SIGILL, SIGTRAP and a read-only store in sync functions caught\n");
    return 0;
}
