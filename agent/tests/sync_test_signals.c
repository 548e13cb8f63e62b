/*
 * sync_test_signals.c — agent_sync_test scenarios: the target's own signal handlers, genuine
 * faults, fork, and the end of sync while threads write (chain, fatal, end).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sync_test.h"

/* ======================================================================================
 * 4. the target's own SIGSEGV (and SIGTRAP) handlers keep working during sync.
 * ====================================================================================== */
static char *guard;
static volatile int guard_mode; /* 0: unprotect and return, 1: siglongjmp */
static sigjmp_buf guard_env;
static volatile int guard_calls, guard_code, guard_usr1_blocked, guard_segv_blocked;
static void *volatile guard_addr;

static void guard_handler(int sig, siginfo_t *si, void *uc) {
    (void)sig;
    (void)uc;
    guard_calls++;
    guard_addr = si->si_addr;
    guard_code = si->si_code;
    sigset_t cur;
    pthread_sigmask(SIG_SETMASK, NULL, &cur);
    guard_usr1_blocked = sigismember(&cur, SIGUSR1);
    guard_segv_blocked = sigismember(&cur, SIGSEGV);
    if (guard_mode == 1) siglongjmp(guard_env, 1);
    mprotect(guard, 4096, PROT_READ | PROT_WRITE);
}

static volatile int trap_calls;
static void trap_handler(int sig) {
    (void)sig;
    trap_calls++;
}

int test_chain(void) {
    guard = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(guard != MAP_FAILED);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = guard_handler;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGUSR1);
    CHECK(sigaction(SIGSEGV, &sa, NULL) == 0);
    struct sigaction tsa;
    memset(&tsa, 0, sizeof tsa);
    tsa.sa_handler = trap_handler; /* a plain (non-SA_SIGINFO) handler */
    CHECK(sigaction(SIGTRAP, &tsa, NULL) == 0);

    add_pair(&ab, sizeof ab, ab_old_to_new, &ab_v1, sizeof ab_v1, ab_new_to_old);
    CHECK_EQ(polus_agent_sync_begin(), 0);
    struct sigaction cur;
    sigaction(SIGSEGV, NULL, &cur);
    CHECK(cur.sa_sigaction != guard_handler); /* ours is in front */

    /* a write to the guard page: the application's handler unprotects it */
    barrier();
    *(volatile char *)(guard + 10) = 1;
    barrier();
    CHECK_EQ(guard_calls, 1);
    CHECK(guard_addr == guard + 10);
    CHECK_EQ(guard_code, SEGV_ACCERR);
    CHECK_EQ(guard_usr1_blocked, 1); /* its sa_mask */
    CHECK_EQ(guard_segv_blocked, 1); /* no SA_NODEFER */
    CHECK_EQ(guard[10], 1);
    CHECK_EQ(SYNC.chained_faults, 1);
    /* a read */
    mprotect(guard, 4096, PROT_NONE);
    CHECK_EQ(*(volatile char *)(guard + 20), 0);
    CHECK_EQ(guard_calls, 2);
    CHECK_EQ(SYNC.chained_faults, 2);
    /* tracked writes in between */
    *(volatile int *)&ab.a.i = 55;
    barrier();
    CHECK_EQ(ab_v1.a.i, 55);
    /* recovery by siglongjmp */
    mprotect(guard, 4096, PROT_NONE);
    guard_mode = 1;
    if (sigsetjmp(guard_env, 1) == 0) {
        *(volatile char *)(guard + 30) = 1;
        CHECK(!"not reached");
    }
    CHECK_EQ(guard_calls, 3);
    CHECK_EQ(SYNC.chained_faults, 3);
    *(volatile int *)&ab_v1.a.i = 6; /* the sync lock was not left held */
    barrier();
    CHECK_EQ(ab.a.i, 6);
    /* SIGTRAP of the application's own (int3) */
    __asm__ volatile("int3");
    CHECK_EQ(trap_calls, 1);
    printf("chain: guard handler calls=%d chained_faults=%llu retried=%llu trap handler calls=%d\n", guard_calls,
           (unsigned long long)SYNC.chained_faults, (unsigned long long)stats().retried_faults, trap_calls);
    CHECK_EQ(polus_agent_sync_end(), 0);
    sigaction(SIGSEGV, NULL, &cur);
    CHECK(cur.sa_sigaction == guard_handler && (cur.sa_flags & SA_SIGINFO));
    CHECK(sigismember(&cur.sa_mask, SIGUSR1));
    sigaction(SIGTRAP, NULL, &cur);
    CHECK(cur.sa_handler == trap_handler);
    return 0;
}

