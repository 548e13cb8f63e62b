// greeter_process.h — run and talk to the greeter test server from Catch2 tests.
//
// Header-only, C++20, Linux. Needs the compile definition POLUS_BUILD_DIR (a string
// literal: the CMake build directory); link the CMake target `polus_greeter_harness`,
// which sets it, adds this directory to the include path, links Threads and makes the
// servers and patches get built first.
//
//   auto server = polus::testing::GreeterProcess::spawn(polus::testing::binary_path("greeter-v0"));
//   REQUIRE(server.request("HELLO bob") == "Hello, bob! (v0)");
//   polus::testing::LoadGenerator load(server.port(), 2);   // needs workers > 2 to leave room
//   load.start(); ... load.stop(); REQUIRE(load.failures() == 0);
//
// A greeter worker serves one connection at a time: spawn it with more workers than the
// connections a test keeps open at once (load clients + persistent Clients + 1 for the
// one-shot request()/stats()), or requests time out.
#ifndef POLUS_TESTING_GREETER_PROCESS_H
#define POLUS_TESTING_GREETER_PROCESS_H

#ifndef POLUS_BUILD_DIR
#error "define POLUS_BUILD_DIR (the CMake build directory, as a string literal): link polus_greeter_harness"
#endif

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace polus::testing {

using namespace std::chrono_literals;

// ${CMAKE_BINARY_DIR}/test-servers/<name>, e.g. binary_path("greeter-v0").
inline std::string binary_path(const std::string &name)
{
    return std::string(POLUS_BUILD_DIR) + "/test-servers/" + name;
}

// ${CMAKE_BINARY_DIR}/test-servers/patches/<name>, e.g. patch_path("greeter-v0-v1.so").
inline std::string patch_path(const std::string &name)
{
    return std::string(POLUS_BUILD_DIR) + "/test-servers/patches/" + name;
}

namespace detail {

[[noreturn]] inline void throw_errno(const std::string &what, int err = errno)
{
    throw std::runtime_error(what + ": " + std::strerror(err));
}

inline int remaining_ms(std::chrono::steady_clock::time_point deadline)
{
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    return left.count() < 0 ? 0 : static_cast<int>(left.count());
}

inline std::string describe_status(int status)
{
    if (WIFEXITED(status))
        return "exited with status " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status))
        return std::string("killed by signal ") + strsignal(WTERMSIG(status));
    return "wait status " + std::to_string(status);
}

} // namespace detail

// The HELLO reply of greeter version 0, 1 or 2 (the v1-v2 patch) for `name`.
inline std::string expected_reply(int version, const std::string &name)
{
    switch (version) {
    case 0: return "Hello, " + name + "! (v0)";
    case 1: return "Hi there, " + name + "! (v1)";
    case 2: return "Greetings, " + name + "! (v2)";
    default: throw std::invalid_argument("no greeter version " + std::to_string(version));
    }
}

// Which version's reply `reply` is for `name` (0, 1, 2), or -1 if none.
inline int reply_version(const std::string &reply, const std::string &name)
{
    for (int version = 0; version <= 2; version++) {
        if (reply == expected_reply(version, name))
            return version;
    }
    return -1;
}

