// polusctl_run.h — running the real polusctl binary from a test, as an operator would.
//
// Tests that include it define POLUSCTL_PATH and POLUS_AGENT_PATH (CMake). Everything is
// prepared before fork(): a test may have threads (load generators) that hold malloc's lock
// at that instant, so the child makes only async-signal-safe calls until it execs.
#pragma once

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <grp.h>
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

/// Who polusctl runs as: the test's own user (uid -1), or another (the test must be root).
struct RunAs {
  uid_t uid = static_cast<uid_t>(-1);
  gid_t gid = static_cast<gid_t>(-1);
};

/// Where polusctl run by tests writes its audit records unless a test says otherwise
/// ($POLUS_AUDIT_LOG set by the test, or --audit-log): not the machine's /var/log/polus.
inline std::string test_audit_log() {
#ifdef POLUS_BUILD_DIR
  return std::string(POLUS_BUILD_DIR) + "/polusctl-test-audit.log";
#else
  return "/tmp/polusctl-test-audit.log";
#endif
}

/// Starts polusctl with `args` (the test's agent in $POLUS_AGENT), stdout and stderr into the
/// given descriptors (-1: /dev/null), as `as`. Returns its pid.
inline pid_t start_polusctl(std::vector<std::string> args, int out_fd = -1, int err_fd = -1, RunAs as = {}) {
  args.insert(args.begin(), POLUSCTL_PATH);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::string agent = std::string("POLUS_AGENT=") + POLUS_AGENT_PATH;
  std::string audit = "POLUS_AUDIT_LOG=" + test_audit_log();
  std::vector<char*> envp;
  bool audit_set = false;
  for (char** e = environ; *e; ++e) {
    envp.push_back(*e);
    audit_set = audit_set || std::string(*e).rfind("POLUS_AUDIT_LOG=", 0) == 0;
  }
  envp.push_back(agent.data());
  if (!audit_set) envp.push_back(audit.data());
  std::string no_daemon = "POLUS_NO_DAEMON=1";
  if (!polusctl_through_daemon()) envp.push_back(no_daemon.data());
  envp.push_back(nullptr);
  // A signal a test sends polusctl can arrive before the child has made execve: it must not
  // run the test's own handlers there (Catch reports a "fatal error" from SIGINT, and its
  // output takes malloc's lock, which a load thread may have held at the fork: the child hung
  // for good). Blocked over the fork; in the child every disposition goes back to SIG_DFL
  // before the mask comes back, so such a signal ends the child as it would end polusctl.
  sigset_t all, before;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &before);
  pid_t child = fork();
  if (child == 0) {
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; ++sig) sigaction(sig, &dfl, nullptr);  // fails harmlessly for KILL/STOP
    pthread_sigmask(SIG_SETMASK, &before, nullptr);
    if (as.uid != static_cast<uid_t>(-1) &&
        (setgroups(0, nullptr) != 0 || setresgid(as.gid, as.gid, as.gid) != 0 || setresuid(as.uid, as.uid, as.uid) != 0)) {
      _exit(126);
    }
    int null = open("/dev/null", O_WRONLY);
    dup2(out_fd >= 0 ? out_fd : null, 1);
    dup2(err_fd >= 0 ? err_fd : null, 2);
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  pthread_sigmask(SIG_SETMASK, &before, nullptr);
  return child;
}

/// Waits for a polusctl started with start_polusctl: its exit status, or 128 + signal.
inline int wait_polusctl(pid_t child) {
  int status = 0;
  waitpid(child, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/// Runs polusctl with `args` to the end, as `as`, capturing stdout and stderr.
inline PolusctlRun run_polusctl(std::vector<std::string> args, RunAs as = {}) {
  int out_pipe[2], err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0) return {};
  pid_t child = start_polusctl(std::move(args), out_pipe[1], err_pipe[1], as);
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
