// polusctl's side of polusd (client.h): connect to its socket, starting polusd when nobody
// answers; send the request as one line of JSON; relay a Ctrl-C as {"cancel":...}; read the
// one-line answer {"status", "out", "err"}.
#include "client.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "polus/stop_request.h"

namespace polusctl {

namespace {

/// A connected socket to `path`, or -1 with errno set.
int connect_to(const std::string& path) {
  sockaddr_un address{};
  if (path.size() >= sizeof address.sun_path) {
    errno = ENAMETOOLONG;
    return -1;
  }
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    int saved = errno;
    ::close(fd);
    errno = saved;
    return -1;
  }
  return fd;
}

/// polusd: $POLUSD, else beside this polusctl (a build tree or an install), else installed.
std::string polusd_path() {
  if (const char* env = std::getenv("POLUSD"); env && *env) return env;
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n > 0) {
    self[n] = 0;
    std::string beside = std::string(self).substr(0, std::string(self).rfind('/')) + "/polusd";
    if (access(beside.c_str(), X_OK) == 0) return beside;
  }
  return POLUS_INSTALLED_POLUSD;
}

/// Starts `polusd --serve --socket PATH` detached from us (its own session, reparented to
/// init, output to PATH.log). Returns an error text, or "".
std::string start_daemon(const std::string& socket) {
  const std::string polusd = polusd_path();
  if (access(polusd.c_str(), X_OK) != 0) return "there is no polusd at " + polusd + " (" + std::strerror(errno) + ")";
  const std::string dir = socket.substr(0, socket.rfind('/'));
  if (!dir.empty()) ::mkdir(dir.c_str(), 0700);
  const std::string log = socket + ".log";
  std::vector<std::string> args{polusd, "--serve", "--socket", socket};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t child = fork();
  if (child < 0) return std::string("fork: ") + std::strerror(errno);
  if (child == 0) {
    setsid();
    if (fork() != 0) _exit(0);  // the daemon is reparented: nobody waits for it here
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    int null = open("/dev/null", O_RDWR);
    int out = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    dup2(null, 0);
    dup2(out >= 0 ? out : null, 1);
    dup2(out >= 0 ? out : null, 2);
    execv(argv[0], argv.data());
    _exit(127);
  }
  int status = 0;
  waitpid(child, &status, 0);
  return "";
}

/// Writes all of `data`; false on error.
bool write_all(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

/// Shows a progress line from polusd as polusctl shows its own: one line on stderr rewritten in
/// place (\r and erase-line: the terminal shows the newest line only); "" ends it.
void show_progress(const std::string& line) {
  static bool shown = false;
  if (line.empty() && !shown) return;
  const std::string text = line.empty() ? "\r\033[K" : "\r\033[K" + line;
  (void)!::write(STDERR_FILENO, text.data(), text.size());
  shown = !line.empty();
}

Output failure(const std::string& socket, const std::string& why) {
  Output out;
  out.err = "polusctl: cannot reach polusd at " + socket + ": " + why +
            " (run the command with --no-daemon to work without polusd)\n";
  out.status = 1;
  return out;
}

}  // namespace

Output run_through_daemon(const Json& request, Json* timings) {
  const std::string socket = default_socket_path();
  int fd = connect_to(socket);
  if (fd < 0 && (errno == ENOENT || errno == ECONNREFUSED)) {
    // Nobody listens: start polusd and wait for its socket. Several polusctl doing this at once
    // start several polusd, of which one takes the socket (polusd --serve exits if it is taken).
    if (std::string error = start_daemon(socket); !error.empty()) return failure(socket, "cannot start polusd: " + error);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while ((fd = connect_to(socket)) < 0 && (errno == ENOENT || errno == ECONNREFUSED) &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (fd < 0) return failure(socket, std::string("polusd was started but does not answer (") + std::strerror(errno) +
                                           "; see " + socket + ".log)");
  }
  if (fd < 0) return failure(socket, std::strerror(errno));
  if (timings) (*timings)["connected"] = timestamp_us();
  Json timed;
  if (timings) {
    timed = request;
    timed["timings"] = true;
  }
  if (!write_all(fd, (timings ? timed : request).dump() + "\n")) {
    ::close(fd);
    return failure(socket, std::string("sending the request: ") + std::strerror(errno));
  }
  if (timings) (*timings)["sent"] = timestamp_us();
  // Ctrl-C, kill and a dropped ssh session are relayed: polusd stops the operation at its
  // next safe point (as polusctl itself would) and answers.
  sigset_t stop = polus::stop_signals();
  sigprocmask(SIG_BLOCK, &stop, nullptr);
  int signals = signalfd(-1, &stop, SFD_CLOEXEC);
  std::string answer;
  bool cancelled = false;
  for (;;) {
    pollfd fds[2] = {{fd, POLLIN, 0}, {signals, POLLIN, 0}};
    if (::poll(fds, signals >= 0 ? 2 : 1, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (signals >= 0 && (fds[1].revents & POLLIN)) {
      signalfd_siginfo info{};
      if (::read(signals, &info, sizeof info) == sizeof info && !cancelled) {
        write_all(fd, Json{{"cancel", static_cast<int>(info.ssi_signo)}}.dump() + "\n");
        cancelled = true;
      }
    }
    if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      char buf[65536];
      ssize_t n = ::read(fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      answer.append(buf, static_cast<size_t>(n));
      // Lines before the answer: sync progress, shown as polusctl shows its own.
      bool answered = false;
      for (size_t end; !answered && (end = answer.find('\n')) != std::string::npos;) {
        std::string line = answer.substr(0, end);
        Json message = Json::parse(line, nullptr, /*allow_exceptions=*/false);
        if (message.is_object() && message.contains("status")) {
          answered = true;
        } else {
          // Progress; or a line cut short (polusd drops what does not fit while the client
          // does not read), which is skipped.
          if (message.is_object() && message.contains("progress") && message["progress"].is_string() &&
              !message["progress"].get<std::string>().empty()) {
            show_progress(message["progress"].get<std::string>());
          }
          answer.erase(0, end + 1);
        }
      }
      if (answered) break;
    }
  }
  if (signals >= 0) ::close(signals);
  ::close(fd);
  show_progress("");
  if (answer.empty() || answer.back() != '\n') {
    Output out;
    out.err = "polusctl: polusd (" + socket + ") went away before it answered; an operation it had begun is "
              "recorded in the target and the next command completes or undoes it (`polusctl status` shows it)\n";
    out.status = 1;
    return out;
  }
  if (timings) (*timings)["answered"] = timestamp_us();
  try {
    Json reply = Json::parse(answer);
    if (timings && reply.contains("timings")) (*timings)["daemon"] = reply["timings"];
    Output out;
    out.out = reply.value("out", std::string());
    out.err = reply.value("err", std::string());
    out.status = reply.value("status", 1);
    return out;
  } catch (const std::exception& e) {
    return failure(socket, std::string("unreadable answer: ") + e.what());
  }
}

}  // namespace polusctl
