/*
 * sync_test_emulation.c — agent_sync_test scenarios: out-of-line execution of every store form
 * against native execution, and the cost of a tracked write (emulation, perf).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <signal.h>
#include <time.h>
#include <ucontext.h>

#include "sync_test.h"

/* ======================================================================================
 * 8. out-of-line execution: every store form gives the same memory, registers and flags
 *    on a tracked buffer as on an untracked one (differential test).
 * ====================================================================================== */
#define TB 512
static union { uint8_t b[TB]; char pad[4096]; } tracked_buf PAGE_ALIGNED;
static union { uint8_t b[TB]; char pad[4096]; } counterpart_buf PAGE_ALIGNED;
static union { uint8_t b[TB]; char pad[4096]; } native_buf PAGE_ALIGNED;
static union { int v; char pad[4096]; } tracked_global PAGE_ALIGNED;
static union { int v; char pad[4096]; } native_global PAGE_ALIGNED;
static uint8_t source_buf[TB] __attribute__((aligned(64)));

static void buf_sync(const struct polus_sync_args *a) { memcpy(a->counterpart, a->written, TB); }
static void int_sync(const struct polus_sync_args *a) { (void)a; }

struct io {
    uint64_t r[6];
    uint64_t flags;
    uint8_t v[64] __attribute__((aligned(64)));
};
typedef void (*case_fn)(uint8_t *m, struct io *io);
#define FLAGS_OUT "pushfq\n\tpopq %[fl]\n\t"

/* --- general-purpose stores --- */
static void c_mov8(uint8_t *m, struct io *io) { __asm__ volatile("movb %b1, 3(%0)" ::"r"(m), "r"(io->r[0]) : "memory"); }
static void c_mov16(uint8_t *m, struct io *io) { __asm__ volatile("movw %w1, 5(%0)" ::"r"(m), "r"(io->r[0]) : "memory"); }
static void c_mov32_sib(uint8_t *m, struct io *io) {
    __asm__ volatile("movl %k1, 9(%0,%2,4)" ::"r"(m), "r"(io->r[0]), "r"(io->r[1] & 7) : "memory");
}
static void c_mov64_r13_r12(uint8_t *m, struct io *io) {
    register uint8_t *base __asm__("r13") = m;
    register uint64_t val __asm__("r12") = io->r[0];
    __asm__ volatile("movq %1, 16(%0)" ::"r"(base), "r"(val) : "memory");
}
static void c_mov_r13_nodisp(uint8_t *m, struct io *io) {
    register uint8_t *base __asm__("r13") = m + 40;
    __asm__ volatile("movq %1, (%0)" ::"r"(base), "r"(io->r[0]) : "memory");
}
static void c_mov_high_index(uint8_t *m, struct io *io) {
    register uint8_t *base __asm__("r14") = m;
    register uint64_t idx __asm__("r12") = io->r[1] & 7;
    register uint64_t val __asm__("r15") = io->r[0];
    __asm__ volatile("movq %2, 64(%0,%1,8)" ::"r"(base), "r"(idx), "r"(val) : "memory");
}
static void c_mov_imm(uint8_t *m, struct io *io) {
    (void)io;
    __asm__ volatile("movb $0x7f, 1(%0)\n\tmovw $0x1234, 2(%0)\n\tmovl $0xdeadbeef, 4(%0)\n\tmovq $-5, 8(%0)" ::"r"(m)
                     : "memory");
}
static void c_mov_byte_rex(uint8_t *m, struct io *io) {
    register uint64_t s __asm__("rsi") = io->r[0];
    register uint64_t r9 __asm__("r9") = io->r[1];
    __asm__ volatile("movb %%sil, 7(%0)\n\tmovb %%r9b, 8(%0)\n\tmovb %%ah, 9(%0)" ::"D"(m), "r"(s), "r"(r9),
                     "a"(io->r[2])
                     : "memory");
}
#define ALU_CASE(name, insn)                                                                          \
    static void name(uint8_t *m, struct io *io) {                                                     \
        uint64_t fl;                                                                                  \
        __asm__ volatile("cmpq %[a], %[a]\n\t" insn "\n\t" FLAGS_OUT : [fl] "=r"(fl) : [m] "r"(m), [a] "r"(io->r[0]), "c"(io->r[1]) \
                         : "memory", "cc");                                                           \
        io->flags = fl & 0x8d5;                                                                       \
    }
