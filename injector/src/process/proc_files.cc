#include "process/proc_files.h"

#include <dirent.h>

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <sstream>
#include <vector>

#include "process/process_maps.h"

namespace polus {

int read_whole_file(const std::string& path, std::string& out) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  char buffer[65536];
  for (;;) {
    ssize_t got = ::read(fd, buffer, sizeof(buffer));
    if (got < 0) {
      if (errno == EINTR) continue;
      int saved = errno;
      ::close(fd);
      return saved;
    }
    if (got == 0) break;
    out.append(buffer, static_cast<size_t>(got));
  }
  ::close(fd);
  return 0;
}

std::optional<TaskStat> read_task_stat(pid_t pid, pid_t tid) {
  std::string path = "/proc/" + std::to_string(pid) + (tid ? "/task/" + std::to_string(tid) : "") + "/stat";
  std::ifstream stat(path);
  if (!stat) return std::nullopt;
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  auto paren = text.rfind(')');  // the command name may contain spaces and parentheses
  if (paren == std::string::npos || paren + 2 >= text.size()) return std::nullopt;
  std::istringstream fields(text.substr(paren + 2));
  TaskStat result;
  std::string pgrp, session, tty, tpgid;
  fields >> result.state >> result.parent >> pgrp >> session >> tty >> tpgid >> result.flags;
  std::string skip;  // minflt cminflt majflt cmajflt utime stime cutime cstime priority nice num_threads itrealvalue
  for (int i = 0; i < 12; ++i) fields >> skip;
  fields >> result.start_time;  // field 22 (proc(5))
  return result;
}

bool task_exited(pid_t pid, pid_t tid) {
  std::optional<TaskStat> stat = read_task_stat(pid, tid);
  if (!stat) return true;
  // Z/X, or still running its exit with its memory already gone (PF_EXITING).
  constexpr unsigned long kPfExiting = 0x4;
  return stat->state == 'Z' || stat->state == 'X' || (stat->flags & kPfExiting) != 0;
}

MappedFile open_mapped_file(pid_t pid, const MappedRegion& region, bool is_main, const SameBuildCheck& same_build) {
  std::vector<std::string> candidates;
  const std::string proc = "/proc/" + std::to_string(pid);
  if (pid > 0) candidates.push_back(proc + "/root" + region.path);
  candidates.push_back(region.path);
  if (pid > 0) {
    std::ostringstream range;
    range << std::hex << region.start << '-' << region.end;
    candidates.push_back(proc + "/map_files/" + range.str());
    if (is_main) candidates.push_back(proc + "/exe");
  }

  MappedFile fallback;  // opened, but the inode differs (overlayfs can report other inodes)
  for (const std::string& candidate : candidates) {
    // O_NONBLOCK: a FIFO put at a mapped file's path (in a container the target's root is
    // another user's) must not block the open; for the regular files read here it changes nothing.
    int fd = ::open(candidate.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) continue;
    bool same = false;
    if (same_build) {
      same = same_build(candidate);  // a known build-id is decisive: no fallback on a mismatch
    } else {
      struct stat st;
      same = region.inode == 0 || (::fstat(fd, &st) == 0 && st.st_ino == region.inode);
      if (!same && fallback.fd < 0) {
        fallback = MappedFile{fd, candidate, true};
        continue;
      }
    }
    if (same) {
      if (fallback.fd >= 0) ::close(fallback.fd);
      return MappedFile{fd, candidate, false};
    }
    ::close(fd);
  }
  return fallback;
}

std::set<pid_t> list_tasks(pid_t pid) {
  std::set<pid_t> tids;
  std::string dir = "/proc/" + std::to_string(pid) + "/task";
  DIR* d = ::opendir(dir.c_str());
  if (!d) return tids;
  while (dirent* entry = ::readdir(d)) {
    if (entry->d_name[0] < '0' || entry->d_name[0] > '9') continue;
    tids.insert(static_cast<pid_t>(std::stol(entry->d_name)));
  }
  ::closedir(d);
  return tids;
}

