/*
 * greeter-stack-<k>.so (k = 2..10): nine more distinct patches of the greeter's format_reply,
 * for the "patched ten times" throughput phase and the memory rows. Built from this one
 * source with -DBENCH_STACK_INDEX=k; with test-servers' greeter-v0-v1.so as the
 * first, they make ten.
 *
 * Each one answers exactly like greeter-v0-v1.so ("Hi there, <name>! (v1)"), so the load
 * client checks every reply the same way whichever is on top; applied on top of each other
 * they stack (the engine retargets the same trampoline), and rollbacks pop them in order.
 */
#include <stddef.h>
#include <stdio.h>

#include <polus/patch.h>

#ifndef BENCH_STACK_INDEX
#error "define BENCH_STACK_INDEX (2..10)"
#endif

#define BENCH_STR2(x) #x
#define BENCH_STR(x) BENCH_STR2(x)

/* The same contract as the greeter's format_reply: at most `cap` bytes, NUL-terminated. */
static int format_reply_stacked(char *out, size_t cap, const char *name)
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
    POLUS_NEW_FUNCTION(format_reply_stacked),
};

static const struct polus_mapping mappings[] = {
    POLUS_FUNCTION_MAPPING(0, 1),
};

POLUS_PATCH("bench-stack-" BENCH_STR(BENCH_STACK_INDEX), "greeter format_reply, stacked patch for benchmarks",
            functions, POLUS_ARRAY_COUNT(functions), NULL, 0, mappings, POLUS_ARRAY_COUNT(mappings),
            NULL, 0, NULL, 0, NULL, 0);
