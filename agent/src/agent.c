/*
 * libpolus-agent.so — the part of Polus that lives inside the patched process.
 *
 * It depends on libc alone (no C++ runtime, no exceptions, no logging library) and does
 * as little as it can: it owns the registry of applied patches (written by the injector
 * through /proc/PID/mem, see polus/agent_abi.h) and loads/unloads patch libraries with
 * the process's own dynamic loader, so dlerror()'s text reaches the operator.
 */
#include <dlfcn.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "polus/agent_abi.h"
#include "polus/patch.h"
#include "sync_fence.h"

#define POLUS_EXPORT __attribute__((visibility("default")))

/* The entry points defined in the other files (sync.h declares them for patches). */
uint64_t polus_agent_sync_reserve(uint32_t capacity);
int polus_agent_sync_prepare(void);
int polus_agent_sync_begin(void);
int polus_agent_sync_end(void);
void polus_agent_escape_fence(uint64_t pc, int32_t signal);
extern struct polus_fence_watch polus_agent_fence_watch;
uint64_t polus_agent_load_patch(const char *path);
int polus_agent_unload_patch(uint64_t handle);
int64_t polus_agent_run_callback(uint64_t fn, const struct polus_callback_args *args);

#define ADDRESS_OF(x) ((uint64_t)(uintptr_t)&(x))

/* Initialised statically (in .data): valid the moment the library is mapped, no constructor;
 * the entries are relocated by the dynamic loader (R_X86_64_RELATIVE) before anyone reads them. */
POLUS_EXPORT struct polus_agent_registry polus_agent_registry = {
    .magic = POLUS_AGENT_MAGIC,
    .abi_version = POLUS_AGENT_ABI_VERSION,
    .next_patch_id = 1,
    .entries =
        {
            .self = ADDRESS_OF(polus_agent_registry),
            .load_patch = ADDRESS_OF(polus_agent_load_patch),
            .unload_patch = ADDRESS_OF(polus_agent_unload_patch),
            .sync_reserve = ADDRESS_OF(polus_agent_sync_reserve),
            .sync_prepare = ADDRESS_OF(polus_agent_sync_prepare),
            .sync_begin = ADDRESS_OF(polus_agent_sync_begin),
            .sync_end = ADDRESS_OF(polus_agent_sync_end),
            .run_callback = ADDRESS_OF(polus_agent_run_callback),
            .fence_watch = ADDRESS_OF(polus_agent_fence_watch),
            .escape_fence = ADDRESS_OF(polus_agent_escape_fence),
        },
};

static void remember_dlerror(void) {
    const char *text = dlerror();
    if (!text) text = "unknown dynamic loader error";
    size_t n = strlen(text);
    if (n >= sizeof polus_agent_registry.last_error) n = sizeof polus_agent_registry.last_error - 1;
    memcpy(polus_agent_registry.last_error, text, n);
    polus_agent_registry.last_error[n] = '\0';
}

/* Loads a patch. Returns the dlopen handle, or 0 with registry.last_error set. */
POLUS_EXPORT uint64_t polus_agent_load_patch(const char *path) {
    /* RTLD_NOW: every undefined symbol is resolved (or the load fails) before any jump is
     * written. RTLD_LOCAL: two patches may both define foo_v1 without clashing. */
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        remember_dlerror();
        return 0;
    }
    polus_agent_registry.last_error[0] = '\0';
    return (uint64_t)(uintptr_t)handle;
}

/* Unloads a patch no thread runs any more. Returns 0, or -1 with registry.last_error set. */
POLUS_EXPORT int polus_agent_unload_patch(uint64_t handle) {
    if (dlclose((void *)(uintptr_t)handle) != 0) {
        remember_dlerror();
        return -1;
    }
    return 0;
}

/* A patch callback, fenced (sync_fence.h, struct callback_fence): the injector calls this
 * instead of the callback itself while write tracking is on. */
POLUS_EXPORT int64_t polus_agent_run_callback(uint64_t fn, const struct polus_callback_args *args) {
    struct callback_fence fence;
    if (sigsetjmp(fence.env, 0)) {
        callback_fence_disarm();
        snprintf(polus_agent_registry.last_error, sizeof polus_agent_registry.last_error,
                 "signal %d at 0x%llx (fault address 0x%llx)", fence.signal, (unsigned long long)fence.pc,
                 (unsigned long long)fence.fault_address);
        return POLUS_CALLBACK_FAULTED;
    }
    callback_fence_arm(&fence);
    int result = ((polus_callback_fn)(uintptr_t)fn)(args);
    callback_fence_disarm();
    return result;
}