namespace {

std::string task_dir(pid_t pid, pid_t tid) {
  return "/proc/" + std::to_string(pid) + (tid ? "/task/" + std::to_string(tid) : "");
}

}  // namespace

std::optional<TaskStatus> read_task_status(pid_t pid, pid_t tid) {
  std::string text;
  if (read_whole_file(task_dir(pid, tid) + "/status", text) != 0) return std::nullopt;
  TaskStatus status;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    auto value = [&](int base) { return std::stoull(line.substr(line.find(':') + 1), nullptr, base); };
    if (line.rfind("TracerPid:", 0) == 0) status.tracer = static_cast<pid_t>(value(10));
    if (line.rfind("SigPnd:", 0) == 0) status.pending = value(16);
    if (line.rfind("ShdPnd:", 0) == 0) status.shared_pending = value(16);
    if (line.rfind("SigBlk:", 0) == 0) status.blocked = value(16);
    if (line.rfind("Seccomp:", 0) == 0) status.seccomp = static_cast<int>(value(10));
    if (line.rfind("x86_Thread_features:", 0) == 0) status.shadow_stack = line.find("shstk") != std::string::npos;
    if (line.rfind("State:", 0) == 0) {
      size_t at = line.find_first_not_of(" \t", 6);
      if (at != std::string::npos) status.state = line[at];
    }
  }
  return status;
}

std::optional<TaskSyscall> read_task_syscall(pid_t pid, pid_t tid) {
  std::string text;
  if (read_whole_file(task_dir(pid, tid) + "/syscall", text) != 0 || text.empty()) return std::nullopt;
  TaskSyscall result;
  if (text.rfind("running", 0) == 0) {
    result.running = true;
    return result;
  }
  // "NR arg1 ... arg6 SP PC", or "-1 SP PC" for a thread blocked outside a system call: the
  // last two fields are the user stack pointer and pc either way (fs/proc/base.c).
  std::istringstream fields(text);
  std::vector<std::string> tokens;
  for (std::string t; fields >> t;) tokens.push_back(t);
  if (tokens.size() < 3) return std::nullopt;
  result.sp = std::stoull(tokens[tokens.size() - 2], nullptr, 16);
  result.pc = std::stoull(tokens[tokens.size() - 1], nullptr, 16);
  return result;
}

std::optional<ProcessCredentials> read_process_credentials(pid_t pid) {
  std::string text;
  if (read_whole_file(task_dir(pid, 0) + "/status", text) != 0) return std::nullopt;
  ProcessCredentials creds;
  bool have_uid = false, have_gid = false;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    const bool uid = line.rfind("Uid:", 0) == 0, gid = line.rfind("Gid:", 0) == 0;
    if (!uid && !gid) continue;
    std::istringstream fields(line.substr(4));
    unsigned long long values[4];
    for (auto& v : values) {
      if (!(fields >> v)) return std::nullopt;
    }
    for (int i = 0; i < 4; ++i) {
      if (uid) creds.uid[i] = static_cast<uid_t>(values[i]);
      else creds.gid[i] = static_cast<gid_t>(values[i]);
    }
    (uid ? have_uid : have_gid) = true;
  }
  if (!have_uid || !have_gid) return std::nullopt;
  struct stat st;
  if (::stat(task_dir(pid, 0).c_str(), &st) != 0) return std::nullopt;
  creds.dumpable = st.st_uid == creds.uid[1];
  return creds;
}

std::string task_name(pid_t pid, pid_t tid) {
  std::string name;
  read_whole_file(task_dir(pid, tid) + "/comm", name);
  while (!name.empty() && name.back() == '\n') name.pop_back();
  return name.empty() ? "?" : name;
}

std::string describe_wait(pid_t pid, pid_t tid) {
  std::optional<TaskStat> stat = read_task_stat(pid, tid);
  std::string state(1, stat ? stat->state : '?');
  std::string wchan;
  read_whole_file(task_dir(pid, tid) + "/wchan", wchan);
  return "thread state " + state + (wchan.empty() || wchan == "0" ? "" : ", in the kernel at " + wchan);
}

}  // namespace polus
