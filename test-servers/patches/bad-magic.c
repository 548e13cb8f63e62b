/* bad-magic.so — a well-formed descriptor whose magic is wrong (byte-swapped "POLUSPAT"). */
#include "bad-common.h"

static const struct polus_function functions[] = {
    POLUS_OLD_FUNCTION("format_reply"),
    POLUS_NEW_FUNCTION(format_reply_v1),
};

static const struct polus_mapping mappings[] = {
    POLUS_FUNCTION_MAPPING(0, 1),
};

/* Spelled out instead of POLUS_PATCH, which always writes the right magic. */
POLUS_DESCRIPTOR_LINKAGE const struct polus_patch polus_patch_descriptor = {
    0x504f4c5553504154ull, /* POLUS_PATCH_MAGIC with its bytes reversed */
    POLUS_PATCH_FORMAT_VERSION, 0, "bad-magic", "descriptor with a wrong magic",
    functions, NULL, mappings, NULL, NULL, NULL,
    POLUS_ARRAY_COUNT(functions), 0, POLUS_ARRAY_COUNT(mappings), 0, 0, 0};
