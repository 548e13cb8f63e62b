/*
 * sync_test_writes.c — agent_sync_test scenarios: tracked writes, from one thread and from
 * eight, and untracked writes on tracked pages (basic, basic_step, threads, false_sharing).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sync_test.h"

/* ======================================================================================
 * 1. basic write-through, both directions: the paper's ab / ab_v1 (Fig. 2).
 * ====================================================================================== */
static volatile int pre_calls, pre_seen;

static void ab_pre(const struct polus_sync_args *args) {
    (void)args;
    pre_calls++;
    pre_seen = ab.a.i; /* the value before the write */
}

/* FDSize of /proc/self/status: how many descriptors the table holds now. */
static long fd_table_size(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long size = -1;
    while (f && fgets(line, sizeof line, f)) sscanf(line, "FDSize: %ld", &size);
    if (f) fclose(f);
    return size;
}

/* The descriptor on /proc/self/mem the agent holds, or -1. */
static int agent_mem_descriptor(void) {
    char expected[64];
    snprintf(expected, sizeof expected, "/proc/%d/mem", (int)getpid());
    for (int fd = 3; fd < 4096; fd++) {
        char link[64], target[64];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n <= 0) continue;
        target[n] = 0;
        if (!strcmp(target, expected)) return fd;
    }
    return -1;
}

int test_basic(int single_step) {
    if (single_step) polus_agent_sync_configure(POLUS_SYNC_FORCE_SINGLE_STEP);
    const long table_before = fd_table_size();
    uint32_t o = add_pair(&ab, sizeof ab, ab_old_to_new, &ab_v1, sizeof ab_v1, ab_new_to_old);
    item_table()[o].pre_sync = (uint64_t)(uintptr_t)ab_pre;
    CHECK_EQ(polus_agent_sync_begin(), 0);
    CHECK_EQ(SYNC.active, 1);
    CHECK_EQ(polus_agent_sync_begin(), -EBUSY);
    CHECK_EQ(polus_agent_sync_initialize(POLUS_OLD), 1);
    CHECK_EQ(ab_v1.a.i, 5);
    CHECK_EQ(ab_v1.b, 7);
    CHECK_EQ(SYNC.faults, 0); /* initialize runs the sync with the counterpart opened */
    char perms[3];
    page_perms(&ab, perms);
    CHECK(perms[0] == 'r' && perms[1] == '-');
    old_to_new_calls = new_to_old_calls = 0;

    /* old code writes ab.a.i (struct A at offset 0) */
    *(volatile int *)&ab.a.i = 42;
    barrier();
    /* The agent's /proc/self/mem descriptor sits high in the table, without growing it:
     * growing a shared table waits for an RCU grace period (seconds on a busy VM). */
    CHECK(table_before >= 64);
    CHECK_EQ(fd_table_size(), table_before);
    CHECK(agent_mem_descriptor() >= table_before / 2);
    CHECK_EQ(ab.a.i, 42);
    CHECK_EQ(ab_v1.a.i, 42);
    CHECK_EQ(old_to_new_calls, 1);
    CHECK_EQ(pre_calls, 1);
    CHECK_EQ(pre_seen, 5);
    /* the counterpart comes through its writable view: another address, the same bytes */
    CHECK(last_args.written == &ab && last_args.counterpart != NULL);
    CHECK(memcmp(last_args.counterpart, &ab_v1, sizeof ab_v1) == 0);
    CHECK_EQ(last_args.offset, offsetof(struct AB, a.i));
    CHECK_EQ(last_args.thread_id, gettid_());
    *(volatile int *)&ab.b = 8;
    barrier();
    CHECK_EQ(ab_v1.b, 8);
    CHECK_EQ(last_args.offset, offsetof(struct AB, b));

    /* new code writes ab_v1: i flows back, j (new only) stays on the new side */
    *(volatile int *)&ab_v1.a.i = 43;
    barrier();
    CHECK_EQ(ab.a.i, 43);
    CHECK_EQ(new_to_old_calls, 1);
    CHECK_EQ(last_args.offset, offsetof(struct AB_v1, a.i));
    *(volatile int *)&ab_v1.a.j = 9;
    barrier();
    CHECK_EQ(ab.a.i, 43);
    CHECK_EQ(ab_v1.a.j, 9);
    /* a read-modify-write instruction, as the paper's a->i++ */
    __asm__ volatile("addl $1, %0" : "+m"(ab_v1.a.i));
    barrier();
    CHECK_EQ(ab.a.i, 44);
    __asm__ volatile("incl %0" : "+m"(ab.a.i));
    barrier();
    CHECK_EQ(ab_v1.a.i, 45);

    /* string instructions and glibc's own stores */
    unsigned long n = sizeof(struct AB);
    void *dst = &ab;
    __asm__ volatile("rep stosb" : "+D"(dst), "+c"(n) : "a"(0) : "memory");
    barrier();
    CHECK_EQ(ab_v1.a.i, 0);
    CHECK_EQ(ab_v1.b, 0);
    memset_fn(&ab_v1, 0x11, sizeof ab_v1);
    barrier();
    CHECK_EQ(ab.a.i, 0x11111111);
    CHECK_EQ(ab.b, 0x11111111);

    /* writes that change nothing tracked are false sharing (same value) */
    uint64_t fs = SYNC.false_sharing;
    barrier();
    *(volatile int *)&ab.b = 0x11111111;
    barrier();
    CHECK_EQ(SYNC.false_sharing, fs + 1);

    struct polus_sync_stats st = stats();
    printf("basic%s: faults=%llu false_sharing=%llu sync_calls old=%llu new=%llu emulated=%llu stepped=%llu "
           "sync_writes=%llu\n",
           single_step ? " (single-step)" : "", (unsigned long long)SYNC.faults,
           (unsigned long long)SYNC.false_sharing, (unsigned long long)item_table()[o].sync_calls,
           (unsigned long long)item_table()[o + 1].sync_calls, (unsigned long long)st.emulated,
           (unsigned long long)st.single_stepped, (unsigned long long)st.sync_writes);
    CHECK(SYNC.faults >= 9);
    CHECK_EQ(item_table()[o].sync_calls, (uint64_t)old_to_new_calls);
    CHECK_EQ(item_table()[o + 1].sync_calls, (uint64_t)new_to_old_calls);
    if (single_step) CHECK(st.single_stepped >= 9 && st.emulated == 0);
    else CHECK(st.emulated >= 9 && st.single_stepped == 0);

    CHECK_EQ(polus_agent_sync_end(), 0);
    CHECK_EQ(SYNC.active, 0);
    page_perms(&ab, perms);
    CHECK(perms[0] == 'r' && perms[1] == 'w');
    uint64_t faults = SYNC.faults;
    ab.a.i = 1000; /* no longer tracked */
    CHECK_EQ(ab_v1.a.i, 0x11111111);
    CHECK_EQ(SYNC.faults, faults);
    CHECK_EQ(polus_agent_sync_clear(), 0);
    CHECK_EQ(SYNC.item_count, 0);
    return 0;
}

