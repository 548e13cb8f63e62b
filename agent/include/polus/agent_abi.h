/*
 * polus/agent_abi.h — the one header shared by the injector (C++) and libpolus-agent.so (C).
 *
 * The agent keeps, inside the target, the registry of every patch applied to it: which
 * functions were redirected where, the original bytes to put back on rollback, timings.
 * Keeping it in the target (not in a file of the operator's) means `polusctl status` and
 * `polusctl rollback` from any later invocation see the truth, and a recycled pid cannot
 * be confused with the process that was patched.
 *
 * The injector reads and writes these structures through /proc/PID/mem; the agent only
 * owns them. Fixed-width fields, no padding (checked below), versioned by
 * POLUS_AGENT_ABI_VERSION: an injector refuses a registry whose version it does not know.
 */
#ifndef POLUS_AGENT_ABI_H
#define POLUS_AGENT_ABI_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define POLUS_AGENT_MAGIC 0x544e454741534c50ull /* "PLSAGENT" */
#define POLUS_AGENT_ABI_VERSION 5u /* 2: sync fault fence; 3: patch records carry the content hash, code range, applier;
                                      4: polus_tracked_item.side carries POLUS_ITEM_* flags above the side;
                                         polus_agent_sync_prepare;
                                      5: the registry says where the entry points are (polus_agent_entries):
                                         the agent is loaded from a memfd and found without its file */
/* The agent's exported names. Since ABI 5 the injector finds every entry point through the
 * registry (struct polus_agent_entries); the names stay for patches and debuggers. */
#define POLUS_AGENT_REGISTRY_SYMBOL "polus_agent_registry"
#define POLUS_AGENT_LOAD_SYMBOL "polus_agent_load_patch"
#define POLUS_AGENT_UNLOAD_SYMBOL "polus_agent_unload_patch"
#define POLUS_AGENT_SYNC_RESERVE_SYMBOL "polus_agent_sync_reserve"
#define POLUS_AGENT_SYNC_PREPARE_SYMBOL "polus_agent_sync_prepare"
#define POLUS_AGENT_SYNC_BEGIN_SYMBOL "polus_agent_sync_begin"
#define POLUS_AGENT_SYNC_INITIALIZE_SYMBOL "polus_agent_sync_initialize"
#define POLUS_AGENT_SYNC_END_SYMBOL "polus_agent_sync_end"
#define POLUS_AGENT_SYNC_CLEAR_SYMBOL "polus_agent_sync_clear"
#define POLUS_AGENT_REGISTER_HEAP_DATA_SYMBOL "polus_register_heap_data"
/* int64_t polus_agent_run_callback(polus_callback_fn fn, const struct polus_callback_args *args):
 * fn(args) inside a fence: POLUS_CALLBACK_FAULTED if it faulted, with
 * registry.last_error naming the signal and the pc; the fault never reaches the target. */
#define POLUS_AGENT_RUN_CALLBACK_SYMBOL "polus_agent_run_callback"
#define POLUS_CALLBACK_FAULTED (-0x7fffffffffffffffll - 1)
/* The watch over the sync functions the agent runs: struct polus_fence_watch,
 * which the agent updates as each fenced sync function starts and ends; and
 * void polus_agent_escape_fence(uint64_t pc), the way out of one that does not return. A thread
 * the watch shows inside the same call for too long (a loop, a wait that never ends) is
 * stopped and sent there by the injector, as void polus_agent_escape_fence(uint64_t pc,
 * int32_t signal) with the pc it was at: the agent unwinds to the fence as it does for a
 * fault, and records it with POLUS_SYNC_FAULT_TIMED_OUT (signal 0), or as that signal (one a
 * thread borrowed by the injector raised inside a sync function). */
#define POLUS_AGENT_FENCE_WATCH_SYMBOL "polus_agent_fence_watch"
#define POLUS_AGENT_ESCAPE_FENCE_SYMBOL "polus_agent_escape_fence"

#define POLUS_MAX_PATCHES 256u
#define POLUS_MAX_ARENAS 32u
#define POLUS_NAME_BYTES 64u
#define POLUS_PATH_BYTES 256u
#define POLUS_ERROR_BYTES 512u
#define POLUS_SAVED_BYTES 16u
#define POLUS_SHA256_BYTES 32u

enum polus_patch_state {
    POLUS_STATE_EMPTY = 0,
    POLUS_STATE_APPLYING = 1,   /* recorded before the commit: loaded, jumps not yet (all) written */
    POLUS_STATE_SYNCING = 2,    /* jumps written, old code still active on changed data */
    POLUS_STATE_COMMITTED = 3,  /* the update is complete */
    POLUS_STATE_ROLLED_BACK = 4,
    POLUS_STATE_ROLLING_BACK = 5, /* recorded before the first original byte is put back */
};

