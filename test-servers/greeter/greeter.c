/*
 * greeter.c — the Polus test server.
 *
 * A small multithreaded TCP server on 127.0.0.1 with a line protocol (one line in, one
 * line out, many requests per connection):
 *
 *   HELLO <name>  ->  format_reply(): "Hello, <name>! (v0)"  (v1: "Hi there, <name>! (v1)")
 *   STATS         ->  "requests=<n> sigusr1=<n> sigusr2=<n> sighup=<n> sigrt=<n> eintr=<n> threads=<n>"
 *   TICKS         ->  "ticks=<n> short_sleeps=<n>"  (the nanosleep thread's health)
 *   QUIT          ->  "BYE", then the server closes the connection
 *   SHUTDOWN      ->  "BYE", then the server exits with status 0
 *   anything else ->  "ERR unknown command"
 *
 * Its real purpose is to be a live-patching target whose threads sit in many different
 * blocking system calls when a debugger interrupts them:
 *
 *   main          pause() loop; the only thread with signals unblocked
 *   acceptor      accept()
 *   workers (N)   futex wait on the connection queue's condvar, or read() on a client
 *   epoll-idle    epoll_wait(-1) on a pipe nobody writes to
 *   ticker        nanosleep(200 ms) loop, checking the time that really elapsed
 *   pipe-idle     read() on another pipe nobody writes to
 *
 * Any of these calls that fails with EINTR increments `eintr_count` and is retried: with
 * every signal blocked in those threads, an EINTR there means something (e.g. a ptrace
 * session) disturbed a system call, and STATS reports it.
 *
 * Usage: greeter [--port N] [--workers N] [--seccomp-kill SYSCALL]...
 * --seccomp-kill: once every thread runs, a seccomp filter (all threads, TSYNC) kills the
 * process for that system call (openat, clone, mprotect, rt_sigaction or memfd_create), as a sandboxed
 * service's filter would for calls it never expects.
 * Prints "PORT <n>" on stdout once everything is running; exits 0 on SIGTERM, SIGINT or
 * SHUTDOWN. Preprocessor flags select the build variant, see test-servers/README.md.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "reply.h"

#ifdef GREETER_STATIC_REPLY
/* format_reply becomes a file-static function of this translation unit. */
#include "reply.c"
#endif

#define LINE_CAP 1024        /* longest request line accepted, '\n' included */
#define REPLY_CAP (LINE_CAP + 64)
#define QUEUE_CAP 256        /* accepted connections waiting for a worker */
#define TICK_NS 200000000L   /* the ticker's nanosleep period */

/* ---- Counters (global, so a debugger or a patch can find them by name) ----------- */

atomic_long requests_count;  /* HELLO requests served */
atomic_long sigusr1_count;
atomic_long sigusr2_count;
atomic_long sighup_count;
atomic_long sigrt_count;     /* SIGRTMIN */
atomic_long eintr_count;     /* EINTR seen by a worker thread's system call */
atomic_long ticks_count;     /* nanosleep periods completed by the ticker */
atomic_long short_sleeps;    /* nanosleep periods that ended too early */

static atomic_int shutdown_requested;
static pthread_t main_thread;

static int listen_fd = -1;
static int epoll_fd = -1;
static int epoll_pipe[2] = {-1, -1}; /* watched by epoll-idle, never written */
static int idle_pipe[2] = {-1, -1};  /* read by pipe-idle, never written */

static void count_eintr(void)
{
    atomic_fetch_add(&eintr_count, 1);
}

/* Asks the main thread to exit. Safe from any thread (the signal is blocked in all but main). */
static void request_shutdown(void)
{
    atomic_store(&shutdown_requested, 1);
    pthread_kill(main_thread, SIGTERM);
}

/* ---- Connection queue: acceptor -> workers ----------------------------------------- */

static struct {
    pthread_mutex_t lock;
    pthread_cond_t not_empty;
    pthread_cond_t not_full;
    int fds[QUEUE_CAP];
    size_t head, count;
} queue = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, {0}, 0, 0};

static void queue_push(int fd)
{
    pthread_mutex_lock(&queue.lock);
    while (queue.count == QUEUE_CAP)
        pthread_cond_wait(&queue.not_full, &queue.lock);
    queue.fds[(queue.head + queue.count) % QUEUE_CAP] = fd;
    queue.count++;
    pthread_cond_signal(&queue.not_empty);
    pthread_mutex_unlock(&queue.lock);
}

