/*
 * raw_syscall.h — raw system calls for libpolus-agent.so's C files (internal, not installed):
 * no errno, no libc wrappers, so they are usable from the agent's signal handlers.
 *
 * Every function is static inline: each translation unit gets its own copy, nothing is
 * exported. Include it after defining _GNU_SOURCE (MREMAP_MAYMOVE, the ucontext_t layout).
 */
#ifndef POLUS_AGENT_RAW_SYSCALL_H
#define POLUS_AGENT_RAW_SYSCALL_H

#include <linux/futex.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <ucontext.h>

#define PAGE 4096ull
#define PAGE_OF(a) ((uint64_t)(a) & ~(PAGE - 1))

/* ---- raw system calls: no errno, usable from the handlers -------------------------- */

static inline long raw6(long n, long a, long b, long c, long d, long e, long f) {
    long ret;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}
#define RAW(n, a, b, c) raw6((n), (long)(a), (long)(b), (long)(c), 0, 0, 0)

static inline int sys_gettid(void) { return (int)RAW(SYS_gettid, 0, 0, 0); }
static inline int sys_getpid(void) { return (int)RAW(SYS_getpid, 0, 0, 0); }
static inline long sys_mprotect(uint64_t addr, uint64_t len, int prot) { return RAW(SYS_mprotect, addr, len, prot); }
static inline void *sys_mmap(uint64_t len) {
    long r = raw6(SYS_mmap, 0, (long)len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return (unsigned long)r > -4096ul ? NULL : (void *)r;
}
static inline void sys_munmap(void *p, uint64_t len) {
    if (p && len) RAW(SYS_munmap, p, len, 0);
}
static inline void *sys_mremap(void *p, uint64_t old_len, uint64_t new_len) {
    long r = raw6(SYS_mremap, (long)p, (long)old_len, (long)new_len, MREMAP_MAYMOVE, 0, 0);
    return (unsigned long)r > -4096ul ? NULL : (void *)r;
}
/* mmap with every argument (the views of tracked pages: page_views.c); NULL on failure. */
static inline void *sys_mmap_full(uint64_t addr, uint64_t len, int prot, int flags, int fd, uint64_t off) {
    long r = raw6(SYS_mmap, (long)addr, (long)len, prot, flags, fd, (long)off);
    return (unsigned long)r > -4096ul ? NULL : (void *)r;
}
/* Moves [p, p+len) over [to, to+len), atomically replacing what was there (MREMAP_FIXED). 0 or -errno. */
static inline long sys_mremap_fixed(void *p, uint64_t len, uint64_t to) {
    long r = raw6(SYS_mremap, (long)p, (long)len, (long)len, MREMAP_MAYMOVE | MREMAP_FIXED, (long)to, 0);
    return (unsigned long)r > -4096ul ? r : 0;
}
static inline long sys_pwrite(int fd, const void *buf, uint64_t n, uint64_t off) {
    return raw6(SYS_pwrite64, fd, (long)buf, (long)n, (long)off, 0, 0);
}
static inline long sys_read_self(void *dst, const void *src, uint64_t n) {
    /* process_vm_readv on ourselves honours protections (no FOLL_FORCE): a PROT_NONE source
     * fails as the native instruction would. */
    struct iovec local = {dst, n}, remote = {(void *)src, n};
    return raw6(SYS_process_vm_readv, sys_getpid(), (long)&local, 1, (long)&remote, 1, 0);
}
static inline void futex_wait(int *word, int val, const struct timespec *timeout) {
    raw6(SYS_futex, (long)word, FUTEX_WAIT_PRIVATE, val, (long)timeout, 0, 0);
}
static inline void futex_wake(int *word) { raw6(SYS_futex, (long)word, FUTEX_WAKE_PRIVATE, 1, 0, 0, 0); }
static inline uint64_t mono_ns(void) {
    struct timespec ts = {0, 0};
    RAW(SYS_clock_gettime, CLOCK_MONOTONIC, &ts, 0);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
static inline void set_sigmask(uint64_t mask) { raw6(SYS_rt_sigprocmask, SIG_SETMASK, (long)&mask, 0, 8, 0, 0); }
static inline uint64_t sigbit(int sig) { return 1ull << (sig - 1); }
static inline uint64_t *uc_mask_word(ucontext_t *uc) { return (uint64_t *)(void *)&uc->uc_sigmask; }

#endif /* POLUS_AGENT_RAW_SYSCALL_H */
