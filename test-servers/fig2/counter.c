/*
 * The POLUS paper's Fig. 2 evolution as a running program (v0).
 *
 * Eight worker threads call bar() -> foo(&ab.a), which increments ab.a.i under a semaphore;
 * a reader thread checks that ab.a.i never goes backwards. The v0 -> v1 patch
 * (../patches/counter-v0-v1.c) changes struct A to {int j; int i;}, so ab becomes ab_v1,
 * bar and report change, and foo_v1 is an added function (its parameter type changed).
 *
 * Commands on stdin, one per line, each answered with one line on stdout:
 *   report     -> report(): "version=0 i=<ab.a.i> b=<ab.b> j=-1" (v1: ab_v1's fields)
 *   counts     -> "calls=<bar calls completed> v0_calls=<bar() v0 bodies run> violations=<n>"
 *   pause / resume   stop and restart the workers (answered once they all are idle / running)
 *   hold       -> a thread enters hold(), an old function that keeps incrementing ab.b (under
 *                 the semaphore) until "release"; "counts" then reports hold_writes
 *   release    -> hold() returns
 *   probe      -> touches a PROT_NONE guard page; the program's own SIGSEGV handler recovers
 *                 with siglongjmp and it answers "probe ok <n>" (n = faults it handled)
 *   blockall   -> a thread blocks every signal, glibc's internal ones too, with a raw
 *                 rt_sigprocmask (as a thread being created is, until start_thread restores its
 *                 mask), until "unblockall"; it then puts its mask back, as glibc would
 *   quit
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <semaphore.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define WORKERS 8

struct A {
    int i;
};
struct AB {
    struct A a;
    int b;
};

struct AB ab = {{0}, 0};
sem_t mutex;

/* Bookkeeping the tests read; not part of the data the update changes. */
static atomic_long calls;        /* bar() calls completed by the workers */
atomic_long v0_calls;            /* bar() v0 bodies run (the patch's bar_v1 counts its own) */
static atomic_long violations;   /* times the reader saw ab.a.i go backwards */
static atomic_int paused, idle_workers, hold_release, holding;
static atomic_long hold_writes;  /* ab.b increments made by hold() */
static atomic_long own_faults;   /* SIGSEGVs the program's own handler recovered from */
static sigjmp_buf probe_jump;
static char *guard_page;

__attribute__((noinline, noclone)) void foo(struct A *a) {
    sem_wait(&mutex);
    a->i++;
    sem_post(&mutex);
}

__attribute__((noinline, noclone)) void bar(void) {
    atomic_fetch_add(&v0_calls, 1);
    foo(&ab.a);
}

__attribute__((noinline, noclone)) void report(char *out, size_t cap) {
    sem_wait(&mutex);
    snprintf(out, cap, "version=0 i=%d b=%d j=-1", ab.a.i, ab.b);
    sem_post(&mutex);
}

/* An old function that keeps using ab until told to stop: it holds a data update open. */
__attribute__((noinline, noclone)) int hold(void) {
    int seen = 0;
    atomic_store(&holding, 1);
    while (!atomic_load(&hold_release)) {
        sem_wait(&mutex);
        seen = ab.a.i;
        ab.b++;
        atomic_fetch_add(&hold_writes, 1);
        sem_post(&mutex);
        usleep(200);
    }
    atomic_store(&holding, 0);
    return seen;
}

/* Reads ab.a.i through a function of its own so the read is always v0's view. */
__attribute__((noinline, noclone)) int current_i(void) {
    sem_wait(&mutex);
    int i = ab.a.i;
    sem_post(&mutex);
    return i;
}

static void *worker(void *arg) {
    (void)arg;
    for (;;) {
        if (atomic_load(&paused)) {
            atomic_fetch_add(&idle_workers, 1);
            while (atomic_load(&paused)) usleep(1000);
            atomic_fetch_sub(&idle_workers, 1);
        }
        bar();
        atomic_fetch_add(&calls, 1);
        if ((atomic_load(&calls) & 1023) == 0) usleep(100);
    }
    return NULL;
}

