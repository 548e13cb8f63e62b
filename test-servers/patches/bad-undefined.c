/*
 * bad-undefined.so — the new function calls a function nothing defines, so loading the
 * patch fails with "undefined symbol: polus_test_symbol_that_does_not_exist". Linked with
 * -z now, so dlopen fails even with RTLD_LAZY.
 */
#include "bad-common.h"

extern int polus_test_symbol_that_does_not_exist(void);

static int format_reply_broken(char *out, size_t cap, const char *name)
{
    int n = format_reply_v1(out, cap, name);
    return n + polus_test_symbol_that_does_not_exist();
}

static const struct polus_function functions[] = {
    POLUS_OLD_FUNCTION("format_reply"),
    POLUS_NEW_FUNCTION(format_reply_broken),
};

static const struct polus_mapping mappings[] = {
    POLUS_FUNCTION_MAPPING(0, 1),
};

POLUS_PATCH("bad-undefined", "new code needs a symbol nothing defines",
            functions, POLUS_ARRAY_COUNT(functions), NULL, 0,
            mappings, POLUS_ARRAY_COUNT(mappings), NULL, 0, NULL, 0, NULL, 0);