/* ======================================================================================
 * 2. eight threads, per-pair mutexes, half on the old side, half on the new side.
 * ====================================================================================== */
#define THREADS 8
static union { struct A v[PAIRS]; char pad[4096]; } old_ctr PAGE_ALIGNED;
static union { struct A_v1 v[PAIRS]; char pad[4096]; } new_ctr PAGE_ALIGNED;
static long increments[THREADS][PAIRS];

static void *counter_thread(void *arg) {
    long t = (long)arg;
    int old_side = t < THREADS / 2;
    for (unsigned long it = 0; !atomic_load_explicit(&stop_flag, memory_order_relaxed); it++) {
        int k = (int)((it + (unsigned long)t) % PAIRS);
        pthread_mutex_lock(&pair_lock[k]);
        if (old_side) {
            if (it & 1) __asm__ volatile("addl $1, %0" : "+m"(old_ctr.v[k].i)); /* read-modify-write */
            else { volatile int *p = &old_ctr.v[k].i; *p = *p + 1; }         /* load, add, store */
        } else {
            if (it & 1) {
                __asm__ volatile("addl $1, %0" : "+m"(new_ctr.v[k].i));
                __asm__ volatile("addl $1, %0" : "+m"(new_ctr.v[k].j));
            } else {
                volatile int *p = &new_ctr.v[k].i;
                *p = *p + 1;
                volatile int *q = &new_ctr.v[k].j;
                *q = *q + 1;
            }
        }
        increments[t][k]++;
        pthread_mutex_unlock(&pair_lock[k]);
    }
    return NULL;
}

