/*
 * bad-common.h — the replacement function the bad test patches carry. Each bad-*.c file
 * is a patch that a correct injector must refuse, for the one reason its name says.
 */
#ifndef POLUS_TEST_BAD_COMMON_H
#define POLUS_TEST_BAD_COMMON_H

#include <stddef.h>
#include <stdio.h>

#include <polus/patch.h>

static int format_reply_v1(char *out, size_t cap, const char *name)
{
    if (cap == 0)
        return 0;
    int n = snprintf(out, cap, "Hi there, %s! (v1)", name);
    if (n < 0) {
        out[0] = '\0';
        return 0;
    }
    if ((size_t)n >= cap)
        n = (int)(cap - 1);
    return n;
}

#endif
