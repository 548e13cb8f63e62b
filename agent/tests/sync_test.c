/*
 * sync_test — the agent's write-through sync, exercised in real processes.
 *
 * One binary, one scenario per argument (ctest runs each in its own process): the test
 * process plays the patched target; it links libpolus-agent.so, fills registry.sync the way
 * the injector would, and calls the entry points directly.
 *
 * This file: main, the helpers and fixtures the scenarios share (sync_test.h). The
 * scenarios: sync_test_writes.c (basic, threads, false_sharing), sync_test_signals.c (chain,
 * fatal, end), sync_test_heap.c (heap), sync_test_emulation.c (emulation, perf),
 * sync_test_fence.c (fence), sync_test_views.c (one_fault, views_fork, two_items, notified).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "sync_test.h"

double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
pid_t gettid_(void) { return (pid_t)syscall(SYS_gettid); }

struct polus_tracked_item *item_table(void) { return (struct polus_tracked_item *)(uintptr_t)SYNC.items; }

uint32_t add_item(void *addr, uint64_t size, polus_sync_fn post, polus_sync_fn pre, uint32_t counterpart,
                  uint32_t side) {
    uint32_t n = SYNC.item_count;
    CHECK(polus_agent_sync_reserve(n + 1) != 0);
    struct polus_tracked_item *it = item_table() + n;
    memset(it, 0, sizeof *it);
    it->address = (uint64_t)(uintptr_t)addr;
    it->size = size;
    it->post_sync = (uint64_t)(uintptr_t)post;
    it->pre_sync = (uint64_t)(uintptr_t)pre;
    it->counterpart = counterpart;
    it->side = side;
    SYNC.item_count = n + 1;
    return n;
}
uint32_t add_pair(void *old_item, uint64_t old_size, polus_sync_fn old_post, void *new_item, uint64_t new_size,
                  polus_sync_fn new_post) {
    uint32_t n = SYNC.item_count;
    add_item(old_item, old_size, old_post, NULL, n + 1, POLUS_OLD);
    add_item(new_item, new_size, new_post, NULL, n, POLUS_NEW);
    return n;
}

struct polus_sync_stats stats(void) {
    struct polus_sync_stats s;
    polus_agent_sync_get_stats(&s);
    return s;
}

void page_perms(const void *addr, char out[3]) {
    FILE *f = fopen("/proc/self/maps", "r");
    CHECK(f);
    char line[512];
    out[0] = out[1] = '?';
    out[2] = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        char perms[5];
        if (sscanf(line, "%lx-%lx %4s", &lo, &hi, perms) == 3 && (uintptr_t)addr >= lo && (uintptr_t)addr < hi) {
            out[0] = perms[0];
            out[1] = perms[1];
        }
    }
    fclose(f);
}

/* ---- the paper's ab / ab_v1 ---------------------------------------------------------- */

union ab_page old_data PAGE_ALIGNED = {.v = {{5}, 7}};
union ab_v1_page new_data PAGE_ALIGNED;

volatile int old_to_new_calls, new_to_old_calls;
struct polus_sync_args last_args;

void ab_old_to_new(const struct polus_sync_args *args) { /* paper style: by name */
    last_args = *args;
    old_to_new_calls++;
    ab_v1.a.i = ab.a.i;
    ab_v1.b = ab.b;
}
void ab_new_to_old(const struct polus_sync_args *args) {
    last_args = *args;
    new_to_old_calls++;
    ab.a.i = ab_v1.a.i;
    ab.b = ab_v1.b;
}

void *(*volatile memset_fn)(void *, int, size_t) = memset;

/* ---- counters ------------------------------------------------------------------------ */

pthread_mutex_t pair_lock[PAIRS];
atomic_int stop_flag;

void ctr_old_to_new(const struct polus_sync_args *a) {
    ((struct A_v1 *)a->counterpart)->i = ((const struct A *)a->written)->i;
}
void ctr_new_to_old(const struct polus_sync_args *a) {
    ((struct A *)a->counterpart)->i = ((const struct A_v1 *)a->written)->i;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    CHECK(argc == 2);
    const char *t = argv[1];
    if (!strcmp(t, "basic")) return test_basic(0);
    if (!strcmp(t, "basic_step")) return test_basic(1);
    if (!strcmp(t, "threads")) return test_threads(0);
    if (!strcmp(t, "threads_step")) return test_threads(1); /* manual: not in ctest */
    if (!strcmp(t, "false_sharing")) return test_false_sharing();
    if (!strcmp(t, "chain")) return test_chain();
    if (!strcmp(t, "fatal")) return test_fatal();
    if (!strcmp(t, "end")) return test_end();
    if (!strcmp(t, "heap")) return test_heap();
    if (!strcmp(t, "emulation")) return test_emulation();
    if (!strcmp(t, "perf")) return test_perf();
    if (!strcmp(t, "fence")) return test_fence();
    if (!strcmp(t, "one_fault")) return test_one_fault();
    if (!strcmp(t, "views_fork")) return test_views_fork();
    if (!strcmp(t, "two_items")) return test_two_items();
    if (!strcmp(t, "notified")) return test_notified();
    fprintf(stderr, "unknown test %s\n", t);
    return 2;
}