ALU_CASE(c_add32, "addl %k[a], 12(%[m])")
ALU_CASE(c_adc64, "stc\n\tadcq %[a], 16(%[m])")
ALU_CASE(c_sbb8, "stc\n\tsbbb %b[a], 24(%[m])")
ALU_CASE(c_sub16, "subw %w[a], 26(%[m])")
ALU_CASE(c_and64, "andq %[a], 32(%[m])")
ALU_CASE(c_or32, "orl %k[a], 40(%[m])")
ALU_CASE(c_xor8, "xorb %b[a], 44(%[m])")
ALU_CASE(c_add_imm32_64, "addq $0x12345678, 8(%[m])")
ALU_CASE(c_add_imm8_16, "addw $5, 50(%[m])")
ALU_CASE(c_or_imm8, "orb $0x81, 51(%[m])")
ALU_CASE(c_inc32, "incl 52(%[m])")
ALU_CASE(c_dec64, "decq 56(%[m])")
ALU_CASE(c_neg16, "negw 60(%[m])")
ALU_CASE(c_not8, "notb 62(%[m])")
ALU_CASE(c_shl_imm, "shll $3, 64(%[m])")
ALU_CASE(c_sar_cl, "sarq %%cl, 72(%[m])")
ALU_CASE(c_rol1, "rolw $1, 80(%[m])")
ALU_CASE(c_rcr8, "stc\n\trcrb $1, 82(%[m])")
ALU_CASE(c_lock_or, "lock orq %[a], 88(%[m])")
ALU_CASE(c_lock_and, "lock andl %k[a], 96(%[m])")
ALU_CASE(c_lock_dec, "lock decl 100(%[m])")
ALU_CASE(c_bts, "btsq $5, 104(%[m])")
ALU_CASE(c_btr, "btrl $3, 112(%[m])")
ALU_CASE(c_btc, "btcw $1, 116(%[m])")
ALU_CASE(c_sete, "cmpq %[a], %%rcx\n\tsete 120(%[m])\n\tsetc 121(%[m])")
ALU_CASE(c_shld, "shldq $4, %[a], 128(%[m])")
ALU_CASE(c_shrd_cl, "shrdl %%cl, %k[a], 136(%[m])")
ALU_CASE(c_movnti, "movnti %[a], 144(%[m])")

static void c_xchg(uint8_t *m, struct io *io) {
    uint64_t a = io->r[0];
    __asm__ volatile("xchgq %0, 152(%1)" : "+r"(a) : "r"(m) : "memory");
    io->r[0] = a;
}
static void c_xadd(uint8_t *m, struct io *io) {
    uint64_t a = io->r[0], fl;
    __asm__ volatile("lock xaddl %k0, 160(%2)\n\t" FLAGS_OUT : "+r"(a), [fl] "=r"(fl) : "r"(m) : "memory", "cc");
    io->r[0] = a;
    io->flags = fl & 0x8d5;
}
static void c_cmpxchg_hit(uint8_t *m, struct io *io) {
    uint64_t expected = *(volatile uint64_t *)(m + 168), fl;
    __asm__ volatile("lock cmpxchgq %2, 168(%3)\n\t" FLAGS_OUT : "+a"(expected), [fl] "=r"(fl) : "r"(io->r[1]), "r"(m)
                     : "memory", "cc");
    io->r[0] = expected;
    io->flags = fl & 0x8d5;
}
static void c_cmpxchg_miss(uint8_t *m, struct io *io) { /* fails: no store, rax loaded */
    uint64_t expected = io->r[0], fl;
    __asm__ volatile("lock cmpxchgq %2, 176(%3)\n\t" FLAGS_OUT : "+a"(expected), [fl] "=r"(fl) : "r"(io->r[1]), "r"(m)
                     : "memory", "cc");
    io->r[0] = expected;
    io->flags = fl & 0x8d5;
}
static void c_cmpxchg16b(uint8_t *m, struct io *io) {
    uint64_t lo = *(volatile uint64_t *)(m + 192), hi = *(volatile uint64_t *)(m + 200), fl;
    __asm__ volatile("lock cmpxchg16b 192(%4)\n\t" FLAGS_OUT
                     : "+a"(lo), "+d"(hi), [fl] "=r"(fl)
                     : "b"(io->r[0]), "r"(m), "c"(io->r[1])
                     : "memory", "cc");
    io->r[0] = lo;
    io->r[1] = hi;
    io->flags = fl & 0x8d5;
}
static void c_rip_relative(uint8_t *m, struct io *io) {
    (void)io;
    if (m == tracked_buf.b) __asm__ volatile("addl $7, %0\n\tincl %0" : "+m"(tracked_global.v));
    else __asm__ volatile("addl $7, %0\n\tincl %0" : "+m"(native_global.v));
}

