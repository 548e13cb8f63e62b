/*
 * other_reply.c — greeter-v0-ambiguous only.
 *
 * A second file-static function named format_reply, with the very same prototype as the
 * one in greeter.c, used to format error replies. In that binary the plain symbol name
 * "format_reply" matches two local symbols (one after the STT_FILE symbol "greeter.c",
 * one after "other_reply.c"): a patch must say "greeter.c:format_reply", and an engine
 * that patched this one by mistake would turn "ERR unknown command" into a greeting.
 */
#include <stdio.h>

#include "reply.h"

static __attribute__((noinline, noclone, noipa)) int
format_reply(char *out, size_t cap, const char *message)
{
    if (cap == 0)
        return 0;
    int n = snprintf(out, cap, "ERR %s", message);
    if (n < 0) {
        out[0] = '\0';
        return 0;
    }
    if ((size_t)n >= cap)
        n = (int)(cap - 1);
    return n;
}

int format_error(char *out, size_t cap, const char *message)
{
    return format_reply(out, cap, message);
}