static int queue_pop(void)
{
    pthread_mutex_lock(&queue.lock);
    while (queue.count == 0)
        pthread_cond_wait(&queue.not_empty, &queue.lock); /* idle workers: futex wait */
    int fd = queue.fds[queue.head];
    queue.head = (queue.head + 1) % QUEUE_CAP;
    queue.count--;
    pthread_cond_signal(&queue.not_full);
    pthread_mutex_unlock(&queue.lock);
    return fd;
}

/* ---- Protocol ---------------------------------------------------------------------- */

/* Writes `line` and a '\n'. Returns 0, or -1 if the client is gone. */
static int send_line(int fd, const char *line)
{
    char buf[REPLY_CAP + 1];
    size_t len = strnlen(line, REPLY_CAP);
    memcpy(buf, line, len);
    buf[len++] = '\n';
    size_t done = 0;
    while (done < len) {
        ssize_t n = send(fd, buf + done, len - done, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) {
                count_eintr();
                continue;
            }
            return -1;
        }
        done += (size_t)n;
    }
    return 0;
}

static int send_error(int fd, const char *message)
{
    char out[REPLY_CAP];
#ifdef GREETER_AMBIGUOUS
    format_error(out, sizeof out, message); /* other_reply.c's own format_reply */
#else
    snprintf(out, sizeof out, "ERR %s", message);
#endif
    return send_line(fd, out);
}

static long count_threads(void)
{
    DIR *dir = opendir("/proc/self/task");
    if (dir == NULL)
        return -1;
    long n = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (entry->d_name[0] != '.')
            n++;
    }
    closedir(dir);
    return n;
}

enum line_result { KEEP_OPEN, CLOSE_CONNECTION };

static enum line_result handle_line(int fd, const char *line)
{
    char out[REPLY_CAP];
    int sent;

    if (strncmp(line, "HELLO ", 6) == 0) {
        int n = format_reply(out, sizeof out, line + 6);
        if (n < 0 || (size_t)n >= sizeof out) /* a broken patch must not crash us */
            n = 0;
        out[n] = '\0';
        atomic_fetch_add(&requests_count, 1);
        sent = send_line(fd, out);
    } else if (strcmp(line, "STATS") == 0) {
        snprintf(out, sizeof out,
                 "requests=%ld sigusr1=%ld sigusr2=%ld sighup=%ld sigrt=%ld eintr=%ld threads=%ld",
                 atomic_load(&requests_count), atomic_load(&sigusr1_count),
                 atomic_load(&sigusr2_count), atomic_load(&sighup_count),
                 atomic_load(&sigrt_count), atomic_load(&eintr_count), count_threads());
        sent = send_line(fd, out);
    } else if (strcmp(line, "TICKS") == 0) {
        snprintf(out, sizeof out, "ticks=%ld short_sleeps=%ld", atomic_load(&ticks_count),
                 atomic_load(&short_sleeps));
        sent = send_line(fd, out);
    } else if (strcmp(line, "QUIT") == 0) {
        send_line(fd, "BYE");
        return CLOSE_CONNECTION;
    } else if (strcmp(line, "SHUTDOWN") == 0) {
        send_line(fd, "BYE");
        request_shutdown();
        return CLOSE_CONNECTION;
    } else {
        sent = send_error(fd, "unknown command");
    }
    return sent == 0 ? KEEP_OPEN : CLOSE_CONNECTION;
}

/* Serves one client until it closes, says QUIT, or errs. */
static void serve_connection(int fd)
{
    char buf[LINE_CAP];
    size_t used = 0;
    for (;;) {
        ssize_t n = read(fd, buf + used, sizeof buf - used);
        if (n < 0) {
            if (errno == EINTR) {
                count_eintr();
                continue;
            }
            return;
        }
        if (n == 0)
            return;
        used += (size_t)n;

        char *start = buf;
        char *newline;
        while ((newline = memchr(start, '\n', (size_t)(buf + used - start))) != NULL) {
            *newline = '\0';
            if (newline > start && newline[-1] == '\r')
                newline[-1] = '\0';
            if (handle_line(fd, start) == CLOSE_CONNECTION)
                return;
            start = newline + 1;
        }
        used = (size_t)(buf + used - start);
        memmove(buf, start, used);
        if (used == sizeof buf) {
            send_error(fd, "line too long");
            return;
        }
    }
}

/* ---- Threads ----------------------------------------------------------------------- */

static void *worker_thread(void *arg)
{
    (void)arg;
    for (;;) {
        int fd = queue_pop();
        serve_connection(fd);
        close(fd);
    }
    return NULL;
}

