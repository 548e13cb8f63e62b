/*
 * sync_test_views.c — agent_sync_test scenarios for the writable views of tracked pages
 * (agent/src/page_views.c): one fault per tracked write, pages given back intact, fork
 * isolation, and two items written by different threads at once (one_fault, views_fork,
 * two_items).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sync_test.h"

/* The old page holds the tracked item and untracked neighbours (the binary's .data). */
static union {
    struct {
        struct A item;
        int pad_[15];
        uint8_t neighbours[1024];
    } v;
    char pad[4096];
} view_old PAGE_ALIGNED;
static union { struct A_v1 v; char pad[4096]; } view_new PAGE_ALIGNED;

/* "s" or "p" of the mapping holding addr, and its permissions. */
static void mapping_of(const void *addr, char perms[5]) {
    FILE *f = fopen("/proc/self/maps", "r");
    CHECK(f);
    char line[512];
    strcpy(perms, "????");
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        char p[5];
        if (sscanf(line, "%lx-%lx %4s", &lo, &hi, p) == 3 && (uintptr_t)addr >= lo && (uintptr_t)addr < hi) memcpy(perms, p, 5);
    }
    fclose(f);
}

/* ======================================================================================
 * one_fault: a write whose sync function stores into its counterpart (through args) costs
 * exactly one fault — the sync's store must not fault; the pages come back intact.
 * ====================================================================================== */
int test_one_fault(void) {
    for (int k = 0; k < 1024; k++) view_old.v.neighbours[k] = (uint8_t)(k * 7 + 1);
    view_old.v.item.i = 5;
    uint32_t o = add_pair(&view_old.v.item, sizeof(struct A), ctr_old_to_new, &view_new.v, sizeof(struct A_v1),
                          ctr_new_to_old);
    CHECK_EQ(polus_agent_sync_begin(), 0);
    CHECK_EQ(polus_agent_sync_initialize(POLUS_OLD), 1);
    CHECK_EQ(view_new.v.i, 5);
    char perms[5];
    mapping_of(&view_old, perms);
    CHECK(perms[0] == 'r' && perms[1] == '-'); /* never writable at its address while tracking */
    const int n = 1000;
    struct polus_sync_stats s0 = stats();
    uint64_t f0 = SYNC.faults;
    for (int k = 0; k < n; k++) {
        *(volatile int *)&view_old.v.item.i = 100 + k;
        barrier();
        CHECK_EQ(view_new.v.i, 100 + k);
    }
    for (int k = 0; k < n; k++) {
        *(volatile int *)&view_new.v.i = 5000 + k;
        barrier();
        CHECK_EQ(view_old.v.item.i, 5000 + k);
    }
    struct polus_sync_stats s1 = stats();
    printf("one_fault: %d tracked writes: faults=%llu sync_writes=%llu (sync stores that faulted) emulated=%llu\n", 2 * n,
           (unsigned long long)(SYNC.faults - f0), (unsigned long long)(s1.sync_writes - s0.sync_writes),
           (unsigned long long)(s1.emulated - s0.emulated));
    CHECK_EQ(SYNC.faults - f0, 2 * n);            /* one per write */
    CHECK_EQ(s1.sync_writes - s0.sync_writes, 0); /* the sync functions' stores never faulted */
    CHECK_EQ(s1.emulated - s0.emulated, 2 * n);
    CHECK_EQ(item_table()[o].sync_calls, n);
    CHECK_EQ(item_table()[o + 1].sync_calls, n);
    CHECK_EQ(polus_agent_sync_end(), 0);
    /* an ordinary private page again, every byte as it was */
    mapping_of(&view_old, perms);
    CHECK(perms[0] == 'r' && perms[1] == 'w' && perms[3] == 'p');
    for (int k = 0; k < 1024; k++) CHECK_EQ(view_old.v.neighbours[k], (uint8_t)(k * 7 + 1));
    CHECK_EQ(view_old.v.item.i, 5000 + n - 1);
    view_old.v.item.i = 1; /* writable again, untracked */
    CHECK_EQ(view_new.v.i, 5000 + n - 1);
    return 0;
}

