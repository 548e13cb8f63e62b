/*
 * race-marker.c — a patch whose constructor leaves a mark: it appends one byte to the file
 * RACE_MARK_FILE ('g' from race-good.so, 'b' from race-bad.so), so a test can count whose code
 * ran, and where (the rehearsal's copy marks too).
 *
 * race-bad.so (RACE_BAD) has a wrong descriptor magic: validation refuses it, so a 'b' in the
 * file means code Polus refused ran anyway. trusted_load_test swaps the two files under one
 * path while root applies it, the race an unprivileged user could run when the target loaded
 * the path instead of the bytes Polus checked.
 */
#include <fcntl.h>
#include <unistd.h>

#include "bad-common.h"

#ifdef RACE_BAD
#define RACE_MARK 'b'
#else
#define RACE_MARK 'g'
#endif

__attribute__((constructor)) static void leave_mark(void)
{
    int fd = open(RACE_MARK_FILE, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) {
        char mark = RACE_MARK;
        ssize_t ignored = write(fd, &mark, 1);
        (void)ignored;
        close(fd);
    }
}

static const struct polus_function functions[] = {
    POLUS_OLD_FUNCTION("format_reply"),
    POLUS_NEW_FUNCTION(format_reply_v1),
};

static const struct polus_mapping mappings[] = {
    POLUS_FUNCTION_MAPPING(0, 1),
};

#ifdef RACE_BAD
/* Spelled out instead of POLUS_PATCH, which always writes the right magic. */
POLUS_DESCRIPTOR_LINKAGE const struct polus_patch polus_patch_descriptor = {
    0x504f4c5553504154ull, /* POLUS_PATCH_MAGIC with its bytes reversed */
    POLUS_PATCH_FORMAT_VERSION, 0, "race-bad", "refused by validation; its constructor marks 'b'",
    functions, NULL, mappings, NULL, NULL, NULL,
    POLUS_ARRAY_COUNT(functions), 0, POLUS_ARRAY_COUNT(mappings), 0, 0, 0};
#else
POLUS_PATCH("race-good", "greeter v0 -> v1; its constructor marks 'g'", functions, POLUS_ARRAY_COUNT(functions),
            NULL, 0, mappings, POLUS_ARRAY_COUNT(mappings), NULL, 0, NULL, 0, NULL, 0);
#endif