/* Flags of struct polus_redirect_record. */
#define POLUS_REDIRECT_VIA_TRAMPOLINE 0x1u /* the jump goes to `trampoline`, which holds the target */
#define POLUS_REDIRECT_STACKED 0x2u        /* the function was already redirected by an older patch */
#define POLUS_REDIRECT_REUSED_TRAMPOLINE 0x4u /* STACKED on the older patch's slot: rollback puts previous_target back */

/*
 * One redirected function. The original function's entry gets a 5-byte `jmp rel32` at
 * `patch_site` (after an endbr64 if it has one) to `new_function`, or to a 16-byte
 * trampoline slot `jmp *0(%rip); .quad target` when the new code is beyond ±2 GiB.
 * A later patch of the same function only rewrites the trampoline's target, so calls
 * never pass through a chain of jumps.
 */
struct polus_redirect_record {
    uint64_t old_function;     /* entry of the target's function */
    uint64_t new_function;     /* where calls go while this patch is the newest on it */
    uint64_t patch_site;       /* first byte the jump occupies */
    uint64_t trampoline;       /* the slot, 0 if the jump is direct */
    uint64_t previous_target;  /* STACKED: the version calls went to before this patch */
    uint8_t saved_bytes[POLUS_SAVED_BYTES]; /* original bytes at patch_site (not STACKED) */
    uint32_t saved_length;
    uint32_t flags;            /* POLUS_REDIRECT_* */
    char old_name[POLUS_NAME_BYTES];
    char new_name[POLUS_NAME_BYTES];
};

/* Which way a data update runs: apply (old -> new) or rollback (new -> old). */
enum polus_update_direction {
    POLUS_UPDATE_APPLY = 0,
    POLUS_UPDATE_ROLLBACK = 1,
};

#define POLUS_MAX_HOLDERS 64u

/*
 * One applied patch; allocated by the injector in the target (anonymous mapping). After the
 * header come, in order: redirect_count struct polus_redirect_record, watch_count struct
 * polus_watched_function, and POLUS_MAX_HOLDERS struct polus_holder (holder_count used).
 */
struct polus_patch_record {
    uint64_t magic;             /* POLUS_AGENT_MAGIC */
    uint64_t id;                /* 1, 2, ...: never reused in one process */
    uint64_t dl_handle;         /* what dlopen returned (a struct link_map *) */
    uint64_t descriptor;        /* address of the patch's polus_patch_descriptor */
    uint64_t record_bytes;      /* size of this mapping, for munmap */
    uint64_t applied_at_unix_ns;
    uint64_t apply_wall_ns;     /* polusctl start to finish */
    uint64_t pause_ns;          /* how long every thread of the target was stopped (longest pause) */
    uint64_t committed_at_unix_ns; /* when the update left `syncing`, 0 while it syncs */
    uint64_t inspections;       /* stack inspections run while syncing */
    uint32_t state;             /* enum polus_patch_state */
    uint32_t redirect_count;
    uint32_t watch_count;       /* functions whose activity holds a data update open */
    uint32_t holder_count;      /* (thread, function) pairs seen at the last inspection */
    uint32_t direction;         /* enum polus_update_direction of the in-flight update */
    uint32_t unwind_fallbacks;  /* frames found by stack scanning (no CFI) at the last inspection */
    char name[POLUS_NAME_BYTES];
    char path[POLUS_PATH_BYTES]; /* the file the operator named (resolved); the target loaded a
                                    sealed memfd copy of its bytes, "/memfd:polus:NAME:SHA" in maps */
    uint64_t code_start;        /* the patch's executable segments in the target: [code_start, code_end) */
    uint64_t code_end;
    uint32_t applied_by_uid;    /* who asked for the apply (the caller, not Polus's own uid) */
    uint32_t reserved;
    uint8_t content_sha256[POLUS_SHA256_BYTES]; /* SHA-256 of the patch file's bytes: its identity */
};

/* A function whose active frames keep a data update in `syncing`. */
struct polus_watched_function {
    uint64_t start;
    uint64_t end;            /* exclusive */
    uint32_t function_index; /* in the patch's functions[] */
    uint32_t flags;          /* POLUS_WATCH_* */
    char name[POLUS_NAME_BYTES];
};
#define POLUS_WATCH_LEFT 0x1u /* no thread ran it at some inspection: its function callback ran */

/* A thread found running a watched function at the last inspection. */
struct polus_holder {
    uint64_t tid;
    uint64_t function; /* start of the watched function */
};

/* A mapping the injector placed near some code, cut into 16-byte trampoline slots. */
struct polus_arena {
    uint64_t base;
    uint64_t size;
};

/*
 * One global (or heap object) tracked during a data update: both versions of every changed
 * item are write-protected; a write to either side runs the item's sync function towards
 * its counterpart (the POLUS paper's bidirectional write-through, §2.2 and §4.1.2).
 */
