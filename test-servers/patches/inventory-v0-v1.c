/*
 * inventory v0 -> v1: list nodes gain a field (last_bumped_by), so the list is heap data of a
 * changed type. The pre-update callback runs while every thread of the target is stopped: it
 * builds the v1 list from the v0 list and registers each old/new node pair with the agent,
 * which then protects both and syncs `count` both ways until no thread runs v0's bump/total.
 * On rollback (args->rollback) the pairs are registered again the other way round.
 */
#define _GNU_SOURCE
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <polus/patch.h>

struct item {
    int id;
    long count;
    struct item *next;
};

struct item_v1 {
    int id;
    long last_bumped_by;
    long count;
    struct item_v1 *next;
};

static struct item **inventory;  /* the old list head */
static sem_t *inventory_lock;
struct item_v1 *inventory_v1;

/* Node sync functions: copy the count to the counterpart (the agent passes both nodes). */
static void old_node_sync(const struct polus_sync_args *a) {
    ((struct item_v1 *)a->counterpart)->count = ((struct item *)a->written)->count;
}
static void new_node_sync(const struct polus_sync_args *a) {
    ((struct item *)a->counterpart)->count = ((struct item_v1 *)a->written)->count;
}

static int convert_list(const struct polus_callback_args *args) {
    if (!polus_register_heap_data) return -1; /* not running under the Polus agent */
    if (!inventory_v1) {
        struct item_v1 **tail = &inventory_v1;
        for (struct item *p = *inventory; p; p = p->next) {
            struct item_v1 *n = calloc(1, sizeof *n);
            if (!n) return -1;
            n->id = p->id;
            n->count = p->count;
            *tail = n;
            tail = &n->next;
        }
    }
    /* Start the side being brought in from the side in use, then pair the nodes. Every
     * other thread is stopped, so nothing changes under us. */
    struct item *p = *inventory;
    for (struct item_v1 *n = inventory_v1; p && n; p = p->next, n = n->next) {
        if (args->rollback) p->count = n->count;
        else n->count = p->count;
        if (polus_register_heap_data(p, n, sizeof *p, sizeof *n, old_node_sync, new_node_sync) != 0) return -1;
    }
    return 0;
}

void bump_v1(int id) {
    sem_wait(inventory_lock);
    for (struct item_v1 *p = inventory_v1; p; p = p->next) {
        if (p->id == id) {
            p->count++;
            p->last_bumped_by = gettid();
            break;
        }
    }
    sem_post(inventory_lock);
}

void total_v1(char *out, size_t cap) {
    long sum = 0;
    int n = 0;
    sem_wait(inventory_lock);
    for (struct item_v1 *p = inventory_v1; p; p = p->next, n++) sum += p->count;
    sem_post(inventory_lock);
    snprintf(out, cap, "version=1 total=%ld items=%d", sum, n);
}

enum { OLD_BUMP, NEW_BUMP, OLD_TOTAL, NEW_TOTAL };
static const struct polus_function functions[] = {
    [OLD_BUMP] = POLUS_OLD_FUNCTION("bump"), [NEW_BUMP] = POLUS_NEW_FUNCTION(bump_v1),
    [OLD_TOTAL] = POLUS_OLD_FUNCTION("total"), [NEW_TOTAL] = POLUS_NEW_FUNCTION(total_v1),
};
enum { OLD_LIST, NEW_LIST };
static const struct polus_data data[] = {
    [OLD_LIST] = {"inventory", 0, (void **)&inventory, 0, 0, 0, POLUS_OLD, POLUS_DATA_HEAP_ROOT},
    [NEW_LIST] = {"inventory_v1", (void *)&inventory_v1, 0, sizeof inventory_v1, 0, 0, POLUS_NEW, POLUS_DATA_HEAP_ROOT},
};
static const struct polus_mapping mappings[] = {
    POLUS_FUNCTION_MAPPING(OLD_BUMP, NEW_BUMP), POLUS_FUNCTION_MAPPING(OLD_TOTAL, NEW_TOTAL),
    POLUS_DATA_MAPPING(OLD_LIST, NEW_LIST),
    POLUS_F2D_MAPPING(OLD_BUMP, OLD_LIST), POLUS_F2D_MAPPING(OLD_TOTAL, OLD_LIST),
    POLUS_F2D_MAPPING(NEW_BUMP, NEW_LIST), POLUS_F2D_MAPPING(NEW_TOTAL, NEW_LIST),
};
static const struct polus_callback callbacks[] = {{POLUS_CB_PRE_UPDATE, 0, convert_list}};
static const struct polus_import imports[] = {POLUS_IMPORT("inventory_lock", &inventory_lock)};

POLUS_PATCH("inventory-v1", "list nodes gain last_bumped_by: heap data converted by a pre-update callback",
            functions, POLUS_ARRAY_COUNT(functions), data, POLUS_ARRAY_COUNT(data), mappings,
            POLUS_ARRAY_COUNT(mappings), callbacks, POLUS_ARRAY_COUNT(callbacks), imports,
            POLUS_ARRAY_COUNT(imports), NULL, 0);
