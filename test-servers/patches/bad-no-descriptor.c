/* bad-no-descriptor.so — a valid shared object that does not define polus_patch_descriptor. */
#include "bad-common.h"

/* Exported so the object is not empty and does have a .dynsym. */
__attribute__((visibility("default"))) void *polus_test_not_a_descriptor(void)
{
    return (void *)format_reply_v1;
}
