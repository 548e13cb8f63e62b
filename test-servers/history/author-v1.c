/*
 * The author's part of kv v0 -> v1 (polus-mkpatch --author): the list of entries is heap data
 * whose type gained a field. Build the v1 list once, then pair every old node with its new one
 * so writes to either are synced while the update syncs. Runs in the commit pause, and again
 * with args->rollback set when the patch is rolled back.
 */
#include <stdlib.h>

static int polus_author_heap_table(const struct polus_callback_args *args) {
    if (!polus_register_heap_data) return -1; /* not running under the Polus agent */
    if (!table_v1) {
        struct entry_v1 **tail = &table_v1;
        for (struct entry *p = *polus_old_table; p; p = p->next) {
            struct entry_v1 *n = calloc(1, sizeof *n);
            if (!n) return -1;
            *tail = n;
            tail = &n->next;
        }
    }
    struct entry *p = *polus_old_table;
    for (struct entry_v1 *n = table_v1; p && n; p = p->next, n = n->next) {
        if (args->rollback)
            polus_copy_entry_v1_to_entry(p, n);
        else
            polus_copy_entry_to_entry_v1(n, p);
        if (polus_register_heap_data(p, n, sizeof *p, sizeof *n, polus_sync_old_entry, polus_sync_new_entry_v1) != 0)
            return -1;
    }
    return 0;
}