/* --- vector stores --- */
static void c_sse(uint8_t *m, struct io *io) {
    __asm__ volatile("movdqa (%1), %%xmm0\n\t"
                     "movdqa 16(%1), %%xmm1\n\t"
                     "movups %%xmm0, 3(%0)\n\t"
                     "movaps %%xmm1, 32(%0)\n\t"
                     "movdqu %%xmm0, 49(%0)\n\t"
                     "movdqa %%xmm1, 80(%0)\n\t"
                     "movq %%xmm0, 97(%0)\n\t"
                     "movd %%xmm1, 106(%0)\n\t"
                     "movss %%xmm0, 111(%0)\n\t"
                     "movsd %%xmm1, 117(%0)\n\t"
                     "movhps %%xmm0, 125(%0)\n\t"
                     "movlps %%xmm1, 135(%0)\n\t"
                     "movntdq %%xmm0, 144(%0)\n\t"
                     "pextrd $2, %%xmm1, 161(%0)\n\t"
                     "pextrb $5, %%xmm0, 166(%0)\n\t"
                     "extractps $3, %%xmm1, 170(%0)\n\t"
                     "movq %%xmm1, %%rax\n\t"
                     "movq %%rax, %%mm0\n\t"
                     "movq %%mm0, 176(%0)\n\t"
                     "emms\n\t"
                     "sfence" ::"r"(m),
                     "r"(io->v)
                     : "memory", "rax", "xmm0", "xmm1");
}
__attribute__((target("avx2"))) static void c_avx(uint8_t *m, struct io *io) {
    __asm__ volatile("vmovdqa (%1), %%ymm0\n\t"
                     "vmovdqa 32(%1), %%ymm1\n\t"
                     "vmovdqu %%ymm0, 1(%0)\n\t"
                     "vmovaps %%ymm1, 64(%0)\n\t"
                     "vextracti128 $1, %%ymm0, 101(%0)\n\t"
                     "vpcmpeqd %%ymm2, %%ymm2, %%ymm2\n\t"
                     "vpsrlq $63, %%ymm2, %%ymm2\n\t"
                     "vpsllq $63, %%ymm2, %%ymm2\n\t" /* mask: top bit of every qword -> all dwords alternate */
                     "vpmaskmovd %%ymm1, %%ymm2, 128(%0)\n\t"
                     "vmovd %%xmm1, 170(%0)\n\t"
                     "vmovss %%xmm0, 180(%0)\n\t"
                     "vmovdqu %%xmm1, 190(%0)\n\t"
                     "vzeroupper" ::"r"(m),
                     "r"(io->v)
                     : "memory", "xmm0", "xmm1", "xmm2");
}
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void c_avx512(uint8_t *m, struct io *io) {
    __asm__ volatile("vmovdqa64 (%1), %%zmm16\n\t"
                     "vmovdqu64 %%zmm16, (%0)\n\t"
                     "vmovdqu32 %%zmm16, 64(%0)\n\t" /* disp8*N: disp8 = 1 */
                     "movl $0x5a5a5a5a, %%eax\n\t"
                     "kmovd %%eax, %%k1\n\t"
                     "vmovdqu8 %%ymm16, 133(%0)%{%%k1%}\n\t"
                     "vmovups %%xmm16, 170(%0)\n\t"
                     "vextracti32x4 $2, %%zmm16, 200(%0)\n\t"
                     "vmovdqu64 %%ymm16, -32(%0,%2)\n\t"
                     "vzeroupper" ::"r"(m),
                     "r"(io->v), "r"((uint64_t)300)
                     : "memory", "rax", "k1", "xmm16");
}