// One persistent TCP connection to a greeter on 127.0.0.1.
class Client {
public:
    // Connects; throws std::runtime_error on failure. Every request must complete within
    // `timeout` (the server may be held stopped by a debugger for a while).
    explicit Client(int port, std::chrono::milliseconds timeout = 5000ms) : timeout_(timeout)
    {
        fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd_ < 0)
            detail::throw_errno("socket");
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = htons(static_cast<uint16_t>(port));
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int rc;
        do {
            rc = ::connect(fd_, reinterpret_cast<sockaddr *>(&addr), sizeof addr);
        } while (rc != 0 && errno == EINTR);
        if (rc != 0) {
            int err = errno;
            close();
            detail::throw_errno("connect to 127.0.0.1:" + std::to_string(port), err);
        }
    }
    ~Client() { close(); }
    Client(Client &&other) noexcept
        : fd_(std::exchange(other.fd_, -1)), timeout_(other.timeout_), buffer_(std::move(other.buffer_)),
          cancel_(other.cancel_)
    {
    }
    Client &operator=(Client &&other) noexcept
    {
        if (this != &other) {
            close();
            fd_ = std::exchange(other.fd_, -1);
            timeout_ = other.timeout_;
            buffer_ = std::move(other.buffer_);
            cancel_ = other.cancel_;
        }
        return *this;
    }
    Client(const Client &) = delete;
    Client &operator=(const Client &) = delete;

    // Sends `line` + '\n' and returns the reply line without its '\n'. Throws
    // std::runtime_error on a connection error, a timeout, or the server closing first.
    std::string request(const std::string &line)
    {
        send_all(line + "\n");
        return read_line();
    }

    // Sends `line` + '\n' and does not wait for a reply.
    void send_line(const std::string &line) { send_all(line + "\n"); }

    // Reads one reply line (see request()).
    std::string read_line()
    {
        if (fd_ < 0)
            throw std::runtime_error("greeter client: connection closed");
        auto deadline = std::chrono::steady_clock::now() + timeout_;
        for (;;) {
            if (auto newline = buffer_.find('\n'); newline != std::string::npos) {
                std::string line = buffer_.substr(0, newline);
                buffer_.erase(0, newline + 1);
                return line;
            }
            wait_readable(deadline);
            char chunk[4096];
            ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
            if (n < 0 && (errno == EINTR || errno == EAGAIN))
                continue;
            if (n < 0)
                detail::throw_errno("greeter client: recv");
            if (n == 0)
                throw std::runtime_error("greeter client: server closed the connection"
                                         + (buffer_.empty() ? std::string() : " after a partial line '" + buffer_ + "'"));
            buffer_.append(chunk, static_cast<size_t>(n));
        }
    }

    // True once the server has closed the connection (e.g. after QUIT), waiting up to `timeout`.
    bool closed_by_server(std::chrono::milliseconds timeout = 2000ms)
    {
        auto deadline = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            pollfd pfd{fd_, POLLIN, 0};
            int rc = ::poll(&pfd, 1, detail::remaining_ms(deadline));
            if (rc < 0 && errno == EINTR)
                continue;
            if (rc <= 0)
                return false;
            char chunk[256];
            ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
            if (n == 0 || (n < 0 && errno == ECONNRESET))
                return true;
            if (n < 0 && errno != EINTR)
                return false;
            // Data (e.g. a reply not read yet): skip it and keep waiting for EOF.
        }
    }

    int fd() const { return fd_; }

    // Once *flag is true, a blocked request() gives up early with std::runtime_error
    // ("cancelled"); checked every 50 ms. Used by LoadGenerator::stop().
    void set_cancel_flag(const std::atomic<bool> *flag) { cancel_ = flag; }

private:
    void close()
    {
        if (fd_ >= 0)
            ::close(fd_);
        fd_ = -1;
    }

    void wait_readable_or_writable(std::chrono::steady_clock::time_point deadline, short events)
    {
        for (;;) {
            if (cancel_ != nullptr && cancel_->load())
                throw std::runtime_error("greeter client: cancelled");
            int left = detail::remaining_ms(deadline);
            if (left == 0)
                throw std::runtime_error("greeter client: timed out after "
                                         + std::to_string(timeout_.count()) + " ms");
            pollfd pfd{fd_, events, 0};
            int rc = ::poll(&pfd, 1, cancel_ != nullptr ? std::min(left, 50) : left);
            if (rc < 0 && errno != EINTR)
                detail::throw_errno("greeter client: poll");
            if (rc > 0)
                return;
        }
    }
    void wait_readable(std::chrono::steady_clock::time_point deadline) { wait_readable_or_writable(deadline, POLLIN); }

    void send_all(const std::string &data)
    {
        if (fd_ < 0)
            throw std::runtime_error("greeter client: connection closed");
        auto deadline = std::chrono::steady_clock::now() + timeout_;
        size_t done = 0;
        while (done < data.size()) {
            ssize_t n = ::send(fd_, data.data() + done, data.size() - done, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && errno == EAGAIN) {
                wait_readable_or_writable(deadline, POLLOUT);
                continue;
            }
            if (n < 0)
                detail::throw_errno("greeter client: send");
            done += static_cast<size_t>(n);
        }
    }

    int fd_ = -1;
    std::chrono::milliseconds timeout_;
    std::string buffer_;
    const std::atomic<bool> *cancel_ = nullptr;
};

