/* bad-missing-symbol.so — replaces a function the target does not have. */
#include "bad-common.h"

static const struct polus_function functions[] = {
    POLUS_OLD_FUNCTION("no_such_function_anywhere"),
    POLUS_NEW_FUNCTION(format_reply_v1),
};

static const struct polus_mapping mappings[] = {
    POLUS_FUNCTION_MAPPING(0, 1),
};

POLUS_PATCH("bad-missing-symbol", "old function not in the target",
            functions, POLUS_ARRAY_COUNT(functions), NULL, 0,
            mappings, POLUS_ARRAY_COUNT(mappings), NULL, 0, NULL, 0, NULL, 0);