static void *reader(void *arg) {
    (void)arg;
    int last = 0;
    for (;;) {
        int now = current_i();
        if (now < last) atomic_fetch_add(&violations, 1);
        last = now;
        usleep(200);
    }
    return NULL;
}

/* The program's own use of SIGSEGV: probing a guard page. */
static void on_segv(int sig, siginfo_t *info, void *context) {
    (void)sig;
    (void)context;
    if ((char *)info->si_addr >= guard_page && (char *)info->si_addr < guard_page + 4096) {
        atomic_fetch_add(&own_faults, 1);
        siglongjmp(probe_jump, 1);
    }
    signal(SIGSEGV, SIG_DFL); /* not ours: crash as usual */
}

static atomic_int blocking, unblock_requested;
static void *blocker(void *arg) {
    (void)arg;
    unsigned long all = ~0ul, saved = 0;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, &saved, sizeof all);
    atomic_store(&blocking, 1);
    while (!atomic_load(&unblock_requested)) usleep(1000);
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &saved, NULL, sizeof saved);
    atomic_store(&blocking, 0);
    return NULL;
}

static void *holder(void *arg) {
    (void)arg;
    hold();
    return NULL;
}

int main(void) {
    sem_init(&mutex, 0, 1);
    guard_page = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &sa, NULL);
    pthread_t t;
    for (int i = 0; i < WORKERS; i++) pthread_create(&t, NULL, worker, NULL);
    pthread_create(&t, NULL, reader, NULL);
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("READY\n");
    char line[128], out[256];
    while (fgets(line, sizeof line, stdin)) {
        if (!strncmp(line, "report", 6)) {
            report(out, sizeof out);
            printf("%s\n", out);
        } else if (!strncmp(line, "counts", 6)) {
            printf("calls=%ld v0_calls=%ld violations=%ld hold_writes=%ld\n", atomic_load(&calls),
                   atomic_load(&v0_calls), atomic_load(&violations), atomic_load(&hold_writes));
        } else if (!strncmp(line, "pause", 5)) {
            atomic_store(&paused, 1);
            while (atomic_load(&idle_workers) < WORKERS) usleep(1000);
            printf("PAUSED\n");
        } else if (!strncmp(line, "resume", 6)) {
            atomic_store(&paused, 0);
            printf("RESUMED\n");
        } else if (!strncmp(line, "hold", 4)) {
            atomic_store(&hold_release, 0);
            pthread_create(&t, NULL, holder, NULL);
            pthread_detach(t);
            while (!atomic_load(&holding)) usleep(100);
            printf("HOLDING\n");
        } else if (!strncmp(line, "release", 7)) {
            atomic_store(&hold_release, 1);
            while (atomic_load(&holding)) usleep(100);
            printf("RELEASED\n");
        } else if (!strncmp(line, "blockall", 8)) {
            atomic_store(&unblock_requested, 0);
            pthread_create(&t, NULL, blocker, NULL);
            pthread_detach(t);
            while (!atomic_load(&blocking)) usleep(100);
            printf("BLOCKING\n");
        } else if (!strncmp(line, "unblockall", 10)) {
            atomic_store(&unblock_requested, 1);
            while (atomic_load(&blocking)) usleep(100);
            printf("UNBLOCKED\n");
        } else if (!strncmp(line, "probe", 5)) {
            if (sigsetjmp(probe_jump, 1) == 0) {
                guard_page[0] = 1; /* faults; the handler jumps back */
                printf("probe missed\n");
            } else {
                printf("probe ok %ld\n", atomic_load(&own_faults));
            }
        } else if (!strncmp(line, "quit", 4)) {
            return 0;
        } else {
            printf("ERR unknown command\n");
        }
    }
    return 0;
}
