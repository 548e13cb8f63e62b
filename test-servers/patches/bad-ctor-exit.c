/*
 * bad-ctor-exit.so / bad-ctor-loop.so — a patch whose constructor calls exit(3), or (with
 * CTOR_LOOP) never returns. Either would end or hang the process that loads it: the rehearsal
 * loads it in a copy first, and the target is never touched.
 */
#include <stdlib.h>

#include "bad-common.h"

__attribute__((constructor)) static void broken_constructor(void)
{
#ifdef CTOR_LOOP
    for (;;) __asm__ volatile("pause" ::: "memory");
#else
    exit(3);
#endif
}

static const struct polus_function functions[] = {
    POLUS_OLD_FUNCTION("format_reply"),
    POLUS_NEW_FUNCTION(format_reply_v1),
};

static const struct polus_mapping mappings[] = {
    POLUS_FUNCTION_MAPPING(0, 1),
};

#ifdef CTOR_LOOP
POLUS_PATCH("bad-ctor-loop", "its constructor never returns",
#else
POLUS_PATCH("bad-ctor-exit", "its constructor calls exit()",
#endif
            functions, POLUS_ARRAY_COUNT(functions), NULL, 0,
            mappings, POLUS_ARRAY_COUNT(mappings), NULL, 0, NULL, 0, NULL, 0);