/* --- string instructions --- */
static void c_rep_stosb(uint8_t *m, struct io *io) {
    void *d = m + 3;
    unsigned long n = 37;
    __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(io->r[0]) : "memory");
    io->r[0] = n;
    io->r[1] = (uint64_t)((uint8_t *)d - m);
}
static void c_rep_stosq(uint8_t *m, struct io *io) {
    void *d = m + 48;
    unsigned long n = 20;
    __asm__ volatile("rep stosq" : "+D"(d), "+c"(n) : "a"(io->r[0]) : "memory");
    io->r[1] = (uint64_t)((uint8_t *)d - m);
}
static void c_stosl(uint8_t *m, struct io *io) {
    void *d = m + 301;
    __asm__ volatile("stosl" : "+D"(d) : "a"(io->r[0]) : "memory");
    io->r[1] = (uint64_t)((uint8_t *)d - m);
}
static void c_rep_movsb(uint8_t *m, struct io *io) {
    void *d = m + 5;
    const void *s = source_buf + 7;
    unsigned long n = 300;
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n)::"memory");
    io->r[1] = (uint64_t)((uint8_t *)d - m);
}
static void c_rep_movsq(uint8_t *m, struct io *io) {
    void *d = m + 256;
    const void *s = source_buf;
    unsigned long n = 25;
    __asm__ volatile("rep movsq" : "+D"(d), "+S"(s), "+c"(n)::"memory");
    io->r[1] = (uint64_t)((uint8_t *)d - m);
}
static void c_rep_movsb_overlap(uint8_t *m, struct io *io) { /* forward copy onto itself: replicates */
    void *d = m + 13;
    const void *s = m + 10;
    unsigned long n = 60;
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n)::"memory");
    io->r[1] = (uint64_t)((uint8_t *)d - m);
}
static void c_glibc(uint8_t *m, struct io *io) {
    (void)io;
    memset_fn(m + 1, 0xab, 100);
    void *(*volatile cpy)(void *, const void *, size_t) = memcpy;
    cpy(m + 7, source_buf + 3, 200);
    cpy(m + 300, source_buf, 9);
    char *(*volatile scpy)(char *, const char *) = strcpy;
    scpy((char *)m + 400, "write-through, both directions");
}

/* --- not emulated: single-stepped --- */
static void c_x87(uint8_t *m, struct io *io) {
    int v = (int)io->r[0];
    __asm__ volatile("fildl %1\n\tfistpl 20(%0)\n\tfnstcw 30(%0)" ::"r"(m), "m"(v) : "memory");
}

struct test_case {
    const char *name;
    case_fn fn;
    int needs; /* 0, 1 = avx2, 2 = avx512 */
    int stepped; /* expected to be single-stepped, not emulated */
};
static const struct test_case cases[] = {
    {"mov8", c_mov8, 0, 0}, {"mov16", c_mov16, 0, 0}, {"mov32 sib", c_mov32_sib, 0, 0},
    {"mov64 r13+disp8 r12", c_mov64_r13_r12, 0, 0}, {"mov (r13)", c_mov_r13_nodisp, 0, 0},
    {"mov r14+r12*8 r15", c_mov_high_index, 0, 0}, {"mov imm", c_mov_imm, 0, 0},
    {"mov sil/r9b/ah", c_mov_byte_rex, 0, 0}, {"add32", c_add32, 0, 0}, {"adc64", c_adc64, 0, 0},
    {"sbb8", c_sbb8, 0, 0}, {"sub16", c_sub16, 0, 0}, {"and64", c_and64, 0, 0}, {"or32", c_or32, 0, 0},
    {"xor8", c_xor8, 0, 0}, {"add imm32 q", c_add_imm32_64, 0, 0}, {"add imm8 w", c_add_imm8_16, 0, 0},
    {"or imm8 b", c_or_imm8, 0, 0}, {"inc32", c_inc32, 0, 0}, {"dec64", c_dec64, 0, 0}, {"neg16", c_neg16, 0, 0},
    {"not8", c_not8, 0, 0}, {"shl imm", c_shl_imm, 0, 0}, {"sar cl", c_sar_cl, 0, 0}, {"rol 1", c_rol1, 0, 0},
    {"rcr 1", c_rcr8, 0, 0}, {"lock or", c_lock_or, 0, 0}, {"lock and", c_lock_and, 0, 0},
    {"lock dec", c_lock_dec, 0, 0}, {"bts", c_bts, 0, 0}, {"btr", c_btr, 0, 0}, {"btc", c_btc, 0, 0},
    {"setcc", c_sete, 0, 0}, {"shld", c_shld, 0, 0}, {"shrd cl", c_shrd_cl, 0, 0}, {"movnti", c_movnti, 0, 0},
    {"xchg", c_xchg, 0, 0}, {"lock xadd", c_xadd, 0, 0}, {"lock cmpxchg hit", c_cmpxchg_hit, 0, 0},
    {"lock cmpxchg miss", c_cmpxchg_miss, 0, 0}, {"lock cmpxchg16b", c_cmpxchg16b, 0, 0},
    {"rip-relative", c_rip_relative, 0, 0}, {"sse/mmx stores", c_sse, 0, 0}, {"avx stores", c_avx, 1, 0},
    {"avx-512 stores", c_avx512, 2, 0}, {"rep stosb", c_rep_stosb, 0, 0}, {"rep stosq", c_rep_stosq, 0, 0},
    {"stosl", c_stosl, 0, 0}, {"rep movsb", c_rep_movsb, 0, 0}, {"rep movsq", c_rep_movsq, 0, 0},
    {"rep movsb overlapping", c_rep_movsb_overlap, 0, 0}, {"glibc memset/memcpy/strcpy", c_glibc, 0, 0},
    {"x87 fistp/fnstcw", c_x87, 0, 1},
};

