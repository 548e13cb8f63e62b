/*
 * sync_test_heap.c — agent_sync_test scenario: heap data registered with
 * polus_register_heap_data, before and during sync (heap).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "sync_test.h"

/* ======================================================================================
 * 7. heap data: a linked list whose node type changed, converted by a "pre-update
 *    callback" and kept in sync with polus_register_heap_data.
 * ====================================================================================== */
struct node { int value; struct node *next; };
struct node_v1 { long value; unsigned gen; struct node_v1 *next; };
static struct { struct node *head; char pad[4096 - sizeof(void *)]; } heads_old PAGE_ALIGNED;
static struct { struct node_v1 *head; char pad[4096 - sizeof(void *)]; } heads_new PAGE_ALIGNED;
#define MAX_NODES 64
static struct { struct node *o; struct node_v1 *n; } node_map[MAX_NODES];
static int node_map_count;
static pthread_mutex_t list_lock = PTHREAD_MUTEX_INITIALIZER;

static struct node_v1 *to_new(struct node *o) {
    for (int k = 0; k < node_map_count; k++) if (node_map[k].o == o) return node_map[k].n;
    return NULL;
}
static struct node *to_old(struct node_v1 *n) {
    for (int k = 0; k < node_map_count; k++) if (node_map[k].n == n) return node_map[k].o;
    return NULL;
}
/* Counterparts for nodes the old code links in during the update: sync functions run in a
 * signal handler, so they take them from a pool instead of calling malloc. */
static struct { struct node_v1 n[8]; char pad[4096 - 8 * sizeof(struct node_v1)]; } pool PAGE_ALIGNED;
static int pool_used;
static void node_old_to_new(const struct polus_sync_args *a);
static void node_new_to_old(const struct polus_sync_args *a);
static struct node_v1 *adopt(struct node *o) { /* from a sync function: registers the new pair */
    struct node_v1 *n = &pool.n[pool_used++];
    n->value = o->value;
    n->next = to_new(o->next);
    node_map[node_map_count].o = o;
    node_map[node_map_count].n = n;
    node_map_count++;
    CHECK_EQ(polus_register_heap_data(o, n, sizeof *o, sizeof *n, node_old_to_new, node_new_to_old), 0);
    return n;
}
static void node_old_to_new(const struct polus_sync_args *a) {
    const struct node *o = a->written;
    struct node_v1 *n = a->counterpart;
    struct node_v1 *next = to_new(o->next);
    if (o->next && !next) next = adopt(o->next);
    n->value = o->value;
    n->next = next;
}
static void node_new_to_old(const struct polus_sync_args *a) {
    const struct node_v1 *n = a->written;
    struct node *o = a->counterpart;
    o->value = (int)n->value;
    o->next = to_old(n->next);
}
static void head_old_to_new(const struct polus_sync_args *a) { (void)a; heads_new.head = to_new(heads_old.head); }
static void head_new_to_old(const struct polus_sync_args *a) { (void)a; heads_old.head = to_old(heads_new.head); }

static void check_lists(const int *expected, int count) {
    struct node *o = heads_old.head;
    struct node_v1 *n = heads_new.head;
    for (int k = 0; k < count; k++) {
        CHECK(o && n);
        CHECK_EQ(o->value, expected[k]);
        CHECK_EQ(n->value, expected[k]);
        CHECK(to_new(o) == n);
        o = o->next;
        n = n->next;
    }
    CHECK(!o && !n);
}

static void convert_node(struct node *o) { /* what a pre-update callback does */
    struct node_v1 *n = calloc(1, sizeof *n);
    n->value = o->value;
    node_map[node_map_count].o = o;
    node_map[node_map_count].n = n;
    node_map_count++;
}

static void *list_worker(void *arg) {
    long t = (long)arg;
    for (int k = 0; k < 300; k++) {
        pthread_mutex_lock(&list_lock);
        if (t == 0) for (struct node *o = heads_old.head; o; o = o->next) o->value += 1;
        else for (struct node_v1 *n = heads_new.head; n; n = n->next) n->value += 1;
        pthread_mutex_unlock(&list_lock);
        free(malloc(24)); /* heap metadata on tracked pages: false sharing */
    }
    return NULL;
}

