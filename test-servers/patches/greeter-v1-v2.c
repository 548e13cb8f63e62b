/*
 * greeter-v1-v2.so — a second patch of the same old function: applied on top of
 * greeter-v0-v1.so (or directly on greeter-v1), HELLO answers "Greetings, <name>! (v2)".
 * The old function is still named "format_reply": the target's symbol, whatever
 * currently replaces it.
 */
#include <stddef.h>
#include <stdio.h>

#include <polus/patch.h>

static int format_reply_v2(char *out, size_t cap, const char *name)
{
    if (cap == 0)
        return 0;
    int n = snprintf(out, cap, "Greetings, %s! (v2)", name);
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
    POLUS_NEW_FUNCTION(format_reply_v2),
};

static const struct polus_mapping mappings[] = {
    POLUS_FUNCTION_MAPPING(0, 1),
};

POLUS_PATCH("greeter-v2", "greeter: HELLO answers \"Greetings, <name>! (v2)\"",
            functions, POLUS_ARRAY_COUNT(functions), NULL, 0,
            mappings, POLUS_ARRAY_COUNT(mappings), NULL, 0, NULL, 0, NULL, 0);