static void fill_io(struct io *io, unsigned seed) {
    memset(io, 0, sizeof *io); /* padding included: the structs are compared with memcmp */
    for (int k = 0; k < 6; k++) io->r[k] = 0x9e3779b97f4a7c15ull * (seed + (unsigned)k + 1) ^ (seed * 0x1234567ull);
    for (int k = 0; k < 64; k++) io->v[k] = (uint8_t)(seed * 31 + (unsigned)k * 7);
    io->flags = 0;
}

int test_emulation(void) {
    add_pair(tracked_buf.b, TB, buf_sync, counterpart_buf.b, TB, buf_sync);
    add_item(&tracked_global.v, sizeof(int), int_sync, NULL, UINT32_MAX, POLUS_OLD);
    for (int k = 0; k < TB; k++) source_buf[k] = (uint8_t)(k * 13 + 5);
    CHECK_EQ(polus_agent_sync_begin(), 0);
    CHECK_EQ(polus_agent_sync_initialize(POLUS_OLD), 1);
    __builtin_cpu_init();
    int have_avx2 = __builtin_cpu_supports("avx2");
    int have_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl");
    int ran = 0, skipped = 0;
    for (unsigned c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const struct test_case *tc = &cases[c];
        if ((tc->needs == 1 && !have_avx2) || (tc->needs == 2 && !have_avx512)) {
            skipped++;
            continue;
        }
        for (unsigned seed = 1; seed <= 3; seed++) {
            uint8_t init[TB];
            for (int k = 0; k < TB; k++) init[k] = (uint8_t)(k * (seed + 3) + seed);
            memcpy(native_buf.b, init, TB);
            memcpy(tracked_buf.b, init, TB); /* itself a tracked write (glibc memcpy, emulated) */
            native_global.v = tracked_global.v = (int)seed;
            CHECK(memcmp(counterpart_buf.b, init, TB) == 0);
            struct io a, b;
            fill_io(&a, seed);
            fill_io(&b, seed);
            struct polus_sync_stats s0 = stats();
            tc->fn(native_buf.b, &a);
            tc->fn(tracked_buf.b, &b);
            struct polus_sync_stats s1 = stats();
            int bad = memcmp(native_buf.b, tracked_buf.b, TB) != 0 || memcmp(&a, &b, sizeof a) != 0 ||
                      memcmp(counterpart_buf.b, tracked_buf.b, TB) != 0 || native_global.v != tracked_global.v;
            if (bad) {
                fprintf(stderr, "case '%s' seed %u differs:\n", tc->name, seed);
                for (int k = 0; k < TB; k++)
                    if (native_buf.b[k] != tracked_buf.b[k] || counterpart_buf.b[k] != tracked_buf.b[k])
                        fprintf(stderr, "  byte %d: native %02x tracked %02x counterpart %02x\n", k, native_buf.b[k],
                                tracked_buf.b[k], counterpart_buf.b[k]);
                for (int k = 0; k < 6; k++)
                    if (a.r[k] != b.r[k])
                        fprintf(stderr, "  r[%d]: %llx vs %llx\n", k, (unsigned long long)a.r[k],
                                (unsigned long long)b.r[k]);
                if (a.flags != b.flags)
                    fprintf(stderr, "  flags %llx vs %llx\n", (unsigned long long)a.flags, (unsigned long long)b.flags);
                if (native_global.v != tracked_global.v)
                    fprintf(stderr, "  global %d vs %d\n", native_global.v, tracked_global.v);
                exit(1);
            }
            if (tc->stepped) CHECK(s1.single_stepped > s0.single_stepped);
            else CHECK(s1.single_stepped == s0.single_stepped && s1.emulated > s0.emulated);
        }
        ran++;
    }
    struct polus_sync_stats st = stats();
    printf("emulation: %d store forms identical to native (%d skipped: CPU), emulated=%llu stepped=%llu "
           "sync_writes=%llu xol slots=%llu\n",
           ran, skipped, (unsigned long long)st.emulated, (unsigned long long)st.single_stepped,
           (unsigned long long)st.sync_writes, (unsigned long long)st.xol_slots_built);
    CHECK_EQ(polus_agent_sync_end(), 0);
    return 0;
}