/* ======================================================================================
 * 5. genuine faults during sync still kill (children); fork while a thread writes.
 * ====================================================================================== */
static int child_status(pid_t pid) {
    int st = 0;
    CHECK(waitpid(pid, &st, 0) == pid);
    return st;
}
static void quiet_child(void) {
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    alarm(10);
}
static void *busy_writer(void *arg) {
    (void)arg;
    while (!atomic_load(&stop_flag)) {
        pthread_mutex_lock(&pair_lock[0]);
        __asm__ volatile("addl $1, %0" : "+m"(ab.a.i));
        barrier();
        pthread_mutex_unlock(&pair_lock[0]);
    }
    return NULL;
}

int test_fatal(void) {
    add_pair(&ab, sizeof ab, ab_old_to_new, &ab_v1, sizeof ab_v1, ab_new_to_old);
    CHECK_EQ(polus_agent_sync_begin(), 0);
    CHECK_EQ(polus_agent_sync_initialize(POLUS_OLD), 1);
    int before = ab_v1.a.i;

    /* a NULL-ish write */
    pid_t pid = fork();
    if (pid == 0) {
        quiet_child();
        *(volatile int *)&ab.a.i = 99; /* still synced in the child, in the child's memory */
        barrier();
        if (ab_v1.a.i != 99) _exit(10);
        volatile uintptr_t bad = 0x10; /* through a variable: gcc rejects a constant bad pointer */
        *(volatile int *)bad = 1;
        _exit(11);
    }
    int st = child_status(pid);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV);
    CHECK_EQ(ab_v1.a.i, before); /* the child's /proc/self/mem was its own */
    CHECK_EQ(ab.a.i, before);

    /* a write to a page that is read-only for real (SEGV_ACCERR, not ours) */
    char *ro = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    pid = fork();
    if (pid == 0) {
        quiet_child();
        *(volatile char *)ro = 1;
        _exit(12);
    }
    st = child_status(pid);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV);

    /* int3 without a handler */
    pid = fork();
    if (pid == 0) {
        quiet_child();
        __asm__ volatile("int3");
        _exit(13);
    }
    st = child_status(pid);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGTRAP);

    /* fork while another thread hammers tracked data (the lock may be held at the fork, with
     * work queued or a sync function running: the child must still sync its own writes) */
    pthread_mutex_init(&pair_lock[0], NULL);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, busy_writer, NULL) == 0);
    int forks_ok = 0;
    for (int k = 0; k < 100; k++) {
        pid = fork();
        if (pid == 0) {
            quiet_child();
            int a0 = ab.a.i, v0 = ab_v1.a.i;
            uint64_t f0 = SYNC.faults;
            __asm__ volatile("addl $1, %0" : "+m"(ab.a.i));
            barrier();
            if (ab_v1.a.i != ab.a.i)
                fprintf(stderr, "fork child: before its write ab=%d ab_v1=%d (%lu faults), after ab=%d ab_v1=%d\n", a0, v0,
                        (unsigned long)f0, ab.a.i, ab_v1.a.i);
            _exit(ab_v1.a.i == ab.a.i ? 0 : 14);
        }
        st = child_status(pid);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        forks_ok++;
    }
    atomic_store(&stop_flag, 1);
    pthread_join(th, NULL);
    CHECK_EQ(ab.a.i, ab_v1.a.i);
    printf("fatal: children died of SIGSEGV/SIGSEGV/SIGTRAP as without sync; %d forks under load ok\n", forks_ok);
    CHECK_EQ(polus_agent_sync_end(), 0);
    return 0;
}

/* ======================================================================================
 * 6. sync_end restores protections and handlers, while threads write.
 * ====================================================================================== */
