/*
 * reply.h — the functions a Polus patch replaces in the greeter test server.
 *
 * format_reply() lives in reply.c, its own translation unit, so that it stays a real,
 * separately callable function in every build variant (see test-servers/README.md).
 */
#ifndef GREETER_REPLY_H
#define GREETER_REPLY_H

#include <stddef.h>

/*
 * Writes the HELLO reply for `name` into `out` (at most `cap` bytes, NUL-terminated) and
 * returns the length of the reply, 0 <= n < cap. v0: "Hello, <name>! (v0)".
 * In the GREETER_STATIC_REPLY variants it is a file-static function of greeter.c instead
 * (greeter.c #includes reply.c), so it is not declared here.
 */
#ifndef GREETER_STATIC_REPLY
int format_reply(char *out, size_t cap, const char *name);
#endif

/*
 * GREETER_AMBIGUOUS variant only: formats "ERR <message>" through *another* file-static
 * function called format_reply (other_reply.c), so that the bare name "format_reply" is
 * ambiguous in that binary and a patch has to say "greeter.c:format_reply".
 */
int format_error(char *out, size_t cap, const char *message);

#endif /* GREETER_REPLY_H */
