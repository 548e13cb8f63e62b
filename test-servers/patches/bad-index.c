/* bad-index.so — a function mapping whose `to` index is past the end of functions[]. */
#include "bad-common.h"

static const struct polus_function functions[] = {
    POLUS_OLD_FUNCTION("format_reply"),
    POLUS_NEW_FUNCTION(format_reply_v1),
};

static const struct polus_mapping mappings[] = {
    POLUS_FUNCTION_MAPPING(0, 7), /* only 2 functions */
};

POLUS_PATCH("bad-index", "mapping index out of range",
            functions, POLUS_ARRAY_COUNT(functions), NULL, 0,
            mappings, POLUS_ARRAY_COUNT(mappings), NULL, 0, NULL, 0, NULL, 0);
