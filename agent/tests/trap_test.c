/*
 * trap_test.c — the agent's side of a trap commit (agent/src/trap_sites.c), in a process that
 * plays the target: an int3 at a function's entry with its registry entry sends a caller to
 * `before` until the switch and to `after` from then on, also on a thread that blocked every
 * other signal; an int3 with no entry goes to the application's own SIGTRAP handler (chained);
 * the application's SIGTRAP disposition is never put back while trap sites are armed.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>

#include "polus/agent_abi.h"

extern struct polus_agent_registry polus_agent_registry;
int64_t polus_agent_arm_traps(void);

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            exit(1);                                                                 \
        }                                                                            \
    } while (0)

typedef int (*fn_t)(void);
static uint8_t *code;        /* four tiny functions: original, before, after, application */
static volatile int app_traps; /* the application's own SIGTRAP handler ran */

/* mov $value, %eax; ret */
static fn_t make_fn(int slot, int value) {
    uint8_t *at = code + 16 * slot;
    at[0] = 0xb8;
    memcpy(at + 1, &value, 4);
    at[5] = 0xc3;
    return (fn_t)(void *)at;
}

static void app_handler(int sig, siginfo_t *si, void *ctx) {
    (void)sig;
    (void)si;
    app_traps++;
    ((ucontext_t *)ctx)->uc_mcontext.gregs[REG_RIP] = (greg_t)(uintptr_t)(code + 16 * 3); /* returns 4 */
}

static void *blocked_caller(void *arg) {
    sigset_t all;
    sigfillset(&all);
    sigdelset(&all, SIGTRAP); /* what the injector does before the first int3 */
    pthread_sigmask(SIG_SETMASK, &all, NULL);
    *(int *)arg = ((fn_t)(void *)code)();
    return NULL;
}

int main(void) {
    code = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(code != MAP_FAILED);
    fn_t original = make_fn(0, 1);
    make_fn(1, 2);
    make_fn(2, 3);
    make_fn(3, 4);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = app_handler;
    sa.sa_flags = SA_SIGINFO;
    CHECK(sigaction(SIGTRAP, &sa, NULL) == 0);

    CHECK(polus_agent_arm_traps() == 0);
    CHECK(polus_agent_arm_traps() == 0); /* idempotent: the application's handler stays the one chained to */

    /* An int3 nobody registered is the application's. */
    code[0] = 0xcc;
    CHECK(original() == 4);
    CHECK(app_traps == 1);

    /* Registered: the version replaced until the switch, then the new one. */
    struct polus_trap_site *t = &polus_agent_registry.traps[5];
    t->before = (uint64_t)(uintptr_t)(code + 16);
    t->after = (uint64_t)(uintptr_t)(code + 32);
    t->patch_id = 9;
    __atomic_store_n(&t->site, (uint64_t)(uintptr_t)code, __ATOMIC_RELEASE);
    CHECK(original() == 2);
    int from_thread = 0;
    pthread_t th;
    CHECK(pthread_create(&th, NULL, blocked_caller, &from_thread) == 0);
    pthread_join(th, NULL);
    CHECK(from_thread == 2);
    polus_agent_registry.trap_switched_patch = 9;
    CHECK(original() == 3);
    CHECK(polus_agent_registry.trap_hits == 3);
    CHECK(app_traps == 1);

    /* The commit over: the site cleared, the first byte is the original one again. */
    code[0] = 0xb8;
    t->site = 0;
    CHECK(original() == 1);

    /* Our handler stays in front: the application's is reached only by chaining. */
    struct sigaction now;
    CHECK(sigaction(SIGTRAP, NULL, &now) == 0);
    CHECK(now.sa_sigaction != app_handler);
    printf("ok\n");
    return 0;
}
