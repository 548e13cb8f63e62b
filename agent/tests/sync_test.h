/*
 * sync_test.h — what the scenarios of agent_sync_test share: checks, the way the injector
 * fills registry.sync, and the fixtures several scenarios use (the paper's ab / ab_v1 pair,
 * the counters' sync functions). Defined in sync_test.c.
 *
 * Include it after defining _GNU_SOURCE.
 */
#ifndef POLUS_AGENT_SYNC_TEST_H
#define POLUS_AGENT_SYNC_TEST_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>

#include "polus/agent_abi.h"
#include "polus/patch.h"
#include "sync.h"

extern struct polus_agent_registry polus_agent_registry;
#define SYNC polus_agent_registry.sync

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            exit(1);                                                                 \
        }                                                                            \
    } while (0)
#define CHECK_EQ(a, b)                                                                              \
    do {                                                                                            \
        long long a_ = (long long)(a), b_ = (long long)(b);                                         \
        if (a_ != b_) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK_EQ failed: %s == %s (%lld vs %lld)\n", __FILE__, __LINE__, \
                    #a, #b, a_, b_);                                                                \
            exit(1);                                                                                \
        }                                                                                           \
    } while (0)

#define PAGE_ALIGNED __attribute__((aligned(4096)))
/* A tracked write runs sync functions inside a signal handler: the compiler must not keep
 * values it read before the write (barrier), and counters set by handlers are volatile. */
#define barrier() __asm__ volatile("" ::: "memory")

double now_s(void);
pid_t gettid_(void);
struct polus_tracked_item *item_table(void);

/* Appends an item the way the injector does: reserve, write the entry, raise item_count. */
uint32_t add_item(void *addr, uint64_t size, polus_sync_fn post, polus_sync_fn pre, uint32_t counterpart,
                  uint32_t side);
/* An old/new pair; returns the old item's index (the new one is +1). */
uint32_t add_pair(void *old_item, uint64_t old_size, polus_sync_fn old_post, void *new_item, uint64_t new_size,
                  polus_sync_fn new_post);

struct polus_sync_stats stats(void);

/* Protection of the page holding addr, from /proc/self/maps ("rw-p" -> "rw"). */
void page_perms(const void *addr, char out[3]);

/* ---- the paper's ab / ab_v1 (Fig. 2): basic, chain, fatal ---------------------------- */

struct A { int i; };
struct AB { struct A a; int b; };
struct A_v1 { int j; int i; };
struct AB_v1 { struct A_v1 a; int b; };

/* The "target's" .data page and the "patch's" one: nothing else lives on them. */
union ab_page { struct AB v; char pad[4096]; };
union ab_v1_page { struct AB_v1 v; char pad[4096]; };
extern union ab_page old_data;
extern union ab_v1_page new_data;
#define ab old_data.v
#define ab_v1 new_data.v

extern volatile int old_to_new_calls, new_to_old_calls;
extern struct polus_sync_args last_args; /* of the last ab sync function run */
void ab_old_to_new(const struct polus_sync_args *args); /* paper style: by name */
void ab_new_to_old(const struct polus_sync_args *args);

/* glibc's memset, called through a pointer so that the compiler keeps the call. */
extern void *(*volatile memset_fn)(void *, int, size_t);

/* ---- counters: threads, fatal, end, perf --------------------------------------------- */

#define PAIRS 4
extern pthread_mutex_t pair_lock[PAIRS];
extern atomic_int stop_flag;
void ctr_old_to_new(const struct polus_sync_args *a); /* struct A -> struct A_v1, through args */
void ctr_new_to_old(const struct polus_sync_args *a);

/* ---- the scenarios ------------------------------------------------------------------- */

int test_basic(int single_step);        /* sync_test_writes.c */
int test_threads(int single_step);
int test_false_sharing(void);
int test_chain(void);                   /* sync_test_signals.c */
int test_fatal(void);
int test_end(void);
int test_heap(void);                    /* sync_test_heap.c */
int test_emulation(void);               /* sync_test_emulation.c */
int test_perf(void);
int test_fence(void);                   /* sync_test_fence.c */
int test_one_fault(void);               /* sync_test_views.c */
int test_views_fork(void);
int test_two_items(void);
int test_notified(void);

#endif /* POLUS_AGENT_SYNC_TEST_H */
