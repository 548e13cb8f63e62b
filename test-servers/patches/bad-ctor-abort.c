/*
 * bad-ctor-abort.so — a patch whose constructor calls abort(). Loading it must fail
 * with the target left running, and the signal its constructor raised must never be
 * delivered to the target as its own.
 */
#include <stdlib.h>

#include "bad-common.h"

__attribute__((constructor)) static void broken_constructor(void)
{
    abort();
}

static const struct polus_function functions[] = {
    POLUS_OLD_FUNCTION("format_reply"),
    POLUS_NEW_FUNCTION(format_reply_v1),
};

static const struct polus_mapping mappings[] = {
    POLUS_FUNCTION_MAPPING(0, 1),
};

POLUS_PATCH("bad-ctor-abort", "its constructor crashes",
            functions, POLUS_ARRAY_COUNT(functions), NULL, 0,
            mappings, POLUS_ARRAY_COUNT(mappings), NULL, 0, NULL, 0, NULL, 0);