int test_heap(void) {
    struct node *prev = NULL;
    for (int v = 5; v >= 1; v--) {
        struct node *o = malloc(sizeof *o);
        o->value = v;
        o->next = prev;
        prev = o;
    }
    heads_old.head = prev;
    /* the pre-update callback: allocate and convert, link, register each pair */
    for (struct node *o = heads_old.head; o; o = o->next) convert_node(o);
    barrier();
    for (int k = 0; k < node_map_count; k++) {
        node_map[k].n->next = to_new(node_map[k].o->next);
        CHECK_EQ(polus_register_heap_data(node_map[k].o, node_map[k].n, sizeof(struct node), sizeof(struct node_v1),
                                          node_old_to_new, node_new_to_old),
                 0);
    }
    heads_new.head = to_new(heads_old.head);
    barrier();
    CHECK_EQ(polus_register_heap_data(&heads_old.head, &heads_new.head, sizeof(void *), sizeof(void *),
                                      head_old_to_new, head_new_to_old),
             0);
    CHECK_EQ(SYNC.item_count, 12);
    CHECK_EQ(polus_agent_sync_begin(), 0);
    CHECK_EQ(polus_agent_sync_initialize(POLUS_OLD), 6);
    check_lists((int[]){1, 2, 3, 4, 5}, 5);

    for (struct node *o = heads_old.head; o; o = o->next) o->value += 10; /* old code */
    barrier();
    check_lists((int[]){11, 12, 13, 14, 15}, 5);
    for (struct node_v1 *n = heads_new.head; n; n = n->next) n->value *= 2; /* new code */
    barrier();
    check_lists((int[]){22, 24, 26, 28, 30}, 5);
    heads_old.head->next = heads_old.head->next->next; /* old code unlinks the second node */
    barrier();
    check_lists((int[]){22, 26, 28, 30}, 4);
    heads_new.head = heads_new.head->next; /* new code pops the first */
    barrier();
    check_lists((int[]){26, 28, 30}, 3);

    /* an insertion while sync is active: a new pair registered (and protected) on the fly */
    struct node *o6 = malloc(sizeof *o6);
    o6->value = 27;
    o6->next = NULL;
    convert_node(o6);
    struct node_v1 *n6 = node_map[node_map_count - 1].n;
    CHECK_EQ(polus_register_heap_data(o6, n6, sizeof *o6, sizeof *n6, node_old_to_new, node_new_to_old), 0);
    CHECK_EQ(n6->value, 27); /* old_post_sync ran once */
    n6->next = heads_new.head->next; /* new code links it after the first node */
    barrier();
    heads_new.head->next = n6;
    barrier();
    check_lists((int[]){26, 27, 28, 30}, 4);

    /* both versions of the code at once, plus malloc traffic on the tracked heap pages */
    pthread_t th[2];
    for (long t = 0; t < 2; t++) CHECK(pthread_create(&th[t], NULL, list_worker, (void *)t) == 0);
    for (int t = 0; t < 2; t++) pthread_join(th[t], NULL);
    check_lists((int[]){626, 627, 628, 630}, 4);

    /* old code appends a node the new side has never seen: the sync function adopts it
     * (registration from inside the signal handler, table rebuilt on the fly) */
    struct node *last = heads_old.head;
    while (last->next) last = last->next;
    struct node *o7 = malloc(sizeof *o7);
    o7->value = 631;
    o7->next = NULL;
    barrier();
    last->next = o7;
    barrier();
    check_lists((int[]){626, 627, 628, 630, 631}, 5);
    CHECK_EQ(pool_used, 1);
    struct node_v1 *n7 = to_new(o7);
    n7->value = 700; /* the adopted pair is tracked both ways */
    barrier();
    CHECK_EQ(o7->value, 700);
    printf("heap: %u items, faults=%llu false_sharing=%llu\n", SYNC.item_count, (unsigned long long)SYNC.faults,
           (unsigned long long)SYNC.false_sharing);
    CHECK_EQ(polus_agent_sync_end(), 0);
    return 0;
}
