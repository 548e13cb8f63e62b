/*
 * greeter-callbacks.so — a patch that redirects nothing and changes no data: it only runs
 * callbacks. The pre-update callback fixes a value in the running server (its request
 * counter, reached through an import, set to 1000000), and the post-update callback, run
 * once the patch is committed, counts one more. (A patch that changes no data runs no
 * callback at rollback; `rollback` below is for completeness.)
 * STATS shows what ran.
 */
#include <polus/patch.h>

static long *requests; /* the greeter's `atomic_long requests_count` */

static int fix_counter(const struct polus_callback_args *args) {
    if (!requests) return 1; /* refuses: the import was not filled */
    __atomic_store_n(requests, args->rollback ? 0 : 1000000, __ATOMIC_SEQ_CST);
    return 0;
}

static int count_the_fix(const struct polus_callback_args *args) {
    (void)args;
    __atomic_fetch_add(requests, 1, __ATOMIC_SEQ_CST);
    return 0;
}

static const struct polus_callback callbacks[] = {
    {POLUS_CB_PRE_UPDATE, 0, fix_counter},
    {POLUS_CB_POST_UPDATE, 0, count_the_fix},
};
static const struct polus_import imports[] = {POLUS_IMPORT("requests_count", &requests)};

POLUS_PATCH("greeter-callbacks", "fix the request counter in a callback", NULL, 0, NULL, 0, NULL, 0, callbacks,
            POLUS_ARRAY_COUNT(callbacks), imports, POLUS_ARRAY_COUNT(imports), NULL, 0);