// A greeter server process, started by spawn() and stopped by the destructor.
class GreeterProcess {
public:
    // fork()s and exec()s `binary --port 0 --workers <workers>`, with stdout piped back
    // and stderr inherited, and waits up to `startup_timeout` for its "PORT <n>" line.
    // Throws std::runtime_error (saying why) if it cannot start or does not report a port.
    // The child gets PR_SET_PDEATHSIG(SIGKILL): it dies if the *thread* that spawned it
    // exits, so a crashed test leaves no server behind holding ctest's output pipe.
    //
    // With `as_user` (uid, gid; the test must be root) the server runs as that user, with no
    // supplementary groups.
    static GreeterProcess spawn(const std::string &binary, int workers = 4,
                                std::chrono::milliseconds startup_timeout = 5000ms,
                                const std::vector<std::string> &extra_args = {},
                                std::optional<std::pair<uid_t, gid_t>> as_user = std::nullopt)
    {
        if (::access(binary.c_str(), X_OK) != 0)
            detail::throw_errno("greeter binary " + binary + " is not executable (built?)");
        std::vector<std::string> args = {binary, "--port", "0", "--workers", std::to_string(workers)};
        args.insert(args.end(), extra_args.begin(), extra_args.end());
        std::vector<char *> argv;
        for (auto &arg : args)
            argv.push_back(arg.data());
        argv.push_back(nullptr);

        int out[2];
        if (::pipe2(out, O_CLOEXEC) != 0)
            detail::throw_errno("pipe2");
        pid_t parent = ::getpid();
        pid_t pid = ::fork();
        if (pid < 0) {
            int err = errno;
            ::close(out[0]);
            ::close(out[1]);
            detail::throw_errno("fork", err);
        }
        if (pid == 0) {
            // Child: async-signal-safe calls only (the test may be multithreaded).
            ::dup2(out[1], STDOUT_FILENO); // dup2 clears O_CLOEXEC on the copy
            sigset_t none;
            sigemptyset(&none);
            ::sigprocmask(SIG_SETMASK, &none, nullptr);
            ::signal(SIGPIPE, SIG_DFL);
            if (as_user) {
                // Before PR_SET_PDEATHSIG: changing credentials clears it (kernel/cred.c).
                if (::setgroups(0, nullptr) != 0 || ::setresgid(as_user->second, as_user->second, as_user->second) != 0 ||
                    ::setresuid(as_user->first, as_user->first, as_user->first) != 0)
                    ::_exit(125);
            }
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (::getppid() != parent)
                ::_exit(126);
            ::execv(argv[0], argv.data());
            const char message[] = "greeter harness: execv failed\n";
            ssize_t ignored = ::write(STDERR_FILENO, message, sizeof message - 1);
            (void)ignored;
            ::_exit(127);
        }
        ::close(out[1]);

        GreeterProcess process;
        process.pid_ = pid;
        process.stdout_fd_ = out[0];
        process.binary_ = binary;
        process.port_ = process.read_port(startup_timeout); // on throw, ~GreeterProcess reaps it
        return process;
    }

    GreeterProcess(GreeterProcess &&other) noexcept { *this = std::move(other); }
    GreeterProcess &operator=(GreeterProcess &&other) noexcept
    {
        if (this != &other) {
            stop_now();
            pid_ = std::exchange(other.pid_, -1);
            port_ = std::exchange(other.port_, 0);
            stdout_fd_ = std::exchange(other.stdout_fd_, -1);
            status_ = std::exchange(other.status_, std::nullopt);
            binary_ = std::move(other.binary_);
        }
        return *this;
    }
    GreeterProcess(const GreeterProcess &) = delete;
    GreeterProcess &operator=(const GreeterProcess &) = delete;
    ~GreeterProcess() { stop_now(); }

    pid_t pid() const { return pid_; }
    int port() const { return port_; }
    const std::string &binary() const { return binary_; }

    // One request on a fresh connection (see Client::request).
    std::string request(const std::string &line, std::chrono::milliseconds timeout = 5000ms) const
    {
        Client client(port_, timeout);
        return client.request(line);
    }

    Client connect(std::chrono::milliseconds timeout = 5000ms) const { return Client(port_, timeout); }

    // STATS as a map: requests, sigusr1, sigusr2, sighup, sigrt, eintr, threads.
    std::map<std::string, long> stats() const { return parse_counters(request("STATS")); }

