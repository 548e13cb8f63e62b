/*
 * polus/patch.h — the public header a Polus patch includes.
 *
 * A Polus patch is an ordinary shared object built with gcc (C or C++). It exports one
 * symbol, `polus_patch_descriptor`, a `struct polus_patch` that describes — as static
 * data, so the injector can read and validate it from the file before it touches the
 * target — everything the POLUS paper's Fig. 3 registers:
 *
 *   - functions: old ones (named by symbol in the target) and new ones (in the patch);
 *   - data: old globals (named in the target) and new ones (in the patch), each with a
 *     size and, per direction, a sync function run after (and optionally before) a write;
 *   - mappings: old→new function, old→new data, function→data, data→function;
 *   - callbacks: pre-update, thread, function, data, post-update;
 *   - imports: target symbols the patch's code uses but the target does not export
 *     (file-static functions and globals): the injector writes their addresses into slots;
 *   - optionally, the build-id(s) of the target the patch was made for.
 *
 * Every struct has fixed-width fields and no padding (checked below), so the injector
 * (C++) and the agent (C) read the same bytes. Pointers are 8 bytes: x86-64 only.
 * See patch-format/README.md for the format and a worked example.
 */
#ifndef POLUS_PATCH_H
#define POLUS_PATCH_H

#include <stddef.h> /* NULL, for POLUS_PATCH(...) arguments */
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* "POLUSPAT" little-endian: the first 8 bytes of the descriptor. */
#define POLUS_PATCH_MAGIC 0x54415053554c4f50ull
/* Bump when a struct below changes shape; the injector refuses versions it does not know. */
#define POLUS_PATCH_FORMAT_VERSION 1u
/* The symbol the injector looks up in the patch's .dynsym. */
#define POLUS_PATCH_DESCRIPTOR_SYMBOL "polus_patch_descriptor"

/* Which side of the update an entity belongs to. */
enum polus_side {
    POLUS_OLD = 1, /* lives in the running target, named by `name` */
    POLUS_NEW = 2, /* lives in the patch, given by `address` */
};

/*
 * A function of the old or the new version.
 *  OLD: `name` is a symbol of the target: "name", "file.c:name" for one of several
 *       file-static functions of that name, or "object!name" to pick a shared object
 *       (e.g. "libfoo.so.1!name"). `address` is NULL. If `resolved` is not NULL the
 *       injector stores the old function's address there before any patch code runs.
 *  NEW: `address` is the function in the patch; `name` is how status shows it.
 */
struct polus_function {
    const char *name;
    void *address;
    void **resolved;
    uint32_t side;  /* enum polus_side */
    uint32_t flags; /* reserved, 0 */
};

/* What a sync function is told: the item written, and its counterpart on the other side. */
struct polus_sync_args {
    void *written;        /* start of the item that was (or is about to be) written */
    void *counterpart;    /* start of the mapped item on the other side */
    uint64_t offset;      /* byte offset of the write inside `written` */
    uint64_t thread_id;   /* kernel tid of the writing thread */
};
typedef void (*polus_sync_fn)(const struct polus_sync_args *args);

/* Flags of struct polus_data. */
#define POLUS_DATA_READ_ONLY 0x1u /* never written during the update: no protection, no sync (paper §4.1.2) */
#define POLUS_DATA_HEAP_ROOT 0x2u /* roots heap data a pre-update callback converts and registers with
                                     polus_register_heap_data: the item itself is not protected, but
                                     the functions using it (F2D) hold the update open */
#define POLUS_DATA_WRITES_NOTIFIED 0x4u /* on a NEW item: the patch's code calls polus_wrote(&item)
                                     after each write to it (before releasing the lock that guards
                                     it), so its page is left writable — no fault — unless a tracked
                                     item without this flag shares the page; polus_wrote runs its
                                     post_sync. Old code's writes to the OLD item are tracked as ever */

/*
 * A global of the old or the new version.
 *  OLD: `name` names the target's global (same forms as functions); `size` 0 means "take it
 *       from the symbol table"; `resolved` receives its address.
 *  NEW: `address` is the patch's own global; `size` is its size.
 * `post_sync` runs after a write to this item and must bring the mapped item up to date
 * (the paper's old_sync/new_sync, post_sync_cbfn). `pre_sync`, if set, runs before the
 * write is let through (pre_sync_cbfn), e.g. to record a list link about to change.
 */