struct polus_tracked_item {
    uint64_t address;     /* first byte of the item */
    uint64_t size;        /* bytes */
    uint64_t post_sync;   /* polus_sync_fn run after a write to this item, 0 = none */
    uint64_t pre_sync;    /* polus_sync_fn run before the write is let through, 0 = none */
    uint32_t counterpart; /* index (in the same table) of the mapped item on the other side */
    uint32_t side;        /* POLUS_OLD (1) / POLUS_NEW (2) in the low byte, POLUS_ITEM_* flags above */
    uint64_t sync_calls;  /* written by the agent: post_sync runs caused by writes to this item */
    uint64_t shadow;      /* agent-private: address of its copy of the item's last synced bytes */
};

/* Flags in the high bits of polus_tracked_item.side. */
#define POLUS_ITEM_SIDE_MASK 0xffu
#define POLUS_ITEM_WRITES_NOTIFIED 0x100u /* a NEW item whose writers call polus_wrote (patch.h,
                                           * POLUS_DATA_WRITES_NOTIFIED): its pages stay writable
                                           * unless an item without the flag shares them */

/* Kinds of sync function (struct polus_sync_fault.kind). */
#define POLUS_SYNC_FAULT_POST 1u /* the written item's post_sync */
#define POLUS_SYNC_FAULT_PRE 2u  /* its pre_sync */
/* Flags of struct polus_sync_fault. */
#define POLUS_SYNC_FAULT_RESTORED 0x1u /* the counterpart's bytes from before the call were put back */
#define POLUS_SYNC_FAULT_TIMED_OUT 0x2u /* it did not return: the injector sent its thread out (signal 0,
                                           pc where it was) */

/*
 * A patch's sync function that faulted (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP) while the
 * agent ran it. The agent's fence around every sync function it runs catches the fault: the
 * signal never reaches the target's own handler, the written item keeps the write, the
 * counterpart gets back the bytes it had before the call, the faulting function is never run
 * again in this update, and the thread goes on. Written by the agent, first fault only
 * (`count` counts them all); zeroed by polus_agent_sync_begin. The injector abandons the
 * update when it sees `function` set.
 */
struct polus_sync_fault {
    uint64_t function;      /* the sync function; 0: none faulted since sync_begin */
    uint64_t item_address;  /* the item whose write ran it */
    uint64_t fault_address; /* si_addr */
    uint64_t pc;            /* where it faulted */
    uint64_t tid;           /* the thread that ran it */
    uint64_t at_unix_ns;
    uint32_t item;          /* index of that item in the table */
    uint32_t side;          /* the item's side (POLUS_OLD: an old -> new sync faulted) */
    uint32_t kind;          /* POLUS_SYNC_FAULT_POST / _PRE */
    uint32_t signal;
    int32_t si_code;
    uint32_t flags;         /* POLUS_SYNC_FAULT_* */
    uint32_t count;         /* sync function faults caught since sync_begin, every function */
    uint32_t reserved;
};

/* One sync function running, as struct polus_fence_watch shows it. The agent writes calls and
 * function first and tid last when a call starts, and tid = 0 when it ends; the injector reads
 * the table with every thread stopped. */
struct polus_fence_watch_slot {
    int32_t tid;       /* the thread running it; 0: this slot runs none now */
    uint32_t calls;    /* calls this slot has started: the same value in two reads is the same call */
    uint64_t function; /* the sync function */
};
/* Slot 0: the sync lock's holder; the others: the fast path's lanes (one thread each). */
#define POLUS_FENCE_WATCH_SLOTS 65u
struct polus_fence_watch {
    uint32_t slot_count; /* POLUS_FENCE_WATCH_SLOTS */
    uint32_t reserved;
    struct polus_fence_watch_slot slots[POLUS_FENCE_WATCH_SLOTS];
};

/* Where the agent's entry points and tables are, as loaded: addresses the dynamic loader
 * relocated (a static initialiser). The agent is loaded from a sealed memfd — the bytes Polus
 * checked, whatever the target's mount namespace holds at any path — so no file of it may be
 * at hand when Polus finds it again; the registry, found by its magic in the agent's
 * writable mapping (`self` confirms the find), says the rest. */
struct polus_agent_entries {
    uint64_t self;          /* &polus_agent_registry */
    uint64_t load_patch;    /* POLUS_AGENT_LOAD_SYMBOL */
    uint64_t unload_patch;  /* POLUS_AGENT_UNLOAD_SYMBOL */
    uint64_t sync_reserve;
    uint64_t sync_prepare;
    uint64_t sync_begin;
    uint64_t sync_end;
    uint64_t run_callback;
    uint64_t fence_watch;   /* struct polus_fence_watch * */
    uint64_t escape_fence;
    uint64_t reserved[6];
};