    // TICKS as a map: ticks (200 ms sleeps completed), short_sleeps (ones that ended early).
    std::map<std::string, long> ticks() const { return parse_counters(request("TICKS")); }

    // Parses "key=value key=value ..." (values are integers); throws on anything else.
    static std::map<std::string, long> parse_counters(const std::string &line)
    {
        std::map<std::string, long> result;
        std::istringstream in(line);
        std::string token;
        while (in >> token) {
            auto equals = token.find('=');
            if (equals == std::string::npos || equals == 0 || equals + 1 == token.size())
                throw std::runtime_error("greeter: malformed counters line '" + line + "'");
            size_t used = 0;
            long value = 0;
            try {
                value = std::stol(token.substr(equals + 1), &used);
            } catch (const std::exception &) {
                used = 0;
            }
            if (used != token.size() - equals - 1)
                throw std::runtime_error("greeter: malformed counters line '" + line + "'");
            result[token.substr(0, equals)] = value;
        }
        if (result.empty())
            throw std::runtime_error("greeter: malformed counters line '" + line + "'");
        return result;
    }

    // Whether the process still exists (not yet exited). Never consumes a ptrace stop
    // notification (waitid WNOWAIT), so it is safe while the engine traces the server from
    // this same process; once the server has exited, it is reaped and exit_status() is set.
    bool alive()
    {
        if (pid_ <= 0)
            return false;
        if (status_)
            return false;
        siginfo_t info{};
        if (::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) != 0) {
            if (errno == EINTR)
                return true;
            status_ = -1; // ECHILD: something else reaped it
            return false;
        }
        if (info.si_pid != pid_)
            return true; // nothing to report
        if (info.si_code == CLD_EXITED || info.si_code == CLD_KILLED || info.si_code == CLD_DUMPED) {
            int status = 0;
            if (::waitpid(pid_, &status, WNOHANG) == pid_)
                status_ = status;
            return false;
        }
        return true; // a ptrace stop: still alive
    }

    // The raw wait status once the process has exited and been reaped (by alive(),
    // wait_exit() or terminate()), else nullopt. -1 if something else reaped it
    // (e.g. a waitpid(-1, ...) elsewhere in the test process).
    std::optional<int> exit_status() const { return status_; }

    // Waits up to `timeout` for the process to exit by itself (e.g. after SHUTDOWN);
    // returns its wait status, or nullopt if it is still running.
    std::optional<int> wait_exit(std::chrono::milliseconds timeout = 2000ms)
    {
        auto deadline = std::chrono::steady_clock::now() + timeout;
        while (alive()) {
            if (std::chrono::steady_clock::now() >= deadline)
                return std::nullopt;
            std::this_thread::sleep_for(5ms);
        }
        return status_;
    }

    // Sends `sig` and waits up to `timeout` for the exit; then SIGKILL. Returns the wait
    // status (WIFEXITED && WEXITSTATUS == 0 after SIGTERM when the server is healthy).
    int terminate(int sig = SIGTERM, std::chrono::milliseconds timeout = 2000ms)
    {
        if (pid_ <= 0)
            throw std::logic_error("greeter: no process");
        if (!status_) {
            ::kill(pid_, sig);
            if (!wait_exit(timeout)) {
                ::kill(pid_, SIGKILL);
                reap_blocking();
            }
        }
        return *status_;
    }

    // Sends a signal to the server process (the main thread takes it).
    void signal(int sig) const
    {
        if (pid_ <= 0 || ::kill(pid_, sig) != 0)
            detail::throw_errno("greeter: kill(" + std::to_string(pid_) + ")");
    }

