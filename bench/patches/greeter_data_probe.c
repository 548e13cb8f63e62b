/*
 * greeter-data-probe.so — a patch of the greeter that carries a data item: its request
 * counter `requests_count` mapped to a new copy, kept in step by write-through sync
 * functions (the POLUS paper's bidirectional sync). The data-update rows of the benchmark
 * try to apply it: until the engine implements data sync (issue 3) it refuses such patches
 * and the rows say "pending"; the refusal is checked in every run.
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

static const struct polus_function functions[] = {
    POLUS_OLD_FUNCTION("format_reply"),
    POLUS_NEW_FUNCTION(format_reply_v1),
};

static const struct polus_data data[] = {
    POLUS_OLD_DATA("requests_count", &requests_count_old, 0, copy_counter, NULL),
    POLUS_NEW_DATA(requests_count_v1, copy_counter, NULL),
};

static const struct polus_mapping mappings[] = {
    POLUS_FUNCTION_MAPPING(0, 1),
    POLUS_DATA_MAPPING(0, 1),
};

POLUS_PATCH("bench-data-probe", "greeter: format_reply v1 and a tracked copy of requests_count",
            functions, POLUS_ARRAY_COUNT(functions), data, POLUS_ARRAY_COUNT(data),
            mappings, POLUS_ARRAY_COUNT(mappings), NULL, 0, NULL, 0, NULL, 0);