static union { long v[4]; char pad[4096]; } end_old PAGE_ALIGNED;
static union { long v[4]; char pad[4096]; } end_new PAGE_ALIGNED;
static long end_counts[4];
static void end_sync(const struct polus_sync_args *a) { *(long *)a->counterpart = *(const long *)a->written; }
static void *end_writer(void *arg) {
    long t = (long)arg;
    while (!atomic_load_explicit(&stop_flag, memory_order_relaxed)) {
        __asm__ volatile("addq $1, %0" : "+m"(end_old.v[t]));
        end_counts[t]++;
    }
    return NULL;
}

int test_end(void) {
    struct sigaction before_segv, before_trap, cur;
    sigaction(SIGSEGV, NULL, &before_segv);
    sigaction(SIGTRAP, NULL, &before_trap);
    for (int round = 0; round < 2; round++) { /* a second session after the first one ended */
        atomic_store(&stop_flag, 0);
        SYNC.item_count = 0;
        memset(end_counts, 0, sizeof end_counts);
        for (int t = 0; t < 4; t++) {
            end_old.v[t] = 0;
            add_pair(&end_old.v[t], sizeof(long), end_sync, &end_new.v[t], sizeof(long), end_sync);
        }
        CHECK_EQ(polus_agent_sync_begin(), 0);
        CHECK_EQ(polus_agent_sync_initialize(POLUS_OLD), 4);
        pthread_t th[4];
        for (long t = 0; t < 4; t++) CHECK(pthread_create(&th[t], NULL, end_writer, (void *)t) == 0);
        struct timespec d = {0, 200 * 1000 * 1000};
        nanosleep(&d, NULL);
        CHECK_EQ(polus_agent_sync_end(), 0);
        uint64_t faults = SYNC.faults;
        nanosleep(&d, NULL);
        atomic_store(&stop_flag, 1);
        for (int t = 0; t < 4; t++) pthread_join(th[t], NULL);
        long during = 0;
        for (int t = 0; t < 4; t++) {
            CHECK_EQ(end_old.v[t], end_counts[t]); /* no write lost, before or after the end */
            CHECK(end_new.v[t] <= end_old.v[t]);
            during += end_new.v[t];
        }
        CHECK_EQ(SYNC.faults, faults); /* nothing faults any more */
        CHECK(during > 0);
        char perms[3];
        page_perms(&end_old, perms);
        CHECK(perms[0] == 'r' && perms[1] == 'w');
        page_perms(&end_new, perms);
        CHECK(perms[0] == 'r' && perms[1] == 'w');
        sigaction(SIGSEGV, NULL, &cur);
        CHECK(cur.sa_handler == before_segv.sa_handler);
        sigaction(SIGTRAP, NULL, &cur);
        CHECK(cur.sa_handler == before_trap.sa_handler);
        printf("end (round %d): threads kept writing through sync_end; %llu tracked faults before it, "
               "retried=%llu\n",
               round, (unsigned long long)faults, (unsigned long long)stats().retried_faults);
        CHECK_EQ(polus_agent_sync_end(), 0); /* idempotent */
        CHECK_EQ(polus_agent_sync_clear(), 0);
    }
    /* POLUS_SYNC_KEEP_HANDLERS: ours stays in front, as a pass-through */
    polus_agent_sync_configure(POLUS_SYNC_KEEP_HANDLERS);
    add_pair(&end_old.v[0], sizeof(long), end_sync, &end_new.v[0], sizeof(long), end_sync);
    CHECK_EQ(polus_agent_sync_begin(), 0);
    CHECK_EQ(polus_agent_sync_end(), 1);
    sigaction(SIGSEGV, NULL, &cur);
    CHECK(cur.sa_handler != before_segv.sa_handler);
    end_old.v[0] = 5; /* no longer tracked, no fault */
    CHECK(end_new.v[0] != 5);
    pid_t pid = fork(); /* a genuine fault still kills as before */
    if (pid == 0) {
        quiet_child();
        volatile uintptr_t bad = 0x10;
        *(volatile int *)bad = 1;
        _exit(0);
    }
    int st = child_status(pid);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV);
    return 0;
}
