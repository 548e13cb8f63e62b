/*
 * bad-pre-update-segv.so — a patch whose pre-update callback dereferences NULL. It runs in
 * the commit pause; the apply must fail with every jump unwritten and the target running.
 */
#include <stdlib.h>

#include "bad-common.h"

static int broken_pre_update(const struct polus_callback_args *args)
{
    (void)args;
    return *(volatile int *)(getenv("POLUS_NO_SUCH_VARIABLE_EVER"));
}

static const struct polus_function functions[] = {
    POLUS_OLD_FUNCTION("format_reply"),
    POLUS_NEW_FUNCTION(format_reply_v1),
};

static const struct polus_mapping mappings[] = {
    POLUS_FUNCTION_MAPPING(0, 1),
};

static const struct polus_callback callbacks[] = {{POLUS_CB_PRE_UPDATE, 0, broken_pre_update}};

POLUS_PATCH("bad-pre-update-segv", "its pre-update callback crashes",
            functions, POLUS_ARRAY_COUNT(functions), NULL, 0,
            mappings, POLUS_ARRAY_COUNT(mappings), callbacks, POLUS_ARRAY_COUNT(callbacks), NULL, 0, NULL, 0);
