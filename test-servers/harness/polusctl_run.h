// polusctl_run.h — running the real polusctl binary from a test, as an operator would.
//
// Tests that include it define POLUSCTL_PATH and POLUS_AGENT_PATH (CMake). Everything is
// prepared before fork(): a test may have threads (load generators) that hold malloc's lock
// at that instant, so the child makes only async-signal-safe calls until it execs.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <string>
#include <vector>

namespace polus::testing {

/// What one polusctl run printed and returned.
struct PolusctlRun {
  int status = -1;  // exit status, or 128 + signal
  std::string out;
  std::string err;
};

/// Whether polusctl runs its commands through polusd (the daemon tests turn this on, with
/// $POLUS_SOCKET set to a socket of their own); otherwise it runs them in-process
/// ($POLUS_NO_DAEMON=1), as the engine's tests expect.
inline bool& polusctl_through_daemon() {
  static bool through = false;
  return through;
}

/// Starts polusctl with `args` (the test's agent in $POLUS_AGENT), stdout and stderr into the
/// given descriptors (-1: /dev/null). Returns its pid.
inline pid_t start_polusctl(std::vector<std::string> args, int out_fd = -1, int err_fd = -1) {
  args.insert(args.begin(), POLUSCTL_PATH);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::string agent = std::string("POLUS_AGENT=") + POLUS_AGENT_PATH;
  std::vector<char*> envp;
  for (char** e = environ; *e; ++e) envp.push_back(*e);
  envp.push_back(agent.data());
  std::string no_daemon = "POLUS_NO_DAEMON=1";
  if (!polusctl_through_daemon()) envp.push_back(no_daemon.data());
  envp.push_back(nullptr);
  // A signal sent to the child before it execs (a test may kill "polusctl" at any instant)
  // must not run the test's own handlers there (Catch's would malloc in a forked copy of a
  // threaded process): signals stay blocked across fork until the child has put the default
  // dispositions back.
  sigset_t all, old;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, &old);
  pid_t child = fork();
  if (child == 0) {
    for (int sig = 1; sig < NSIG; ++sig) {
      if (sig != SIGKILL && sig != SIGSTOP) signal(sig, SIG_DFL);
    }
    sigprocmask(SIG_SETMASK, &old, nullptr);
    int null = open("/dev/null", O_WRONLY);
    dup2(out_fd >= 0 ? out_fd : null, 1);
    dup2(err_fd >= 0 ? err_fd : null, 2);
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  sigprocmask(SIG_SETMASK, &old, nullptr);
  return child;
}

/// Waits for a polusctl started with start_polusctl: its exit status, or 128 + signal.
inline int wait_polusctl(pid_t child) {
  int status = 0;
  waitpid(child, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/// Runs polusctl with `args` to the end, capturing stdout and stderr.
inline PolusctlRun run_polusctl(std::vector<std::string> args) {
  int out_pipe[2], err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0) return {};
  pid_t child = start_polusctl(std::move(args), out_pipe[1], err_pipe[1]);
  close(out_pipe[1]);
  close(err_pipe[1]);
  PolusctlRun run;
  std::array<char, 4096> buf;
  for (ssize_t n; (n = read(out_pipe[0], buf.data(), buf.size())) > 0;) run.out.append(buf.data(), static_cast<size_t>(n));
  for (ssize_t n; (n = read(err_pipe[0], buf.data(), buf.size())) > 0;) run.err.append(buf.data(), static_cast<size_t>(n));
  close(out_pipe[0]);
  close(err_pipe[0]);
  run.status = wait_polusctl(child);
  return run;
}

}  // namespace polus::testing