private:
    GreeterProcess() = default;

    int read_port(std::chrono::milliseconds timeout)
    {
        auto deadline = std::chrono::steady_clock::now() + timeout;
        std::string text;
        for (;;) {
            if (auto newline = text.find('\n'); newline != std::string::npos) {
                std::string line = text.substr(0, newline);
                int port = 0;
                char extra = 0;
                if (std::sscanf(line.c_str(), "PORT %d%c", &port, &extra) != 1 || port <= 0 || port > 65535)
                    throw std::runtime_error(binary_ + ": expected 'PORT <n>' on stdout, got '" + line + "'");
                return port;
            }
            int left = detail::remaining_ms(deadline);
            pollfd pfd{stdout_fd_, POLLIN, 0};
            int rc = left == 0 ? 0 : ::poll(&pfd, 1, left);
            if (rc < 0 && errno == EINTR)
                continue;
            if (rc < 0)
                detail::throw_errno("poll");
            if (rc == 0)
                throw std::runtime_error(binary_ + ": no 'PORT <n>' line within "
                                         + std::to_string(timeout.count()) + " ms");
            char chunk[256];
            ssize_t n = ::read(stdout_fd_, chunk, sizeof chunk);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0)
                detail::throw_errno("read greeter stdout");
            if (n == 0) {
                std::string why = "closed stdout";
                if (auto status = wait_exit(1000ms))
                    why = detail::describe_status(*status);
                throw std::runtime_error(binary_ + " " + why + " before printing 'PORT <n>'"
                                         + (text.empty() ? std::string() : " (printed '" + text + "')"));
            }
            text.append(chunk, static_cast<size_t>(n));
        }
    }

    void reap_blocking()
    {
        for (;;) {
            int status = 0;
            pid_t rc = ::waitpid(pid_, &status, 0);
            if (rc < 0 && errno == EINTR)
                continue;
            if (rc < 0) { // ECHILD: someone else reaped it
                status_ = -1;
                return;
            }
            if (WIFEXITED(status) || WIFSIGNALED(status)) {
                status_ = status;
                return;
            }
            // A ptrace stop reported to us as the tracer: keep waiting for the SIGKILL.
        }
    }

    void stop_now() noexcept
    {
        if (pid_ > 0 && !status_) {
            ::kill(pid_, SIGTERM);
            bool exited = false;
            try {
                exited = wait_exit(2000ms).has_value();
            } catch (...) {
            }
            if (!exited) {
                ::kill(pid_, SIGKILL);
                reap_blocking();
            }
        }
        if (stdout_fd_ >= 0)
            ::close(stdout_fd_);
        stdout_fd_ = -1;
        pid_ = -1;
    }

    pid_t pid_ = -1;
    int port_ = 0;
    int stdout_fd_ = -1;
    std::optional<int> status_;
    std::string binary_;
};

// K client threads sending "HELLO <name_prefix><i>" in a loop over persistent
// connections (thread i always sends the same name), classifying every reply:
//   ok:        exactly the v0, v1 or v2 reply for that name (counted by exact text and by version)
//   malformed: any other reply line (the first few are kept for diagnostics)
//   connection failure: connect/send/recv error or timeout (the thread reconnects after 10 ms)
// A thread whose reply's version is lower than its previous reply's counts a regression
// (expected only while a rollback runs). All accessors are safe while the load runs.
class LoadGenerator {
public:
    LoadGenerator(int port, int clients, std::string name_prefix = "load",
                  std::chrono::milliseconds request_timeout = 5000ms)
        : port_(port), clients_(clients), prefix_(std::move(name_prefix)), timeout_(request_timeout),
          per_client_(static_cast<size_t>(clients < 1 ? 1 : clients))
    {
        if (clients < 1)
            throw std::invalid_argument("LoadGenerator needs at least one client");
    }
    ~LoadGenerator() { stop(); }
    LoadGenerator(const LoadGenerator &) = delete;
    LoadGenerator &operator=(const LoadGenerator &) = delete;

    void start()
    {
        if (!threads_.empty())
            throw std::logic_error("LoadGenerator already started");
        stopping_ = false;
        abandon_ = false;
        running_ = clients_;
        for (int i = 0; i < clients_; i++)
            threads_.emplace_back([this, i] { run(i); });
    }

    // Stops and joins the client threads. A request in flight gets up to 2 s to be answered
    // and counted (a server counts a request it answered: tests compare counts exactly); one
    // still unanswered then is abandoned and not counted. Idempotent.
    void stop()
    {
        stopping_ = true;
        auto deadline = std::chrono::steady_clock::now() + 2s;
        while (running_ > 0 && std::chrono::steady_clock::now() < deadline)
            std::this_thread::sleep_for(1ms);
        abandon_ = true;
        for (auto &thread : threads_)
            thread.join();
        threads_.clear();
    }

    // Waits until at least `count` good replies have been counted in total; false on timeout.
    bool wait_for_replies(long count, std::chrono::milliseconds timeout = 5000ms) const
    {
        return wait_until([&] { return ok() >= count; }, timeout);
    }