/* The write-through machinery's state, part of the registry (read by status). */
struct polus_sync_state {
    uint64_t items;          /* struct polus_tracked_item[item_capacity] (agent-owned mapping) */
    uint32_t item_count;
    uint32_t item_capacity;
    uint32_t active;         /* 1 while pages are protected and the SIGSEGV handler tracks writes */
    uint32_t abandoning;     /* written by the injector: 1 once it abandons an update whose sync
                              * function faulted (sync_end then ends tracking despite the fault) */
    uint64_t faults;         /* write faults on tracked pages */
    uint64_t false_sharing;  /* of those, writes that touched no tracked item */
    uint64_t chained_faults; /* faults passed on to the target's own SIGSEGV handler */
    struct polus_sync_fault fault;
};

/*
 * The last update Polus abandoned because patch code faulted in the target (written by the
 * injector, kept for `status` after the patch itself is gone). patch_id 0: none.
 */
struct polus_update_failure {
    uint64_t patch_id;
    uint64_t at_unix_ns;
    uint32_t direction;      /* enum polus_update_direction of the abandoned update */
    uint32_t signal;         /* the fault's signal */
    char patch_name[POLUS_NAME_BYTES];
    char reason[POLUS_ERROR_BYTES]; /* names the function, the signal, and what was undone */
};

/* The root, a global of the agent found through its .dynsym. */
struct polus_agent_registry {
    uint64_t magic;            /* POLUS_AGENT_MAGIC from the moment the agent is mapped (static initialiser) */
    uint32_t abi_version;      /* POLUS_AGENT_ABI_VERSION */
    uint32_t patch_count;      /* entries used in `patches`, oldest first */
    uint64_t next_patch_id;
    uint64_t update_in_progress; /* tid of the injector holding the update lock, 0 if none */
    uint64_t patches[POLUS_MAX_PATCHES];  /* struct polus_patch_record * */
    struct polus_arena arenas[POLUS_MAX_ARENAS];
    uint32_t arena_count;
    uint32_t reserved;
    struct polus_sync_state sync;
    char last_error[POLUS_ERROR_BYTES]; /* dlerror() text of the last failed load */
    struct polus_update_failure last_failure;
    struct polus_agent_entries entries;
};

#if defined(__cplusplus)
#define POLUS_ABI_ASSERT(cond, msg) static_assert(cond, msg)
#else
#define POLUS_ABI_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif
POLUS_ABI_ASSERT(sizeof(struct polus_redirect_record) == 192, "redirect record must have no padding");
POLUS_ABI_ASSERT(sizeof(struct polus_patch_record) == 480, "patch record must have no padding");
POLUS_ABI_ASSERT(sizeof(struct polus_watched_function) == 88, "watched function must have no padding");
POLUS_ABI_ASSERT(sizeof(struct polus_holder) == 16, "holder must have no padding");
POLUS_ABI_ASSERT(sizeof(struct polus_arena) == 16, "arena must have no padding");
POLUS_ABI_ASSERT(sizeof(struct polus_tracked_item) == 56, "tracked item must have no padding");
POLUS_ABI_ASSERT(sizeof(struct polus_sync_fault) == 80, "sync fault must have no padding");
POLUS_ABI_ASSERT(sizeof(struct polus_sync_state) == 128, "sync state must have no padding");
POLUS_ABI_ASSERT(sizeof(struct polus_update_failure) == 600, "update failure must have no padding");
POLUS_ABI_ASSERT(sizeof(struct polus_fence_watch_slot) == 16, "fence watch slot must have no padding");
POLUS_ABI_ASSERT(sizeof(struct polus_agent_entries) == 128, "agent entries must have no padding");
POLUS_ABI_ASSERT(sizeof(struct polus_agent_registry) == 3968, "registry must have no padding");
POLUS_ABI_ASSERT(sizeof(struct polus_fence_watch) == 8 + 16 * POLUS_FENCE_WATCH_SLOTS, "fence watch must have no padding");

/*
 * Entry points the injector calls inside the target (through a borrowed thread).
 *   polus_agent_load_patch(path): dlopen(path, RTLD_NOW | RTLD_LOCAL). Returns the handle, or
 *       0 with registry.last_error set to dlerror()'s text. The injector passes
 *       "/proc/self/fd/N", N a sealed memfd holding the bytes it validated.
 *   polus_agent_unload_patch(handle): dlclose; returns 0 or -1 with last_error set.
 *   polus_agent_sync_reserve/prepare/begin/initialize/end/clear, polus_register_heap_data: the
 *       write-through of registry.sync, declared (and described) in the agent's sync.h.
 */

#ifdef __cplusplus
}
#endif

#endif /* POLUS_AGENT_ABI_H */