static void *acceptor_thread(void *arg)
{
    (void)arg;
    for (;;) {
        int fd = accept(listen_fd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR) {
                count_eintr();
                continue;
            }
            /* EMFILE, ECONNABORTED, ...: back off a little and keep serving. */
            struct timespec pause_ts = {0, 10000000L};
            nanosleep(&pause_ts, NULL);
            continue;
        }
        queue_push(fd);
    }
    return NULL;
}

static void *epoll_idle_thread(void *arg)
{
    (void)arg;
    for (;;) {
        struct epoll_event event;
        int n = epoll_wait(epoll_fd, &event, 1, -1);
        if (n < 0 && errno == EINTR) {
            count_eintr();
            continue;
        }
        if (n < 0)
            fprintf(stderr, "greeter: epoll_wait: %s\n", strerror(errno));
        else
            fprintf(stderr, "greeter: epoll_wait: unexpected event on the idle pipe\n");
        struct timespec pause_ts = {1, 0}; /* never happens; if it does, do not spin */
        nanosleep(&pause_ts, NULL);
    }
    return NULL;
}

static void *pipe_idle_thread(void *arg)
{
    (void)arg;
    for (;;) {
        char c;
        ssize_t n = read(idle_pipe[0], &c, 1);
        if (n < 0 && errno == EINTR) {
            count_eintr();
            continue;
        }
        fprintf(stderr, "greeter: read on the idle pipe returned %zd\n", n);
        return NULL;
    }
}

static long elapsed_ns(const struct timespec *from, const struct timespec *to)
{
    return (to->tv_sec - from->tv_sec) * 1000000000L + (to->tv_nsec - from->tv_nsec);
}

static void *ticker_thread(void *arg)
{
    (void)arg;
    for (;;) {
        struct timespec before, after;
        struct timespec request = {0, TICK_NS}, remaining;
        clock_gettime(CLOCK_MONOTONIC, &before);
        while (nanosleep(&request, &remaining) != 0) {
            if (errno != EINTR) {
                fprintf(stderr, "greeter: nanosleep: %s\n", strerror(errno));
                break;
            }
            count_eintr();
            request = remaining;
        }
        clock_gettime(CLOCK_MONOTONIC, &after);
        /* A relative sleep never ends early (unless the wall clock is stepped forward: glibc's
         * nanosleep sleeps on CLOCK_REALTIME), whatever interrupted and restarted it. */
        long elapsed = elapsed_ns(&before, &after);
        if (elapsed < TICK_NS) {
            atomic_fetch_add(&short_sleeps, 1);
            fprintf(stderr, "greeter: nanosleep(200 ms) returned after %ld ns\n", elapsed);
        }
        atomic_fetch_add(&ticks_count, 1);
        /* Closes the race between main's flag check and pause(): keep poking until it exits. */
        if (atomic_load(&shutdown_requested))
            pthread_kill(main_thread, SIGTERM);
    }
    return NULL;
}

/* ---- Main thread ------------------------------------------------------------------- */

static void on_signal(int sig)
{
    int saved_errno = errno;
    if (sig == SIGUSR1)
        atomic_fetch_add(&sigusr1_count, 1);
    else if (sig == SIGUSR2)
        atomic_fetch_add(&sigusr2_count, 1);
    else if (sig == SIGHUP)
        atomic_fetch_add(&sighup_count, 1);
    else if (sig == SIGRTMIN)
        atomic_fetch_add(&sigrt_count, 1);
    else if (sig == SIGTERM || sig == SIGINT)
        atomic_store(&shutdown_requested, 1);
    errno = saved_errno;
}

static void install_handlers(void)
{
    const int signals[] = {SIGUSR1, SIGUSR2, SIGHUP, SIGRTMIN, SIGTERM, SIGINT};
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_signal;
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    for (size_t i = 0; i < sizeof signals / sizeof signals[0]; i++) {
        if (sigaction(signals[i], &action, NULL) != 0) {
            perror("greeter: sigaction");
            exit(1);
        }
    }
}

static void start_thread(void *(*fn)(void *), const char *name)
{
    pthread_t thread;
    int err = pthread_create(&thread, NULL, fn, NULL);
    if (err != 0) {
        fprintf(stderr, "greeter: pthread_create(%s): %s\n", name, strerror(err));
        exit(1);
    }
    pthread_setname_np(thread, name); /* shows in /proc/<pid>/task/<tid>/comm */
    pthread_detach(thread);
}

