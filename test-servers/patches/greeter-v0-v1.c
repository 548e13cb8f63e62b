/*
 * greeter-v0-v1.so — the first Polus test patch: greeter v0 -> v1.
 *
 * Replaces the target's format_reply ("Hello, <name>! (v0)") with format_reply_v1
 * ("Hi there, <name>! (v1)"). Same contract as the original: write at most `cap` bytes,
 * NUL-terminated, and return the length of the reply (0 <= n < cap).
 *
 * greeter-v0-v1-static.c #includes this file with GREETER_PATCH_OLD_NAME and
 * GREETER_PATCH_NAME set, to name a file-static format_reply instead.
 */
#include <stddef.h>
#include <stdio.h>

#include <polus/patch.h>

#ifndef GREETER_PATCH_OLD_NAME
#define GREETER_PATCH_OLD_NAME "format_reply"
#endif
#ifndef GREETER_PATCH_NAME
#define GREETER_PATCH_NAME "greeter-v1"
#endif

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
    POLUS_OLD_FUNCTION(GREETER_PATCH_OLD_NAME), /* 0 */
    POLUS_NEW_FUNCTION(format_reply_v1),        /* 1 */
};

static const struct polus_mapping mappings[] = {
    POLUS_FUNCTION_MAPPING(0, 1),
};

POLUS_PATCH(GREETER_PATCH_NAME, "greeter: HELLO answers \"Hi there, <name>! (v1)\"",
            functions, POLUS_ARRAY_COUNT(functions), NULL, 0,
            mappings, POLUS_ARRAY_COUNT(mappings), NULL, 0, NULL, 0, NULL, 0);