/* ======================================================================================
 * perf: cost of one tracked write (printed, not asserted).
 * ====================================================================================== */
static union { struct A v[2]; char pad[4096]; } perf_old PAGE_ALIGNED;
static union { struct A_v1 v[2]; char pad[4096]; } perf_new PAGE_ALIGNED;
static union { long v; char pad[4096]; } mprotect_page PAGE_ALIGNED;
static void *spinner(void *arg) {
    (void)arg;
    while (!atomic_load_explicit(&stop_flag, memory_order_relaxed)) {
    }
    return NULL;
}
static double mprotect_pair_us(int spinners) {
    pthread_t th[3];
    atomic_store(&stop_flag, 0);
    for (long t = 0; t < spinners; t++) pthread_create(&th[t], NULL, spinner, NULL);
    mprotect_page.v = 1;
    int n = 20000;
    double t0 = now_s();
    for (int k = 0; k < n; k++) {
        mprotect(&mprotect_page, 4096, PROT_READ);
        mprotect(&mprotect_page, 4096, PROT_READ | PROT_WRITE);
    }
    double us = (now_s() - t0) * 1e6 / n;
    atomic_store(&stop_flag, 1);
    for (int t = 0; t < spinners; t++) pthread_join(th[t], NULL);
    return us;
}
static double tracked_write_us(int n, volatile int *p) {
    double t0 = now_s();
    for (int k = 0; k < n; k++) *p = k;
    return (now_s() - t0) * 1e6 / n;
}

/* F0, the floor: a bare SIGSEGV round trip on this machine — a store to a read-only page, a
 * handler that only skips it (the 2-byte `mov %esi, (%rdi)`), sigreturn. */
static void skip_store(int sig, siginfo_t *si, void *ctx) {
    (void)sig;
    (void)si;
    ((ucontext_t *)ctx)->uc_mcontext.gregs[REG_RIP] += 2;
}
static double bare_fault_us(int n) {
    struct sigaction sa, prev;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = skip_store;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    CHECK(sigaction(SIGSEGV, &sa, &prev) == 0);
    void *ro = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(ro != MAP_FAILED);
    (void)*(volatile int *)ro; /* present and read-only, as a tracked page is */
    double t0 = now_s();
    for (int k = 0; k < n; k++) __asm__ volatile(".byte 0x89, 0x37" /* mov %esi, (%rdi) */ ::"D"(ro), "S"(k) : "memory");
    double us = (now_s() - t0) * 1e6 / n;
    munmap(ro, 4096);
    CHECK(sigaction(SIGSEGV, &prev, NULL) == 0);
    return us;
}

/* D4: threads each writing its own pair for a fixed time; total tracked writes per second. */
#define SCALE_MAX 8
static union { struct A v; char pad[64]; } scale_old[SCALE_MAX] __attribute__((aligned(4096)));
static union { struct A_v1 v; char pad[64]; } scale_new[SCALE_MAX] __attribute__((aligned(4096)));
static long scale_counts[SCALE_MAX];
static void *scale_writer(void *arg) {
    long t = (long)arg;
    long n = 0;
    while (!atomic_load_explicit(&stop_flag, memory_order_relaxed)) {
        __asm__ volatile("addl $1, %0" : "+m"(scale_old[t].v.i));
        n++;
    }
    scale_counts[t] = n;
    return NULL;
}
static double scaling_rate(int threads, double seconds) {
    pthread_t th[SCALE_MAX];
    atomic_store(&stop_flag, 0);
    double t0 = now_s();
    for (long t = 0; t < threads; t++) CHECK(pthread_create(&th[t], NULL, scale_writer, (void *)t) == 0);
    struct timespec ts = {0, (long)(seconds * 1e9)};
    nanosleep(&ts, NULL);
    atomic_store(&stop_flag, 1);
    long total = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(th[t], NULL);
        total += scale_counts[t];
    }
    double elapsed = now_s() - t0;
    for (int t = 0; t < threads; t++) CHECK_EQ(scale_new[t].v.i, scale_old[t].v.i);
    return (double)total / elapsed;
}

