/*
 * The POLUS paper's Fig. 3 patch for the Fig. 2 evolution, against ../fig2/counter.c:
 * struct A gains a field j, so A, AB and the global ab change (ab -> ab_v1); bar, report
 * and hold use ab and change; foo_v1 is an added function (its parameter type changed, so
 * old bar keeps calling old foo, paper §3.1.3).
 */
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>

#include <polus/patch.h>

/* Built twice: counter-v0-v1-notified.so defines POLUS_COUNTER_WRITES_NOTIFIED, flags ab_v1
 * POLUS_DATA_WRITES_NOTIFIED and has foo_v1 say polus_wrote after its write: the new code
 * then writes ab_v1 without a fault while old code's writes to ab stay tracked. */
#ifdef POLUS_COUNTER_WRITES_NOTIFIED
#define NEW_AB_FLAGS POLUS_DATA_WRITES_NOTIFIED
#define WROTE(item) POLUS_WROTE(item)
#else
#define NEW_AB_FLAGS 0
#define WROTE(item) do { } while (0)
#endif

/* External definitions: the old types, as the target has them. */
struct A {
    int i;
};
struct AB {
    struct A a;
    int b;
};

/* Renamed types and variables. */
struct A_v1 {
    int j;
    int i;
};
struct AB_v1 {
    struct A_v1 a;
    int b;
};
struct AB_v1 ab_v1 = {{0, 0}, 0};

/* Target entities the new code uses; the injector fills these before any of it runs. */
static struct AB *ab;        /* the old global */
static sem_t *mutex;         /* unchanged, shared by old and new code */
static atomic_long *v0_calls; /* unused by new code; imported to show imports */
atomic_long v1_calls;         /* bar_v1 bodies run: what ab_v1.a.j must equal */
static volatile int *hold_release_flag;

/* Added and renamed functions. */
void foo_v1(struct A_v1 *a) {
    sem_wait(mutex);
    a->i++;
    a->j++;
    WROTE(*a); /* inside the lock: old code reading ab under it sees the write */
    sem_post(mutex);
}

void bar_v1(void) {
    atomic_fetch_add(&v1_calls, 1);
    foo_v1(&ab_v1.a);
}

void report_v1(char *out, size_t cap) {
    sem_wait(mutex);
    snprintf(out, cap, "version=1 i=%d b=%d j=%d v1_calls=%ld", ab_v1.a.i, ab_v1.b, ab_v1.a.j,
             atomic_load(&v1_calls));
    sem_post(mutex);
}

int hold_v1(void) { return ab_v1.a.i; }

/* Data synchronization functions: each brings the other side up to date after a write. */
void old_ab_post_sync(const struct polus_sync_args *args) {
    (void)args;
    ab_v1.a.i = ab->a.i;
    ab_v1.b = ab->b;
}

void new_ab_post_sync(const struct polus_sync_args *args) {
    (void)args;
    ab->a.i = ab_v1.a.i;
    ab->b = ab_v1.b;
}

enum { OLD_BAR, NEW_BAR, OLD_FOO, NEW_FOO, OLD_REPORT, NEW_REPORT, OLD_HOLD, NEW_HOLD };
static const struct polus_function functions[] = {
    [OLD_BAR] = POLUS_OLD_FUNCTION("bar"),       [NEW_BAR] = POLUS_NEW_FUNCTION(bar_v1),
    [OLD_FOO] = POLUS_OLD_FUNCTION("foo"),       [NEW_FOO] = POLUS_NEW_FUNCTION(foo_v1),
    [OLD_REPORT] = POLUS_OLD_FUNCTION("report"), [NEW_REPORT] = POLUS_NEW_FUNCTION(report_v1),
    [OLD_HOLD] = POLUS_OLD_FUNCTION("hold"),     [NEW_HOLD] = POLUS_NEW_FUNCTION(hold_v1),
};

enum { OLD_AB, NEW_AB };
static const struct polus_data data[] = {
    [OLD_AB] = POLUS_OLD_DATA("ab", &ab, 0, old_ab_post_sync, NULL),
    [NEW_AB] = {"ab_v1", (void *)&ab_v1, 0, sizeof ab_v1, new_ab_post_sync, NULL, POLUS_NEW, NEW_AB_FLAGS},
};

static const struct polus_mapping mappings[] = {
    /* mapping between old and new functions: these old functions get redirected */
    POLUS_FUNCTION_MAPPING(OLD_BAR, NEW_BAR),
    POLUS_FUNCTION_MAPPING(OLD_REPORT, NEW_REPORT),
    POLUS_FUNCTION_MAPPING(OLD_HOLD, NEW_HOLD),
    /* mapping between old and new data */
    POLUS_DATA_MAPPING(OLD_AB, NEW_AB),
    /* mapping between function and data: who uses what */
    POLUS_F2D_MAPPING(OLD_BAR, OLD_AB), POLUS_F2D_MAPPING(OLD_FOO, OLD_AB),
    POLUS_F2D_MAPPING(OLD_REPORT, OLD_AB), POLUS_F2D_MAPPING(OLD_HOLD, OLD_AB),
    POLUS_F2D_MAPPING(NEW_BAR, NEW_AB), POLUS_F2D_MAPPING(NEW_FOO, NEW_AB),
    POLUS_F2D_MAPPING(NEW_REPORT, NEW_AB), POLUS_F2D_MAPPING(NEW_HOLD, NEW_AB),
    /* mapping between data and function */
    POLUS_D2F_MAPPING(OLD_AB, OLD_BAR), POLUS_D2F_MAPPING(OLD_AB, OLD_FOO),
    POLUS_D2F_MAPPING(OLD_AB, OLD_REPORT), POLUS_D2F_MAPPING(OLD_AB, OLD_HOLD),
    POLUS_D2F_MAPPING(NEW_AB, NEW_BAR), POLUS_D2F_MAPPING(NEW_AB, NEW_FOO),
    POLUS_D2F_MAPPING(NEW_AB, NEW_REPORT), POLUS_D2F_MAPPING(NEW_AB, NEW_HOLD),
};

static const struct polus_import imports[] = {
    POLUS_IMPORT("mutex", &mutex),
    POLUS_IMPORT("v0_calls", &v0_calls),
    POLUS_IMPORT("counter.c:hold_release", &hold_release_flag),
};

POLUS_PATCH("counter-v1", "Fig. 2: struct A gains j; ab -> ab_v1, bar/report/hold change, foo_v1 added",
            functions, POLUS_ARRAY_COUNT(functions), data, POLUS_ARRAY_COUNT(data), mappings,
            POLUS_ARRAY_COUNT(mappings), NULL, 0, imports, POLUS_ARRAY_COUNT(imports), NULL, 0);
