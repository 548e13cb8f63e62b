/* The author's sync functions for budget-struct.diff: `long budget` became a struct; the old
 * value is what is left, and `spent` counts from the update on. */
static void polus_sync_old_budget(const struct polus_sync_args *args) {
    const long *src = (const void *)args->written;
    struct budget *dst = (void *)args->counterpart;
    dst->left = *src;
}

static void polus_sync_new_budget(const struct polus_sync_args *args) {
    const struct budget *src = (const void *)args->written;
    long *dst = (void *)args->counterpart;
    *dst = src->left;
}