struct polus_data {
    const char *name;
    void *address;
    void **resolved;
    uint64_t size;
    polus_sync_fn post_sync;
    polus_sync_fn pre_sync;
    uint32_t side;  /* enum polus_side */
    uint32_t flags; /* POLUS_DATA_* */
};

enum polus_mapping_kind {
    POLUS_MAP_FUNCTION = 1, /* functions[from] (old) is replaced by functions[to] (new) */
    POLUS_MAP_DATA = 2,     /* data[from] (old) corresponds to data[to] (new) */
    POLUS_MAP_F2D = 3,      /* functions[from] uses data[to] */
    POLUS_MAP_D2F = 4,      /* data[from] is used by functions[to] */
};

/* A relation between two entities, by index into the patch's arrays. */
struct polus_mapping {
    uint32_t kind; /* enum polus_mapping_kind */
    uint32_t from;
    uint32_t to;
    uint32_t reserved; /* 0 */
};

enum polus_callback_kind {
    POLUS_CB_PRE_UPDATE = 1,  /* before the update starts: allocate/convert heap data */
    POLUS_CB_THREAD = 2,      /* a thread left an old function being updated */
    POLUS_CB_FUNCTION = 3,    /* no thread is in an old function any more */
    POLUS_CB_DATA = 4,        /* no function using an old item is active any more */
    POLUS_CB_POST_UPDATE = 5, /* the update is about to commit */
};

/* What a callback is told. `index` is the function or data index it concerns, or ~0u. */
struct polus_callback_args {
    uint32_t kind;      /* enum polus_callback_kind */
    uint32_t index;
    uint64_t thread_id; /* for POLUS_CB_THREAD, the thread that left */
    uint32_t rollback;  /* 1 when the update being run is a rollback */
    uint32_t reserved;
};
typedef int (*polus_callback_fn)(const struct polus_callback_args *args);

struct polus_callback {
    uint32_t kind;     /* enum polus_callback_kind */
    uint32_t reserved; /* 0 */
    polus_callback_fn fn;
};

/* A target symbol the patch's code uses but cannot link against (e.g. a static function). */
struct polus_import {
    const char *name; /* same forms as an OLD function's name */
    void **slot;      /* receives the address before any patch code runs */
};

/* The target build a patch was made for. `object` NULL or "" means the main executable. */
struct polus_build_id {
    const char *object;
    const char *hex; /* lowercase hex of the NT_GNU_BUILD_ID note */
};

struct polus_patch {
    uint64_t magic;          /* POLUS_PATCH_MAGIC */
    uint32_t format_version; /* POLUS_PATCH_FORMAT_VERSION */
    uint32_t flags;          /* reserved, 0 */
    const char *name;        /* short name shown by status */
    const char *description; /* one line for the operator, may be NULL */
    const struct polus_function *functions;
    const struct polus_data *data;
    const struct polus_mapping *mappings;
    const struct polus_callback *callbacks;
    const struct polus_import *imports;
    const struct polus_build_id *build_ids;
    uint32_t function_count;
    uint32_t data_count;
    uint32_t mapping_count;
    uint32_t callback_count;
    uint32_t import_count;
    uint32_t build_id_count;
};

#if defined(__cplusplus)
#define POLUS_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#else
#define POLUS_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif
POLUS_STATIC_ASSERT(sizeof(void *) == 8, "Polus patches are x86-64 only");
POLUS_STATIC_ASSERT(sizeof(struct polus_function) == 32, "polus_function must have no padding");
POLUS_STATIC_ASSERT(sizeof(struct polus_sync_args) == 32, "polus_sync_args must have no padding");
POLUS_STATIC_ASSERT(sizeof(struct polus_data) == 56, "polus_data must have no padding");
POLUS_STATIC_ASSERT(sizeof(struct polus_mapping) == 16, "polus_mapping must have no padding");
POLUS_STATIC_ASSERT(sizeof(struct polus_callback_args) == 24, "polus_callback_args must have no padding");
POLUS_STATIC_ASSERT(sizeof(struct polus_callback) == 16, "polus_callback must have no padding");
POLUS_STATIC_ASSERT(sizeof(struct polus_import) == 16, "polus_import must have no padding");
POLUS_STATIC_ASSERT(sizeof(struct polus_build_id) == 16, "polus_build_id must have no padding");
POLUS_STATIC_ASSERT(sizeof(struct polus_patch) == 104, "polus_patch must have no padding");