static void usage(void)
{
    fprintf(stderr, "usage: greeter [--port N] [--workers N] [--seccomp-kill SYSCALL]...\n");
    exit(2);
}

static long parse_number(const char *text, long max)
{
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < 0 || value > max)
        usage();
    return value;
}

static void open_listener(int port)
{
    listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listen_fd < 0) {
        perror("greeter: socket");
        exit(1);
    }
    int one = 1;
    setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons((unsigned short)port);
    if (bind(listen_fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        perror("greeter: bind");
        exit(1);
    }
    if (listen(listen_fd, 128) != 0) {
        perror("greeter: listen");
        exit(1);
    }
}

/* System calls --seccomp-kill can name. */
static const struct {
    const char *name;
    int number;
} seccomp_names[] = {
    {"openat", SYS_openat}, {"clone", SYS_clone}, {"mprotect", SYS_mprotect}, {"rt_sigaction", SYS_rt_sigaction},
    {"memfd_create", SYS_memfd_create},
};
static int seccomp_kill[8];
static int seccomp_kill_count;

static int seccomp_number(const char *name)
{
    for (size_t i = 0; i < sizeof seccomp_names / sizeof seccomp_names[0]; i++)
        if (strcmp(name, seccomp_names[i].name) == 0)
            return seccomp_names[i].number;
    fprintf(stderr, "greeter: --seccomp-kill: unknown system call %s\n", name);
    exit(2);
}

/* Kills the process for each system call in seccomp_kill[], allows everything else. */
static void install_seccomp_filter(void)
{
    struct sock_filter program[4 + 2 * 8];
    size_t n = 0;
    program[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    program[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0);
    program[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
    program[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
    for (int i = 0; i < seccomp_kill_count; i++) {
        program[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)seccomp_kill[i], 0, 1);
        program[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
    }
    program[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    struct sock_fprog prog = {.len = (unsigned short)n, .filter = program};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog) != 0) {
        perror("greeter: seccomp");
        exit(1);
    }
}

static void open_idle_fds(void)
{
    if (pipe2(epoll_pipe, O_CLOEXEC) != 0 || pipe2(idle_pipe, O_CLOEXEC) != 0) {
        perror("greeter: pipe2");
        exit(1);
    }
    epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event event = {.events = EPOLLIN, .data = {.fd = epoll_pipe[0]}};
    if (epoll_fd < 0 || epoll_ctl(epoll_fd, EPOLL_CTL_ADD, epoll_pipe[0], &event) != 0) {
        perror("greeter: epoll");
        exit(1);
    }
}

int main(int argc, char **argv)
{
    long port = 0, workers = 4;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--port") == 0 && i + 1 < argc)
            port = parse_number(argv[++i], 65535);
        else if (strcmp(argv[i], "--workers") == 0 && i + 1 < argc)
            workers = parse_number(argv[++i], 1024);
        else if (strcmp(argv[i], "--seccomp-kill") == 0 && i + 1 < argc && seccomp_kill_count < 8)
            seccomp_kill[seccomp_kill_count++] = seccomp_number(argv[++i]);
        else
            usage();
    }
    if (workers < 1)
        usage();

    main_thread = pthread_self();
    open_listener((int)port);
    open_idle_fds();
    install_handlers();

    /* Every other thread runs with all signals blocked: only main takes signals. */
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    start_thread(acceptor_thread, "acceptor");
    for (long i = 0; i < workers; i++) {
        char name[32];
        snprintf(name, sizeof name, "worker-%d", (int)i);
        start_thread(worker_thread, name);
    }
    start_thread(epoll_idle_thread, "epoll-idle");
    start_thread(ticker_thread, "ticker");
    start_thread(pipe_idle_thread, "pipe-idle");
    sigset_t none;
    sigemptyset(&none);
    pthread_sigmask(SIG_SETMASK, &none, NULL);
    if (seccomp_kill_count > 0)
        install_seccomp_filter();

    struct sockaddr_in bound;
    socklen_t bound_len = sizeof bound;
    if (getsockname(listen_fd, (struct sockaddr *)&bound, &bound_len) != 0) {
        perror("greeter: getsockname");
        return 1;
    }
    printf("PORT %d\n", ntohs(bound.sin_port));
    fflush(stdout);

    while (!atomic_load(&shutdown_requested))
        pause(); /* returns -1/EINTR after every handled signal: expected, not counted */

    close(listen_fd);
    return 0;
}
