/*
 * reply.c — format_reply(), the function the greeter patches replace.
 *
 * Built as its own translation unit (greeter-v0, -v1, -v0-stripped, -v0-cet), or
 * #included into greeter.c with GREETER_STATIC_REPLY defined, where it becomes a
 * file-static function of greeter.c (greeter-v0-static, greeter-v0-ambiguous).
 *
 * It must stay a real function at every call site: noinline + noclone keep gcc from
 * inlining it or emitting specialised copies (format_reply.isra.0, .constprop.0, ...), and
 * noipa keeps callers from relying on what gcc learnt about its body (e.g. its return
 * value range), which a patched version might not honour.
 */
#include <stdio.h>

#include "reply.h"

#ifndef GREETER_VERSION
#define GREETER_VERSION 0
#endif

#ifdef GREETER_STATIC_REPLY
#define GREETER_REPLY_LINKAGE static
#else
#define GREETER_REPLY_LINKAGE
#endif

GREETER_REPLY_LINKAGE __attribute__((noinline, noclone, noipa)) int
format_reply(char *out, size_t cap, const char *name)
{
    if (cap == 0)
        return 0;
#if GREETER_VERSION == 0
    int n = snprintf(out, cap, "Hello, %s! (v0)", name);
#elif GREETER_VERSION == 1
    int n = snprintf(out, cap, "Hi there, %s! (v1)", name);
#else
#error "GREETER_VERSION must be 0 or 1"
#endif
    if (n < 0) {
        out[0] = '\0';
        return 0;
    }
    if ((size_t)n >= cap)
        n = (int)(cap - 1); /* truncated */
    return n;
}
