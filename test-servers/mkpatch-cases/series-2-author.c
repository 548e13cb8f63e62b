/* Author file for series-2.diff (mkpatch_test): the fix's new global `factor` starts at 3; the
 * patch's own pre-update hook, run at the commit, sets it to 4, so the test can tell the hook
 * ran (answers are 4 * clamp(n), not 3 * clamp(n)). On rollback there is nothing to undo. */
extern long factor_v2;

static int polus_author_pre_update(const struct polus_callback_args *args) {
    if (!args->rollback)
        factor_v2 = 4;
    return 0;
}