int test_perf(void) {
    (void)bare_fault_us(5000); /* warm: the first signals of a process cost more */
    add_pair(&perf_old.v[0], sizeof(struct A), ctr_old_to_new, &perf_new.v[0], sizeof(struct A_v1), ctr_new_to_old);
    double b0 = now_s();
    CHECK_EQ(polus_agent_sync_prepare(), 0);
    double prepare_us = (now_s() - b0) * 1e6;
    b0 = now_s();
    CHECK_EQ(polus_agent_sync_begin(), 0);
    double begin_us = (now_s() - b0) * 1e6;
    double plain = tracked_write_us(20000, (volatile int *)&native_global.v);
    /* F0, D2, D3 interleaved, the fastest of several short runs each: on a shared machine a run
     * the scheduler interrupts says nothing about the code (bare_fault_us swaps the agent's
     * SIGSEGV handler out and back in; nothing tracked is written meanwhile). */
    double f0 = 1e9, sync_write = 1e9, fs_write = 1e9;
    for (int rep = 0; rep < 9; rep++) {
        double a = bare_fault_us(3000), b = tracked_write_us(3000, &perf_old.v[0].i);
        CHECK_EQ(perf_new.v[0].i, 2999);
        double c = tracked_write_us(3000, &perf_old.v[1].i);
        if (a < f0) f0 = a;
        if (b < sync_write) sync_write = b;
        if (c < fs_write) fs_write = c;
    }
    for (int t = 0; t < SCALE_MAX; t++)
        add_pair(&scale_old[t].v, sizeof(struct A), ctr_old_to_new, &scale_new[t].v, sizeof(struct A_v1), ctr_new_to_old);
    CHECK_EQ(polus_agent_sync_end(), 0);
    CHECK_EQ(polus_agent_sync_begin(), 0);
    double scale[4];
    const int scale_threads[4] = {1, 2, 4, 8};
    for (int k = 0; k < 4; k++) scale[k] = scaling_rate(scale_threads[k], 0.4);
    polus_agent_sync_configure(POLUS_SYNC_NO_FAST_PATH); /* the same with one lock, for comparison */
    double one_lock[4];
    for (int k = 0; k < 4; k++) one_lock[k] = scaling_rate(scale_threads[k], 0.4);
    polus_agent_sync_configure(0);
    polus_agent_sync_configure(POLUS_SYNC_FORCE_SINGLE_STEP);
    double stepped = tracked_write_us(2000, &perf_old.v[0].i);
    CHECK_EQ(perf_new.v[0].i, 1999);
    polus_agent_sync_configure(0);
    CHECK_EQ(polus_agent_sync_end(), 0);
    printf("perf: untracked write %.3f us\n", plain);
    printf("perf: bare fault round trip (F0): %.2f us (F0, D2, D3: the fastest of 9 interleaved runs of 3000)\n", f0);
    printf("perf: polus_agent_sync_prepare (1 pair, called directly): %.1f us, then polus_agent_sync_begin: %.1f us\n",
           prepare_us, begin_us);
    printf("perf: tracked write + post_sync (its store through args), emulated: %.2f us\n", sync_write);
    printf("perf: false-sharing write (1 fault), emulated: %.2f us\n", fs_write);
    printf("perf: tracked write + post_sync, single-step fallback (TF trap + 2 mprotect): %.2f us\n", stepped);
    for (int k = 0; k < 4; k++)
        printf("perf: scaling: %d threads on different items: %.0f tracked writes/s (%.2fx one thread; one lock: %.0f/s)\n",
               scale_threads[k], scale[k], scale[k] / scale[0], one_lock[k]);
    printf("perf: mprotect RO+RW pair: %.2f us with 1 thread, %.2f us with 3 other threads running "
           "(TLB shootdown IPIs)\n",
           mprotect_pair_us(0), mprotect_pair_us(3));
    return 0;
}
