/* bad-build-id.so — made for a main executable whose build-id no greeter has. */
#include "bad-common.h"

static const struct polus_function functions[] = {
    POLUS_OLD_FUNCTION("format_reply"),
    POLUS_NEW_FUNCTION(format_reply_v1),
};

static const struct polus_mapping mappings[] = {
    POLUS_FUNCTION_MAPPING(0, 1),
};

static const struct polus_build_id build_ids[] = {
    {NULL, "00112233445566778899aabbccddeeff00112233"},
};

POLUS_PATCH("bad-build-id", "made for another build of the target",
            functions, POLUS_ARRAY_COUNT(functions), NULL, 0,
            mappings, POLUS_ARRAY_COUNT(mappings), NULL, 0, NULL, 0,
            build_ids, POLUS_ARRAY_COUNT(build_ids));