int test_threads(int single_step) {
    if (single_step) polus_agent_sync_configure(POLUS_SYNC_FORCE_SINGLE_STEP);
    for (int k = 0; k < PAIRS; k++) {
        old_ctr.v[k].i = 1000 * k;
        pthread_mutex_init(&pair_lock[k], NULL);
        add_pair(&old_ctr.v[k], sizeof(struct A), ctr_old_to_new, &new_ctr.v[k], sizeof(struct A_v1), ctr_new_to_old);
    }
    CHECK_EQ(polus_agent_sync_begin(), 0);
    CHECK_EQ(polus_agent_sync_initialize(POLUS_OLD), PAIRS);
    for (int k = 0; k < PAIRS; k++) CHECK_EQ(new_ctr.v[k].i, 1000 * k);
    pthread_t th[THREADS];
    double t0 = now_s();
    for (long t = 0; t < THREADS; t++) CHECK(pthread_create(&th[t], NULL, counter_thread, (void *)t) == 0);
    struct timespec two = {2, 0};
    nanosleep(&two, NULL);
    atomic_store(&stop_flag, 1);
    for (int t = 0; t < THREADS; t++) pthread_join(th[t], NULL);
    double elapsed = now_s() - t0;
    long writes = 0;
    for (int k = 0; k < PAIRS; k++) {
        long total = 0, new_side = 0;
        for (int t = 0; t < THREADS; t++) {
            total += increments[t][k];
            if (t >= THREADS / 2) new_side += increments[t][k];
        }
        writes += total - new_side + 2 * new_side;
        printf("pair %d: old.i=%d new.i=%d new.j=%d expected i=%ld j=%ld\n", k, old_ctr.v[k].i, new_ctr.v[k].i,
               new_ctr.v[k].j, 1000 * k + total, new_side);
        if (single_step) { /* not asserted: shows the open-page window of the fallback */
            if (old_ctr.v[k].i != 1000 * k + total || new_ctr.v[k].i != 1000 * k + total)
                printf("pair %d: single-step fallback LOST %ld old-side / %ld new-side increments\n", k,
                       1000 * k + total - old_ctr.v[k].i, 1000 * k + total - new_ctr.v[k].i);
            continue;
        }
        CHECK_EQ(old_ctr.v[k].i, 1000 * k + total);
        CHECK_EQ(new_ctr.v[k].i, 1000 * k + total);
        CHECK_EQ(new_ctr.v[k].j, new_side);
    }
    struct polus_sync_stats st = stats();
    printf("threads: %ld tracked writes in %.2f s by %d threads: %.2f us per tracked write, "
           "faults=%llu false_sharing=%llu emulated=%llu stepped=%llu sync_writes=%llu\n",
           writes, elapsed, THREADS, elapsed * 1e6 / (double)writes, (unsigned long long)SYNC.faults,
           (unsigned long long)SYNC.false_sharing, (unsigned long long)st.emulated,
           (unsigned long long)st.single_stepped, (unsigned long long)st.sync_writes);
    if (!single_step) CHECK((long)SYNC.faults >= writes); /* every write faulted: none slipped through */
    CHECK(writes > 1000);
    CHECK_EQ(polus_agent_sync_end(), 0);
    return 0;
}

/* ======================================================================================
 * 3. false sharing: untracked variables on a tracked page.
 * ====================================================================================== */
static struct {
    int tracked;
    int pad_[15];
    long neighbour[2][8]; /* one cache line each */
    char pad[4096 - 64 - 128];
} shared_page PAGE_ALIGNED;
static volatile int shared_copy;
static volatile int shared_sync_calls;
static void shared_sync(const struct polus_sync_args *a) {
    (void)a;
    shared_sync_calls++;
    shared_copy = shared_page.tracked;
}

static void *neighbour_thread(void *arg) {
    long t = (long)arg;
    for (int k = 0; k < 5000; k++) *(volatile long *)&shared_page.neighbour[t][0] += 1;
    return NULL;
}

int test_false_sharing(void) {
    add_item(&shared_page.tracked, sizeof shared_page.tracked, shared_sync, NULL, UINT32_MAX, POLUS_OLD);
    CHECK_EQ(polus_agent_sync_begin(), 0);
    double t0 = now_s();
    pthread_t th[2];
    for (long t = 0; t < 2; t++) CHECK(pthread_create(&th[t], NULL, neighbour_thread, (void *)t) == 0);
    for (int t = 0; t < 2; t++) pthread_join(th[t], NULL);
    double elapsed = now_s() - t0;
    CHECK_EQ(shared_page.neighbour[0][0], 5000);
    CHECK_EQ(shared_page.neighbour[1][0], 5000);
    printf("false sharing: faults=%llu false_sharing=%llu sync calls=%d (%.2f us per write, 2 threads)\n",
           (unsigned long long)SYNC.faults, (unsigned long long)SYNC.false_sharing, shared_sync_calls,
           elapsed * 1e6 / 10000);
    CHECK_EQ(SYNC.faults, 10000);
    CHECK_EQ(SYNC.false_sharing, 10000);
    CHECK_EQ(shared_sync_calls, 0);
    CHECK_EQ(item_table()[0].sync_calls, 0);
    /* and the tracked item next to them still syncs */
    *(volatile int *)&shared_page.tracked = 77;
    barrier();
    CHECK_EQ(shared_copy, 77);
    CHECK_EQ(shared_sync_calls, 1);
    CHECK_EQ(SYNC.false_sharing, 10000);
    CHECK_EQ(polus_agent_sync_end(), 0);
    return 0;
}
