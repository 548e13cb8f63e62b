/*
 * Heap data whose type changes: a linked list of items (v0 node: id, count, next). Four
 * worker threads bump random items through bump(); the v0 -> v1 patch
 * (../patches/inventory-v0-v1.c) gives nodes a new field, so a pre-update callback builds a
 * new list and registers every old/new node pair for write-through sync.
 *
 * Commands on stdin: "total" -> total(): "version=0 total=<sum of counts> items=<n>";
 * "counts" -> "bumps=<bump() calls completed>"; "pause" / "resume" as in counter.c; "quit".
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ITEMS 16
#define WORKERS 4

struct item {
    int id;
    long count;
    struct item *next;
};

struct item *inventory;
sem_t inventory_lock;

static atomic_long bumps;
static atomic_int paused, idle_workers;

__attribute__((noinline, noclone)) void bump(int id) {
    sem_wait(&inventory_lock);
    for (struct item *p = inventory; p; p = p->next) {
        if (p->id == id) {
            p->count++;
            break;
        }
    }
    sem_post(&inventory_lock);
}

__attribute__((noinline, noclone)) void total(char *out, size_t cap) {
    long sum = 0;
    int n = 0;
    sem_wait(&inventory_lock);
    for (struct item *p = inventory; p; p = p->next, n++) sum += p->count;
    sem_post(&inventory_lock);
    snprintf(out, cap, "version=0 total=%ld items=%d", sum, n);
}

static void *worker(void *arg) {
    unsigned seed = (unsigned)(uintptr_t)arg;
    for (;;) {
        if (atomic_load(&paused)) {
            atomic_fetch_add(&idle_workers, 1);
            while (atomic_load(&paused)) usleep(1000);
            atomic_fetch_sub(&idle_workers, 1);
        }
        bump((int)(rand_r(&seed) % ITEMS));
        atomic_fetch_add(&bumps, 1);
        usleep(50);
    }
    return NULL;
}

int main(void) {
    sem_init(&inventory_lock, 0, 1);
    for (int i = ITEMS - 1; i >= 0; i--) {
        struct item *it = calloc(1, sizeof *it);
        it->id = i;
        it->next = inventory;
        inventory = it;
    }
    pthread_t t;
    for (long i = 0; i < WORKERS; i++) pthread_create(&t, NULL, worker, (void *)(i + 1));
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("READY\n");
    char line[128], out[256];
    while (fgets(line, sizeof line, stdin)) {
        if (!strncmp(line, "total", 5)) {
            total(out, sizeof out);
            printf("%s\n", out);
        } else if (!strncmp(line, "counts", 6)) {
            printf("bumps=%ld\n", atomic_load(&bumps));
        } else if (!strncmp(line, "pause", 5)) {
            atomic_store(&paused, 1);
            while (atomic_load(&idle_workers) < WORKERS) usleep(1000);
            printf("PAUSED\n");
        } else if (!strncmp(line, "resume", 6)) {
            atomic_store(&paused, 0);
            printf("RESUMED\n");
        } else if (!strncmp(line, "quit", 4)) {
            return 0;
        } else {
            printf("ERR unknown command\n");
        }
    }
    return 0;
}