/* ======================================================================================
 * views_fork: after fork, parent and child each have their own memory: the parent's
 * tracked writes never show in the child and the child's never in the parent, and each
 * side's writes still sync in its own memory.
 * ====================================================================================== */
int test_views_fork(void) {
    view_old.v.item.i = 10;
    view_old.v.neighbours[0] = 42;
    add_pair(&view_old.v.item, sizeof(struct A), ctr_old_to_new, &view_new.v, sizeof(struct A_v1), ctr_new_to_old);
    CHECK_EQ(polus_agent_sync_begin(), 0);
    CHECK_EQ(polus_agent_sync_initialize(POLUS_OLD), 1);
    int go[2], done[2];
    for (int round = 0; round < 20; round++) {
        CHECK(pipe(go) == 0 && pipe(done) == 0);
        *(volatile int *)&view_old.v.item.i = 1000 + round;
        barrier();
        pid_t pid = fork();
        if (pid == 0) {
            char c;
            /* wait until the parent has written after the fork */
            if (read(go[0], &c, 1) != 1) _exit(20);
            if (view_old.v.item.i != 1000 + round || view_new.v.i != 1000 + round) _exit(21); /* saw the parent */
            *(volatile int *)&view_old.v.item.i = 7; /* syncs in the child's memory */
            barrier();
            if (view_new.v.i != 7) _exit(22);
            *(volatile int *)&view_new.v.i = 8;
            barrier();
            if (view_old.v.item.i != 8) _exit(23);
            if (view_old.v.neighbours[0] != 42) _exit(24);
            if (write(done[1], "x", 1) != 1) _exit(25);
            _exit(0);
        }
        CHECK(pid > 0);
        close(done[1]); /* a child that dies makes the read below return 0 */
        close(go[0]);
        *(volatile int *)&view_old.v.item.i = 2000 + round; /* after the fork: the child must not see it */
        barrier();
        CHECK_EQ(view_new.v.i, 2000 + round);
        CHECK(write(go[1], "x", 1) == 1);
        char c;
        ssize_t got = read(done[0], &c, 1);
        int st = 0;
        CHECK(waitpid(pid, &st, 0) == pid);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            fprintf(stderr, "views_fork: child status %d (exit %d)\n", st, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        CHECK_EQ(got, 1);
        CHECK_EQ(view_old.v.item.i, 2000 + round); /* the child's writes stayed in the child */
        CHECK_EQ(view_new.v.i, 2000 + round);
        close(go[1]);
        close(done[0]);
    }
    printf("views_fork: 20 forks: parent and child kept apart, each synced its own writes\n");
    CHECK_EQ(polus_agent_sync_end(), 0);
    return 0;
}

/* ======================================================================================
 * two_items: two threads write two different items (two pairs) at the same time, one on
 * each side; no write is lost, every counterpart matches.
 * ====================================================================================== */
static union { struct A v[2]; char pad[4096]; } two_old PAGE_ALIGNED;
static union { struct A_v1 v[2]; char pad[4096]; } two_new PAGE_ALIGNED;
#define TWO_WRITES 100000

static void *two_writer(void *arg) {
    long t = (long)arg;
    for (int k = 0; k < TWO_WRITES; k++) {
        if (t == 0) __asm__ volatile("addl $1, %0" : "+m"(two_old.v[0].i));
        else __asm__ volatile("addl $1, %0" : "+m"(two_new.v[1].i));
    }
    return NULL;
}

int test_two_items(void) {
    add_pair(&two_old.v[0], sizeof(struct A), ctr_old_to_new, &two_new.v[0], sizeof(struct A_v1), ctr_new_to_old);
    add_pair(&two_old.v[1], sizeof(struct A), ctr_old_to_new, &two_new.v[1], sizeof(struct A_v1), ctr_new_to_old);
    CHECK_EQ(polus_agent_sync_begin(), 0);
    CHECK_EQ(polus_agent_sync_initialize(POLUS_OLD), 2);
    pthread_t th[2];
    double t0 = now_s();
    for (long t = 0; t < 2; t++) CHECK(pthread_create(&th[t], NULL, two_writer, (void *)t) == 0);
    for (int t = 0; t < 2; t++) pthread_join(th[t], NULL);
    double elapsed = now_s() - t0;
    printf("two_items: 2 x %d tracked writes to different items at once in %.2f s; old=(%d,%d) new=(%d,%d)\n",
           TWO_WRITES, elapsed, two_old.v[0].i, two_old.v[1].i, two_new.v[0].i, two_new.v[1].i);
    CHECK_EQ(two_old.v[0].i, TWO_WRITES);
    CHECK_EQ(two_new.v[0].i, TWO_WRITES);
    CHECK_EQ(two_new.v[1].i, TWO_WRITES);
    CHECK_EQ(two_old.v[1].i, TWO_WRITES);
    CHECK_EQ(SYNC.faults, 2 * TWO_WRITES);
    CHECK_EQ(stats().sync_writes, 0);
    printf("two_items: %llu of the writes on the fast path (no sync lock)\n", (unsigned long long)stats().fast_path);
    CHECK_EQ(stats().fast_path, 2 * TWO_WRITES); /* none took the sync lock */
    CHECK_EQ(stats().lock_waits, 0);             /* and neither ever waited for the other */
    CHECK_EQ(polus_agent_sync_end(), 0);
    return 0;
}

/* ======================================================================================
 * notified: a NEW item flagged POLUS_ITEM_WRITES_NOTIFIED stays writable; new code writes
 * it at full speed and calls polus_wrote; old code's writes to the OLD item are tracked.
 * ====================================================================================== */
static union { struct A v; char pad[4096]; } note_old PAGE_ALIGNED;
static union { struct A_v1 v; char pad[4096]; } note_new PAGE_ALIGNED;

int test_notified(void) {
    note_old.v.i = 3;
    uint32_t o = add_pair(&note_old.v, sizeof(struct A), ctr_old_to_new, &note_new.v, sizeof(struct A_v1), ctr_new_to_old);
    item_table()[o + 1].side |= POLUS_ITEM_WRITES_NOTIFIED;
    CHECK_EQ(polus_agent_sync_begin(), 0);
    CHECK_EQ(polus_agent_sync_initialize(POLUS_OLD), 1);
    CHECK_EQ(note_new.v.i, 3);
    char perms[5];
    mapping_of(&note_new, perms);
    CHECK(perms[1] == 'w'); /* the new side is not protected */
    mapping_of(&note_old, perms);
    CHECK(perms[1] == '-'); /* the old side is */
    uint64_t f0 = SYNC.faults;
    const int n = 100000;
    double t0 = now_s();
    for (int k = 0; k < n; k++) {
        note_new.v.i += 1; /* new code: a plain store */
        polus_wrote(&note_new.v);
    }
    double us = (now_s() - t0) * 1e6 / n;
    CHECK_EQ(SYNC.faults, f0); /* not one fault */
    CHECK_EQ(note_old.v.i, 3 + n);
    CHECK_EQ(item_table()[o + 1].sync_calls, n);
    polus_wrote(&note_new.v); /* nothing changed: no sync */
    CHECK_EQ(item_table()[o + 1].sync_calls, n);
    *(volatile int *)&note_old.v.i = 7; /* old code: tracked, synced to the new side */
    barrier();
    CHECK_EQ(note_new.v.i, 7);
    CHECK_EQ(SYNC.faults, f0 + 1);
    polus_wrote(&note_new.v); /* the old -> new sync's store was absorbed: nothing to send back */
    CHECK_EQ(item_table()[o + 1].sync_calls, n);
    printf("notified: %d new-side writes + polus_wrote, %.3f us each, 0 faults; old-side writes still tracked\n", n, us);
    CHECK_EQ(polus_agent_sync_end(), 0);
    return 0;
}
