/*
 * greeter-v0-v1-static.so — greeter-v0-v1.so for greeter-v0-ambiguous, where two
 * file-static functions are called format_reply: names the one of greeter.c.
 */
#define GREETER_PATCH_OLD_NAME "greeter.c:format_reply"
#define GREETER_PATCH_NAME "greeter-v1-static"
#include "greeter-v0-v1.c"
