/*
 * kv — the version-history test server for polus-mkpatch (test-servers/history/README.md).
 *
 * A list of KEYS entries on the heap (`table`), bumped by WORKERS threads through work_once();
 * a global `stats`; commands on stdin answered on stdout, dispatched through a table of function
 * pointers. Each version vN/ is a whole tree; the generator turns vN -> vN+1 into a patch.
 *   get K     -> cmd_get     version  -> cmd_version     stats -> cmd_stats
 *   sum       -> "sum=<values> puts=<stats.puts> ops=<worker ops>" (pause first for exact figures)
 *   pause / resume     stop / restart the workers
 *   nap       -> a thread enters nap() and sleeps there until "wake"; answers NAPPING
 *   wake      -> nap() returns; answers "woke <its return value>"
 *   quit
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define KEYS 8
#define WORKERS 4

struct entry {
    int key;
    long hits; /* v1: gets of this key */
    long value;
    struct entry *next;
};

struct stats {
    long gets;
    long misses; /* v1: gets of unknown keys */
    long puts;
};

struct entry *table;
struct stats stats;
sem_t lock;
atomic_long worker_ops;
static atomic_int paused, idle_workers, napping, wake;
static atomic_long nap_result = -1;

__attribute__((noinline)) void init_table(void) {
    for (int k = KEYS - 1; k >= 0; k--) {
        struct entry *e = calloc(1, sizeof *e);
        e->key = k;
        e->next = table;
        table = e;
    }
}

static struct entry *find(int key) {
    for (struct entry *e = table; e; e = e->next)
        if (e->key == key) return e;
    return NULL;
}

__attribute__((noinline)) long score(struct entry *e) { return e->value; }

__attribute__((noinline)) void work_once(int key) {
    sem_wait(&lock);
    struct entry *e = find(key);
    if (e) e->value++;
    stats.puts++;
    atomic_fetch_add(&worker_ops, 1);
    sem_post(&lock);
}

/* Replaced by every version: the same function updated again while a thread sleeps in it. */
__attribute__((noinline)) long nap(void) {
    atomic_store(&napping, 1);
    while (!atomic_load(&wake)) usleep(1000);
    atomic_store(&napping, 0);
    return 1;
}

typedef void handler_fn(const char *arg, char *out, size_t cap);

__attribute__((noinline)) void cmd_get(const char *arg, char *out, size_t cap) {
    sem_wait(&lock);
    struct entry *e = find(atoi(arg));
    stats.gets++;
    if (e) {
        e->hits++;
        snprintf(out, cap, "key=%d value=%ld score=%ld hits=%ld", e->key, e->value, score(e), e->hits);
    } else {
        stats.misses++;
        snprintf(out, cap, "ERR no key");
    }
    sem_post(&lock);
}

__attribute__((noinline)) void cmd_stats(const char *arg, char *out, size_t cap) {
    (void)arg;
    sem_wait(&lock);
    snprintf(out, cap, "gets=%ld misses=%ld puts=%ld", stats.gets, stats.misses, stats.puts);
    sem_post(&lock);
}

__attribute__((noinline)) void cmd_sum(const char *arg, char *out, size_t cap) {
    (void)arg;
    long sum = 0;
    sem_wait(&lock);
    for (struct entry *e = table; e; e = e->next) sum += e->value;
    snprintf(out, cap, "sum=%ld puts=%ld ops=%ld", sum, stats.puts, atomic_load(&worker_ops));
    sem_post(&lock);
}

__attribute__((noinline)) void cmd_version(const char *arg, char *out, size_t cap) {
    (void)arg;
    snprintf(out, cap, "version=1");
}

/* The dispatch table: pointers to functions the patches replace. */
static const struct {
    const char *name;
    handler_fn *fn;
} handlers[] = {{"get", cmd_get}, {"stats", cmd_stats}, {"sum", cmd_sum}, {"version", cmd_version}};

static void *worker(void *arg) {
    unsigned seed = (unsigned)(unsigned long)arg;
    for (;;) {
        if (atomic_load(&paused)) {
            atomic_fetch_add(&idle_workers, 1);
            while (atomic_load(&paused)) usleep(1000);
            atomic_fetch_sub(&idle_workers, 1);
        }
        work_once((int)(rand_r(&seed) % KEYS));
        usleep(20);
    }
    return NULL;
}

static void *napper(void *arg) {
    (void)arg;
    atomic_store(&nap_result, nap());
    return NULL;
}

int main(void) {
    sem_init(&lock, 0, 1);
    init_table();
    pthread_t t;
    for (long i = 0; i < WORKERS; i++) pthread_create(&t, NULL, worker, (void *)(i + 1));
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("READY\n");
    char line[128], out[256];
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = '\0';
        char *arg = strchr(line, ' ');
        if (arg) *arg++ = '\0';
        else arg = line + strlen(line);
        size_t i;
        for (i = 0; i < sizeof handlers / sizeof handlers[0]; i++) {
            if (!strcmp(line, handlers[i].name)) {
                handlers[i].fn(arg, out, sizeof out);
                printf("%s\n", out);
                break;
            }
        }
        if (i < sizeof handlers / sizeof handlers[0]) continue;
        if (!strcmp(line, "pause")) {
            atomic_store(&paused, 1);
            while (atomic_load(&idle_workers) < WORKERS) usleep(1000);
            printf("PAUSED\n");
        } else if (!strcmp(line, "resume")) {
            atomic_store(&paused, 0);
            printf("RESUMED\n");
        } else if (!strcmp(line, "nap")) {
            atomic_store(&wake, 0);
            atomic_store(&nap_result, -1);
            pthread_create(&t, NULL, napper, NULL);
            pthread_detach(t);
            while (!atomic_load(&napping)) usleep(100);
            printf("NAPPING\n");
        } else if (!strcmp(line, "wake")) {
            atomic_store(&wake, 1);
            while (atomic_load(&nap_result) < 0) usleep(100);
            printf("woke %ld\n", atomic_load(&nap_result));
        } else if (!strcmp(line, "quit")) {
            return 0;
        } else {
            printf("ERR unknown command\n");
        }
    }
    return 0;
}