    // Waits until every client has had at least `count` good replies; false on timeout.
    bool wait_for_replies_per_client(long count, std::chrono::milliseconds timeout = 5000ms) const
    {
        return wait_until(
            [&] {
                for (int i = 0; i < clients_; i++) {
                    if (client_ok(i) < count)
                        return false;
                }
                return true;
            },
            timeout);
    }

    int clients() const { return clients_; }
    // The name client i sends: name_prefix + i.
    std::string client_name(int i) const { return prefix_ + std::to_string(i); }
    // Good replies client i has had.
    long client_ok(int i) const { return per_client_.at(static_cast<size_t>(i)).load(); }

    long ok() const { return by_version_[0] + by_version_[1] + by_version_[2]; }
    long count_version(int version) const { return by_version_.at(static_cast<size_t>(version)).load(); }
    long malformed() const { return malformed_; }
    long connection_failures() const { return connection_failures_; }
    long failures() const { return malformed_ + connection_failures_; }
    long regressions() const { return regressions_; }

    // Good replies by exact text, e.g. {"Hello, load0! (v0)": 1234, "Hi there, load0! (v1)": 99}.
    std::map<std::string, long> counts() const
    {
        std::lock_guard lock(mutex_);
        return counts_;
    }
    // The first malformed replies and connection errors seen (at most 16 of each kind).
    std::vector<std::string> malformed_samples() const
    {
        std::lock_guard lock(mutex_);
        return malformed_samples_;
    }
    std::vector<std::string> error_samples() const
    {
        std::lock_guard lock(mutex_);
        return error_samples_;
    }

private:
    template <typename Predicate>
    static bool wait_until(Predicate done, std::chrono::milliseconds timeout)
    {
        auto deadline = std::chrono::steady_clock::now() + timeout;
        while (!done()) {
            if (std::chrono::steady_clock::now() >= deadline)
                return false;
            std::this_thread::sleep_for(1ms);
        }
        return true;
    }

    void run(int index)
    {
        struct Finished {
            std::atomic<int> &running;
            ~Finished() { running--; }
        } finished{running_};
        const std::string name = client_name(index);
        std::optional<Client> client;
        int last_version = -1;
        const std::string line = "HELLO " + name;
        while (!stopping_) {
            try {
                if (!client) {
                    client.emplace(port_, timeout_);
                    client->set_cancel_flag(&abandon_);
                }
                std::string reply = client->request(line);
                int version = reply_version(reply, name);
                if (version < 0) {
                    malformed_++;
                    note(malformed_samples_, reply);
                    client.reset(); // the stream may be out of step: start afresh
                    continue;
                }
                if (version < last_version)
                    regressions_++;
                last_version = version;
                {
                    std::lock_guard lock(mutex_);
                    counts_[reply]++;
                }
                by_version_[static_cast<size_t>(version)]++;
                per_client_[static_cast<size_t>(index)]++;
            } catch (const std::exception &error) {
                client.reset();
                if (stopping_)
                    break;
                connection_failures_++;
                note(error_samples_, error.what());
                std::this_thread::sleep_for(10ms);
            }
        }
    }

    void note(std::vector<std::string> &samples, const std::string &text)
    {
        std::lock_guard lock(mutex_);
        if (samples.size() < 16)
            samples.push_back(text);
    }

    const int port_;
    const int clients_;
    const std::string prefix_;
    const std::chrono::milliseconds timeout_;
    std::vector<std::thread> threads_;
    std::atomic<bool> stopping_{false};
    std::atomic<bool> abandon_{false};  // cancels a request in flight (stop's grace period is over)
    std::atomic<int> running_{0};       // client threads not yet finished
    std::array<std::atomic<long>, 3> by_version_{};
    std::vector<std::atomic<long>> per_client_; // sized once, never resized
    std::atomic<long> malformed_{0};
    std::atomic<long> connection_failures_{0};
    std::atomic<long> regressions_{0};
    mutable std::mutex mutex_;
    std::map<std::string, long> counts_;
    std::vector<std::string> malformed_samples_;
    std::vector<std::string> error_samples_;
};

} // namespace polus::testing

#endif // POLUS_TESTING_GREETER_PROCESS_H
