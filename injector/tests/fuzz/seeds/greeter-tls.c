/* A corpus seed with thread-local data (PT_TLS, TLS relocations): the greeter v0 -> v1 patch
 * counting its replies per thread. Built by make-corpus.sh only. */
#include <stdio.h>

#include <polus/patch.h>

static __thread int replies;

int format_reply_v1(char *out, size_t cap, const char *name) {
    return snprintf(out, cap, "Hi there, %s! (v1, reply %d of this thread)", name, ++replies);
}

static const struct polus_function functions[] = {
    POLUS_OLD_FUNCTION("format_reply"),
    POLUS_NEW_FUNCTION(format_reply_v1),
};
static const struct polus_mapping mappings[] = {POLUS_FUNCTION_MAPPING(0, 1)};

POLUS_PATCH("greeter-tls", "v0 -> v1 with a per-thread reply count", functions, POLUS_ARRAY_COUNT(functions), NULL, 0,
            mappings, POLUS_ARRAY_COUNT(mappings), NULL, 0, NULL, 0, NULL, 0);