/*
 * Provided by libpolus-agent.so inside the target (resolved when the patch is loaded; weak,
 * so a patch still links with -z defs). For pre-update callbacks that convert heap data
 * whose type changed: registers one old object and its new counterpart so both are
 * write-protected and synced like globals while the update syncs. Returns 0 or -errno.
 */
#ifndef POLUS_AGENT_BUILD /* the agent defines it */
__attribute__((weak)) int polus_register_heap_data(void *old_item, void *new_item, uint64_t old_size,
                                                   uint64_t new_size, polus_sync_fn old_post_sync,
                                                   polus_sync_fn new_post_sync);
#endif

/*
 * Provided by libpolus-agent.so (weak, as above): new code says it wrote a NEW item flagged
 * POLUS_DATA_WRITES_NOTIFIED (any address inside it): if the item changed since it was last
 * synced, its post_sync runs now, on this thread, before polus_wrote returns. Outside a data
 * update, or for an address that is not such an item, it does nothing. Use POLUS_WROTE(item).
 */
#ifndef POLUS_AGENT_BUILD
__attribute__((weak)) void polus_wrote(const void *item);
#endif
#define POLUS_WROTE(item) \
    do { if (polus_wrote) polus_wrote(&(item)); } while (0)

/* ---- Conveniences for patch authors ---------------------------------------------- */

#define POLUS_OLD_FUNCTION(target_name) \
    { (target_name), 0, 0, POLUS_OLD, 0 }
#define POLUS_OLD_FUNCTION_AT(target_name, slot) \
    { (target_name), 0, (void **)(slot), POLUS_OLD, 0 }
#define POLUS_NEW_FUNCTION(fn) \
    { #fn, (void *)(fn), 0, POLUS_NEW, 0 }

#define POLUS_OLD_DATA(target_name, slot, size, post_sync, pre_sync) \
    { (target_name), 0, (void **)(slot), (size), (post_sync), (pre_sync), POLUS_OLD, 0 }
#define POLUS_NEW_DATA(var, post_sync, pre_sync) \
    { #var, (void *)&(var), 0, sizeof(var), (post_sync), (pre_sync), POLUS_NEW, 0 }

#define POLUS_FUNCTION_MAPPING(old_index, new_index) { POLUS_MAP_FUNCTION, (old_index), (new_index), 0 }
#define POLUS_DATA_MAPPING(old_index, new_index) { POLUS_MAP_DATA, (old_index), (new_index), 0 }
#define POLUS_F2D_MAPPING(function_index, data_index) { POLUS_MAP_F2D, (function_index), (data_index), 0 }
#define POLUS_D2F_MAPPING(data_index, function_index) { POLUS_MAP_D2F, (data_index), (function_index), 0 }

#define POLUS_IMPORT(target_name, slot) { (target_name), (void **)(slot) }

#define POLUS_ARRAY_COUNT(array) ((uint32_t)(sizeof(array) / sizeof((array)[0])))

#if defined(__cplusplus)
#define POLUS_DESCRIPTOR_LINKAGE extern "C" __attribute__((visibility("default"), used))
#else
#define POLUS_DESCRIPTOR_LINKAGE __attribute__((visibility("default"), used))
#endif

/*
 * Defines the descriptor. Pass NULL/0 for what the patch does not have, e.g.
 *   POLUS_PATCH("fix-greeting", "v0 -> v1 greeting", functions, POLUS_ARRAY_COUNT(functions),
 *               NULL, 0, mappings, POLUS_ARRAY_COUNT(mappings), NULL, 0, NULL, 0, NULL, 0);
 */
#define POLUS_PATCH(patch_name, patch_description, fns, fn_count, dat, dat_count, maps, map_count, \
                    cbs, cb_count, imps, imp_count, bids, bid_count)                            \
    POLUS_DESCRIPTOR_LINKAGE const struct polus_patch polus_patch_descriptor = {                \
        POLUS_PATCH_MAGIC, POLUS_PATCH_FORMAT_VERSION, 0, (patch_name), (patch_description),     \
        (fns), (dat), (maps), (cbs), (imps), (bids),                                            \
        (fn_count), (dat_count), (map_count), (cb_count), (imp_count), (bid_count)}

#ifdef __cplusplus
}
#endif

#endif /* POLUS_PATCH_H */
