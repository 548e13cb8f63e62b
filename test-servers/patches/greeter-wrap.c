/*
 * greeter-wrap.so — a wrapper: the new format_reply calls the version it replaces (through
 * its OLD function's `resolved` slot) and adds to its result. On greeter-v0 the reply becomes
 * "Hello, ann! (v0) [wrapped]"; stacked on greeter-v0-v1.so, "Hi there, ann! (v1) [wrapped]".
 * Built again with -DWRAP_TAG='" [again]"' as greeter-wrap-again.so, to stack on it, and with
 * -DCHECK_FIRST=1 as greeter-wrap-checked.so, whose pre-update callback calls the version it
 * replaces before the commit (and refuses the update if that does not answer as expected): the
 * `resolved` slot must be filled wherever the callback runs, the rehearsal's copy included.
 */
#include <string.h>

#include <polus/patch.h>

#ifndef WRAP_TAG
#define WRAP_TAG " [wrapped]"
#endif
#ifndef WRAP_NAME
#define WRAP_NAME "greeter-wrap"
#endif

static int (*replaced_format_reply)(char *out, size_t cap, const char *name);

int format_reply_wrapped(char *out, size_t cap, const char *name) {
    int n = replaced_format_reply(out, cap, name);
    static const char tail[] = WRAP_TAG;
    if (n < 0 || (size_t)n + sizeof tail > cap) return n;
    memcpy(out + n, tail, sizeof tail);
    return n + (int)sizeof tail - 1;
}

static const struct polus_function functions[] = {
    POLUS_OLD_FUNCTION_AT("format_reply", &replaced_format_reply), /* [0] */
    POLUS_NEW_FUNCTION(format_reply_wrapped),                      /* [1] */
};
static const struct polus_mapping mappings[] = {POLUS_FUNCTION_MAPPING(0, 1)};

#if CHECK_FIRST
static int check_replaced(const struct polus_callback_args *args) {
    (void)args;
    char reply[128];
    int n = replaced_format_reply(reply, sizeof reply, "check");
    return n > 0 && (strncmp(reply, "Hello, check!", 13) == 0 || strncmp(reply, "Hi there, check!", 16) == 0) ? 0 : 1;
}
static const struct polus_callback callbacks[] = {{POLUS_CB_PRE_UPDATE, 0, check_replaced}};
POLUS_PATCH(WRAP_NAME, "format_reply calls the version it replaces and adds to it", functions,
            POLUS_ARRAY_COUNT(functions), NULL, 0, mappings, POLUS_ARRAY_COUNT(mappings), callbacks,
            POLUS_ARRAY_COUNT(callbacks), NULL, 0, NULL, 0);
#else
POLUS_PATCH(WRAP_NAME, "format_reply calls the version it replaces and adds to it", functions,
            POLUS_ARRAY_COUNT(functions), NULL, 0, mappings, POLUS_ARRAY_COUNT(mappings), NULL, 0, NULL, 0, NULL, 0);
#endif
