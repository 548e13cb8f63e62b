/*
 * greeter-v0-v1-data.so — format_reply v1 plus a data item: the greeter's request counter
 * `requests_count` (one atomic increment per HELLO, from worker threads that block every
 * signal) mapped to a new copy, kept in step by write-through sync functions (the POLUS
 * paper's bidirectional sync). The counter shares its page with others the ticker thread
 * increments (false sharing). The patch also says the old `worker_thread` uses the counter:
 * every worker runs that loop for good, so the update stays in its sync phase until it is
 * rolled back — what data_update_test needs, and the benchmark's row D1 (throughput of a
 * request-driven server while a data update syncs).
 */
#include <stddef.h>
#include <stdio.h>

#include <polus/patch.h>

static long requests_count_v1;
static long *requests_count_old;

/* After a write to the old counter, copy it to the new one, and the other way round. */
static void copy_counter(const struct polus_sync_args *args)
{
    *(long *)args->counterpart = *(const long *)args->written;
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
    POLUS_OLD_DATA("requests_count", &requests_count_old, 0, copy_counter, NULL),
    POLUS_NEW_DATA(requests_count_v1, copy_counter, NULL),
};

static const struct polus_mapping mappings[] = {
    POLUS_FUNCTION_MAPPING(OLD_FORMAT_REPLY, NEW_FORMAT_REPLY),
    POLUS_DATA_MAPPING(0, 1),
    POLUS_F2D_MAPPING(OLD_WORKER, 0),
};

POLUS_PATCH("greeter-v1-data", "greeter: format_reply v1 and a tracked copy of requests_count",
            functions, POLUS_ARRAY_COUNT(functions), data, POLUS_ARRAY_COUNT(data),
            mappings, POLUS_ARRAY_COUNT(mappings), NULL, 0, NULL, 0, NULL, 0);
