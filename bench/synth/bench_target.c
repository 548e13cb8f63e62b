/*
 * bench_target — the synthetic target of Polus's benchmarks.
 *
 *   bench_target [--threads T]      (T >= 1, default 1)
 *
 * T threads in all (the main thread and T-1 workers) call the 100 functions bench_fn_0..99
 * (synth.h, generated bench_fns.c) in a loop, each pass followed by a 1 ms sleep so the
 * machine is not saturated: a target whose threads are busy in the code being patched but
 * that mostly sits in system calls, like a server. The main thread's "sleep" is a poll() on
 * stdin, from which it takes commands (one line in, one line out on stdout):
 *
 *   CHECK        -> "CHECK patched=<n>": how many bench_fn_<i> answer as the patched version
 *   TIME <m> chain|indep [<hex address>]
 *                -> "TIME ns=<total> calls=<m> acc=<x>": <m> calls of bench_fn_0 (or of the
 *                   function at <address>, e.g. a patch's replacement) through a function
 *                   pointer, timed with CLOCK_MONOTONIC (the other threads keep running):
 *                   chain: each call's argument is the previous result (latency-bound: the
 *                          CPU overlaps jumps with the multiply chain),
 *                   indep: independent calls, results summed (throughput-bound: every extra
 *                          jump costs front-end cycles)
 *   LOOPS        -> "LOOPS <n>": passes over the 100 functions completed by all threads
 *   QUIT or EOF  -> exits 0
 *
 * Prints "READY <pid> threads=<T>" once every thread runs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "synth.h"

extern const bench_fn_t bench_fns[BENCH_FN_TOTAL];
unsigned long bench_fn_0(unsigned long x);

static atomic_ulong loops;    /* passes completed, all threads */
static atomic_ulong sink;     /* keeps the results observable */
static atomic_int started;

static unsigned long run_all(unsigned long acc)
{
    for (int i = 0; i < BENCH_FN_TOTAL; i++)
        acc = bench_fns[i](acc);
    atomic_fetch_add_explicit(&loops, 1, memory_order_relaxed);
    return acc;
}

static void *worker(void *arg)
{
    unsigned long acc = (unsigned long)(uintptr_t)arg;
    const struct timespec pause_ts = {0, 1000000L};
    atomic_fetch_add(&started, 1);
    for (;;) {
        acc = run_all(acc);
        atomic_store_explicit(&sink, acc, memory_order_relaxed);
        nanosleep(&pause_ts, NULL);
    }
    return NULL;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void handle(const char *line)
{
    if (strcmp(line, "CHECK") == 0) {
        int patched = 0;
        for (int i = 0; i < BENCH_FN_TOTAL; i++) {
            if (bench_fns[i](0) == 2000ul + (unsigned long)i)
                patched++;
        }
        printf("CHECK patched=%d\n", patched);
    } else if (strncmp(line, "TIME ", 5) == 0) {
        char *end = NULL;
        unsigned long calls = strtoul(line + 5, &end, 10);
        while (*end == ' ')
            end++;
        int chain = strncmp(end, "indep", 5) != 0;
        while (*end != '\0' && *end != ' ')
            end++;
        unsigned long address = strtoul(end, NULL, 16);
        /* Read through a volatile: the compiler cannot know (or inline) the callee. */
        bench_fn_t volatile chosen = address ? (bench_fn_t)(uintptr_t)address : bench_fn_0;
        bench_fn_t fn = chosen;
        unsigned long acc = 1;
        uint64_t start = now_ns();
        if (chain) {
            for (unsigned long n = 0; n < calls; n++)
                acc = fn(acc); /* each call depends on the last */
        } else {
            for (unsigned long n = 0; n < calls; n++)
                acc += fn(n); /* independent calls */
        }
        uint64_t elapsed = now_ns() - start;
        printf("TIME ns=%llu calls=%lu acc=%lu\n", (unsigned long long)elapsed, calls, acc);
    } else if (strcmp(line, "LOOPS") == 0) {
        printf("LOOPS %lu\n", atomic_load(&loops));
    } else if (strcmp(line, "QUIT") == 0) {
        exit(0);
    } else {
        printf("ERR unknown command\n");
    }
    fflush(stdout);
}

int main(int argc, char **argv)
{
    long threads = 1, touch_mb = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            threads = strtol(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--touch-mb") == 0 && i + 1 < argc) {
            touch_mb = strtol(argv[++i], NULL, 10);
        } else {
            fprintf(stderr, "usage: bench_target [--threads T] [--touch-mb MB]\n");
            return 2;
        }
    }
    if (touch_mb < 0 || touch_mb > 65536) {
        fprintf(stderr, "bench_target: --touch-mb must be 0..65536\n");
        return 2;
    }
    if (touch_mb > 0) { /* resident memory, for what a copy of the process costs (rehearsal) */
        size_t bytes = (size_t)touch_mb << 20;
        char *heap = malloc(bytes);
        if (!heap) {
            fprintf(stderr, "bench_target: cannot allocate %ld MiB\n", touch_mb);
            return 1;
        }
        for (size_t off = 0; off < bytes; off += 4096)
            heap[off] = (char)off;
        atomic_store_explicit(&sink, (unsigned long)heap[bytes - 4096], memory_order_relaxed);
    }
    if (threads < 1 || threads > 1024) {
        fprintf(stderr, "bench_target: --threads must be 1..1024\n");
        return 2;
    }
    for (long t = 1; t < threads; t++) {
        pthread_t id;
        int rc = pthread_create(&id, NULL, worker, (void *)(uintptr_t)t);
        if (rc != 0) {
            fprintf(stderr, "bench_target: pthread_create: %s\n", strerror(rc));
            return 1;
        }
        pthread_detach(id);
    }
    while (atomic_load(&started) < threads - 1)
        usleep(100);
    printf("READY %d threads=%ld\n", (int)getpid(), threads);
    fflush(stdout);

    char buf[256];
    size_t used = 0;
    unsigned long acc = 0;
    for (;;) {
        acc = run_all(acc);
        atomic_store_explicit(&sink, acc, memory_order_relaxed);
        struct pollfd pfd = {STDIN_FILENO, POLLIN, 0};
        int rc = poll(&pfd, 1, 1);
        if (rc < 0 && errno != EINTR)
            return 1;
        if (rc <= 0)
            continue;
        ssize_t n = read(STDIN_FILENO, buf + used, sizeof buf - 1 - used);
        if (n == 0)
            return 0; /* EOF: the driver is gone */
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return 1;
        }
        used += (size_t)n;
        buf[used] = '\0';
        char *start = buf, *newline;
        while ((newline = strchr(start, '\n')) != NULL) {
            *newline = '\0';
            handle(start);
            start = newline + 1;
        }
        used = strlen(start);
        memmove(buf, start, used + 1);
        if (used == sizeof buf - 1)
            used = 0; /* an over-long line: drop it */
    }
}
