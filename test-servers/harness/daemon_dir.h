// daemon_dir.h — a polusd of a test's own: its socket and patch store in a fresh directory,
// polusctl pointed at them ($POLUS_SOCKET, $POLUS_STORE) and set to go through polusd, which
// polusctl starts on demand. What that polusd does unasked is limited to the test's own process
// tree ($POLUSD_SCOPE_ROOT, tools/polusd/scope.h): tests running beside it leave updates in
// flight that are theirs to see through. The test becomes a child subreaper, so daemons started
// under it (nginx) stay its descendants. Header-only; include polusctl_run.h first.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

#include "polusctl_run.h"

namespace polus::testing {

class DaemonDir {
 public:
  /// `prefix`: the directory is /tmp/PREFIX.XXXXXX.
  explicit DaemonDir(const std::string& prefix = "polusd-test") {
    std::string tmpl = "/tmp/" + prefix + ".XXXXXX";
    dir_ = mkdtemp(tmpl.data());
    socket_ = dir_ + "/polusd.sock";
    setenv("POLUS_SOCKET", socket_.c_str(), 1);
    setenv("POLUS_STORE", (dir_ + "/store").c_str(), 1);
    setenv("POLUSD_SCOPE_ROOT", std::to_string(getpid()).c_str(), 1);
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    polusctl_through_daemon() = true;
  }
  /// Stops the polusd (SIGTERM) and removes the directory.
  ~DaemonDir() {
    stop();
    polusctl_through_daemon() = false;
    unsetenv("POLUS_SOCKET");
    unsetenv("POLUS_STORE");
    unsetenv("POLUSD_SCOPE_ROOT");
    std::system(("rm -rf '" + dir_ + "'").c_str());
  }
  DaemonDir(const DaemonDir&) = delete;
  DaemonDir& operator=(const DaemonDir&) = delete;

  const std::string& dir() const { return dir_; }
  const std::string& socket() const { return socket_; }

  /// The pid of the polusd holding the socket's lock, 0 if none does.
  pid_t daemon() const {
    int fd = open((socket_ + ".lock").c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    bool held = flock(fd, LOCK_SH | LOCK_NB) != 0;
    close(fd);
    if (!held) return 0;
    std::ifstream in(socket_ + ".lock");
    pid_t pid = 0;
    in >> pid;
    return pid;
  }

  /// Kills the daemon with `sig` and waits until its lock is free (the kernel drops it when
  /// the process is gone).
  void kill_daemon(int sig) {
    pid_t pid = daemon();
    if (pid <= 0) return;
    ::kill(pid, sig);
    while (daemon() == pid) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }

  /// Stops the daemon, if one runs (SIGTERM: it ends at its next safe point).
  void stop() { kill_daemon(SIGTERM); }

 private:
  std::string dir_;
  std::string socket_;
};

}  // namespace polus::testing
