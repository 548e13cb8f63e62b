/*
 * bad-sync-fault*.so — the greeter's data patch (greeter-v0-v1-data.c) with a sync function
 * that dereferences NULL on its Nth call, after writing garbage into its counterpart. It
 * must not take the greeter down: the fault is caught, the update abandoned, the counterpart
 * put back, and the greeter's own counter (requests_count, written by its old worker code on
 * every HELLO) keeps every increment.
 *
 * Built in four variants (test-servers/CMakeLists.txt) from these macros:
 *   FAULT_TO_OLD       0: copy_to_new (old -> new) faults; 1: copy_to_old (new -> old)
 *   FAULT_IN_ROLLBACK  0: counting starts with the apply; 1: with the rollback (the pre-update
 *                      callback of that direction arms it)
 *   FAULT_ON_CALL      N: the Nth call of that function once armed faults
 *   CALLBACK_FAULT     1: no sync function faults (FAULT_ON_CALL -1); the post-update callback
 *                      dereferences NULL, run by Polus while write tracking is still on;
 *                      2: it calls abort() instead; 3: it writes the new counter, so the
 *                      new -> old sync function runs on the thread Polus borrowed
 *   FAULT_KIND         what the bug is: 0 a NULL dereference (SIGSEGV), 1 abort() (SIGABRT),
 *                      2 a loop that never ends
 *   WATCH              which items the patch says the old worker_thread uses: 1 the old one
 *                      (an apply syncs for good: every worker runs worker_thread), 2 the new
 *                      one (a rollback does), 3 both; a direction that watches nothing ends at
 *                      its first inspection
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include <polus/patch.h>

#ifndef FAULT_TO_OLD
#define FAULT_TO_OLD 0
#endif
#ifndef FAULT_IN_ROLLBACK
#define FAULT_IN_ROLLBACK 0
#endif
#ifndef FAULT_ON_CALL
#define FAULT_ON_CALL 3
#endif
#ifndef WATCH
#define WATCH 1
#endif
#ifndef FAULT_KIND
#define FAULT_KIND 0
#endif
#ifndef CALLBACK_FAULT
#define CALLBACK_FAULT 0
#endif

static long requests_count_v1;
static long *requests_count_old;

static volatile int armed;
static volatile long calls;
static int *volatile nowhere;

/* Half a conversion, then the bug. Sync functions run one at a time (the agent's lock). */
static void copy(const struct polus_sync_args *args, int faulty)
{
    if (faulty && armed && ++calls == FAULT_ON_CALL) {
        *(volatile long *)args->counterpart = -1;
#if FAULT_KIND == 1
        abort();
#elif FAULT_KIND == 2
        for (;;) __asm__ volatile("pause" ::: "memory");
#else
        *(volatile int *)nowhere = 1;
#endif
    }
    *(long *)args->counterpart = *(const long *)args->written;
}

static void copy_to_new(const struct polus_sync_args *args) { copy(args, !FAULT_TO_OLD); }
static void copy_to_old(const struct polus_sync_args *args) { copy(args, FAULT_TO_OLD); }

static int arm(const struct polus_callback_args *args)
{
    if ((int)args->rollback == FAULT_IN_ROLLBACK) {
        calls = 0;
        armed = 1;
    }
    return 0;
}

static int format_reply_v1(char *out, size_t cap, const char *name)
{
    if (cap == 0)
        return 0;
    int n = snprintf(out, cap, "Hi there, %s! (v1)", name);
    if (n < 0) {
        out[0] = '\0';
        return 0;
    }
    if ((size_t)n >= cap)
        n = (int)(cap - 1);
    return n;
}

enum { OLD_FORMAT_REPLY, NEW_FORMAT_REPLY, OLD_WORKER };

static const struct polus_function functions[] = {
    [OLD_FORMAT_REPLY] = POLUS_OLD_FUNCTION("format_reply"),
    [NEW_FORMAT_REPLY] = POLUS_NEW_FUNCTION(format_reply_v1),
    [OLD_WORKER] = POLUS_OLD_FUNCTION("greeter.c:worker_thread"),
};

static const struct polus_data data[] = {
    POLUS_OLD_DATA("requests_count", &requests_count_old, 0, copy_to_new, NULL),
    POLUS_NEW_DATA(requests_count_v1, copy_to_old, NULL),
};

static const struct polus_mapping mappings[] = {
    POLUS_FUNCTION_MAPPING(OLD_FORMAT_REPLY, NEW_FORMAT_REPLY),
    POLUS_DATA_MAPPING(0, 1),
#if WATCH & 1
    POLUS_F2D_MAPPING(OLD_WORKER, 0),
#endif
#if WATCH & 2
    POLUS_F2D_MAPPING(OLD_WORKER, 1),
#endif
};

#if CALLBACK_FAULT
static int crash(const struct polus_callback_args *args)
{
    (void)args;
#if CALLBACK_FAULT == 2
    abort();
#elif CALLBACK_FAULT == 3
    /* A tracked write on the thread Polus borrowed: the agent's handler runs copy_to_old
     * there, inside the agent's fence, with the sync lock (or the pair's) taken. */
    ++*(volatile long *)&requests_count_v1;
    return 0;
#endif
    return *(volatile int *)nowhere;
}
static const struct polus_callback callbacks[] = {{POLUS_CB_PRE_UPDATE, 0, arm}, {POLUS_CB_POST_UPDATE, 0, crash}};
#else
static const struct polus_callback callbacks[] = {{POLUS_CB_PRE_UPDATE, 0, arm}};
#endif

POLUS_PATCH("bad-sync-fault", "greeter: a data patch whose sync function dereferences NULL",
            functions, POLUS_ARRAY_COUNT(functions), data, POLUS_ARRAY_COUNT(data),
            mappings, POLUS_ARRAY_COUNT(mappings), callbacks, POLUS_ARRAY_COUNT(callbacks), NULL, 0, NULL, 0);
