// One Polus operation per target at a time (operation_lock.h).
#include "update/operation_lock.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <optional>
#include <thread>

#include <spdlog/spdlog.h>

#include "polus/error.h"
#include "process/proc_files.h"

namespace polus {

namespace {

// Root makes /run/lock/polus (1777: every user makes the files of its own processes, and the
// sticky bit keeps anyone but root from deleting another user's). /run/polus, which holds
// polusd's socket, stays closed to other users. An
// existing directory is used only if root owns it and it is not group- or world-writable
// without the sticky bit: otherwise anyone could swap the lock files.
bool lock_directory_ready() {
  if (::geteuid() == 0) {
    // chmod after mkdir: the umask would take the sticky directory's write bits away.
    for (const char* dir : {"/run/lock", kOperationLockDirectory}) {  // /run/lock: FHS, there on Debian
      if (::mkdir(dir, 01777) == 0) (void)::chmod(dir, 01777);
      else if (errno != EEXIST) return false;
    }
  }
  struct stat st;
  if (::lstat(kOperationLockDirectory, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != 0) return false;
  return (st.st_mode & 01000) != 0 || (st.st_mode & 022) == 0;
}

std::string lock_path(pid_t pid) {
  std::optional<TaskStat> stat = read_task_stat(pid);
  return std::string(kOperationLockDirectory) + "/" + std::to_string(pid) + "-" +
         std::to_string(stat ? stat->start_time : 0);
}

// Whether a lock file may be trusted to serialise operations on a process owned by
// `target_uid`: made by root or by that owner, a regular file no one else may open.
bool trustworthy(const struct stat& st, uid_t target_uid) {
  return S_ISREG(st.st_mode) && (st.st_uid == 0 || st.st_uid == target_uid) && (st.st_mode & 077) == 0;
}

// Opens (making it if needed) the lock file of `pid`; -1 if there is none we can trust.
int open_lock_file(pid_t pid, const std::string& path) {
  std::optional<ProcessCredentials> target = read_process_credentials(pid);
  const uid_t owner = target ? target->uid[1] : 0;  // its effective uid
  for (int attempt = 0; attempt < 3; ++attempt) {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    struct stat st;
    if (::fstat(fd, &st) == 0 && trustworthy(st, owner)) {
      // Root makes the file its target's owner's, so that owner's own polusctl can lock it too.
      if (::geteuid() == 0 && st.st_uid == 0 && owner != 0) (void)!::fchown(fd, owner, static_cast<gid_t>(-1));
      return fd;
    }
    ::close(fd);
    // Made by a third user to hold root's operations off: root removes it (sticky directory).
    if (::geteuid() != 0 || ::unlink(path.c_str()) != 0) return -1;
  }
  return -1;
}

}  // namespace

bool OperationLock::busy(pid_t pid) {
  int fd = ::open(lock_path(pid).c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return false;  // no operation has it
  bool held = ::flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK;
  ::close(fd);
  return held;
}

OperationLock::OperationLock(pid_t pid, Clock::time_point deadline) : path_(lock_path(pid)) {
  if (!lock_directory_ready() || (fd_ = open_lock_file(pid, path_)) < 0) {
    spdlog::warn("cannot use the operation lock {} ({}); going on without it: another Polus operation on process {} "
                 "started now could interfere",
                 path_, errno ? std::strerror(errno) : "not owned by root or the process's owner", pid);
    return;
  }
  for (;;) {
    if (::flock(fd_, LOCK_EX | LOCK_NB) == 0) {
      // A holder that released it also unlinked it (below): a lock on an unlinked inode excludes
      // no one, so lock the file now at the path instead.
      struct stat held, named;
      if (::fstat(fd_, &held) == 0 && ::stat(path_.c_str(), &named) == 0 && held.st_ino == named.st_ino &&
          held.st_dev == named.st_dev) {
        return;
      }
      ::close(fd_);
      if ((fd_ = open_lock_file(pid, path_)) < 0) return;
      continue;
    }
    if (errno != EWOULDBLOCK && errno != EINTR) break;
    if (Clock::now() >= deadline) {
      ::close(fd_);
      fd_ = -1;
      throw Error(ErrorCode::kTimeout, "another Polus operation on process " + std::to_string(pid) +
                                           " (a polusctl or polusd) is still in progress; `polusctl status " +
                                           std::to_string(pid) + "` shows it, and this one can run once it ends");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

OperationLock::~OperationLock() {
  if (fd_ < 0) return;
  // Removed while still held, so the directory does not keep one file per process ever patched;
  // a waiter that opened it meanwhile sees the inode gone and opens the path again (above).
  ::unlink(path_.c_str());
  ::close(fd_);  // closing drops the flock
}

}  // namespace polus
