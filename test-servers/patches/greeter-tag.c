/*
 * greeter-tag: every reply line ends with " #" (replaces the file-static send_line). A patch
 * of another function than format_reply's patches, so the two stack independently: either
 * can be rolled back first (polusctl rollback --id).
 */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include <polus/patch.h>

#define TAG_REPLY_CAP (1024 + 64) /* the greeter's REPLY_CAP */

static int send_line_tagged(int fd, const char *line)
{
    char buf[TAG_REPLY_CAP + 4];
    size_t len = strnlen(line, TAG_REPLY_CAP);
    memcpy(buf, line, len);
    memcpy(buf + len, " #\n", 3);
    len += 3;
    size_t done = 0;
    while (done < len) {
        ssize_t n = send(fd, buf + done, len - done, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        done += (size_t)n;
    }
    return 0;
}

static const struct polus_function functions[] = {
    POLUS_OLD_FUNCTION("greeter.c:send_line"),
    POLUS_NEW_FUNCTION(send_line_tagged),
};

static const struct polus_mapping mappings[] = {
    POLUS_FUNCTION_MAPPING(0, 1),
};

POLUS_PATCH("greeter-tag", "greeter: every reply ends with \" #\"",
            functions, POLUS_ARRAY_COUNT(functions), NULL, 0,
            mappings, POLUS_ARRAY_COUNT(mappings), NULL, 0, NULL, 0, NULL, 0);
