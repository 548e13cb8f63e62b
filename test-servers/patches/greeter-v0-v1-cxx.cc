/*
 * greeter-v0-v1-cxx.so — greeter-v0-v1.so written in C++, to prove polus/patch.h works
 * from C++ (POLUS_PATCH gives the descriptor C linkage). The new function needs no
 * extern "C": the descriptor holds its address. Built with -fno-exceptions -fno-rtti and
 * linked by gcc, so the patch needs nothing but libc.
 */
#include <cstddef>
#include <cstdio>

#include <polus/patch.h>

namespace {

int format_reply_v1(char *out, std::size_t cap, const char *name)
{
    if (cap == 0)
        return 0;
    int n = std::snprintf(out, cap, "Hi there, %s! (v1)", name);
    if (n < 0) {
        out[0] = '\0';
        return 0;
    }
    if (static_cast<std::size_t>(n) >= cap)
        n = static_cast<int>(cap - 1);
    return n;
}

const polus_function functions[] = {
    POLUS_OLD_FUNCTION("format_reply"),
    POLUS_NEW_FUNCTION(format_reply_v1),
};

const polus_mapping mappings[] = {
    POLUS_FUNCTION_MAPPING(0, 1),
};

} // namespace

POLUS_PATCH("greeter-v1-cxx", "greeter: HELLO answers \"Hi there, <name>! (v1)\" (C++ build)",
            functions, POLUS_ARRAY_COUNT(functions), nullptr, 0,
            mappings, POLUS_ARRAY_COUNT(mappings), nullptr, 0, nullptr, 0, nullptr, 0);
