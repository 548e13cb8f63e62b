#include "process/proc_files.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <sstream>

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
  return result;
}

bool task_exited(pid_t pid, pid_t tid) {
  std::optional<TaskStat> stat = read_task_stat(pid, tid);
  if (!stat) return true;
  // Z/X, or still running its exit with its memory already gone (PF_EXITING).
  constexpr unsigned long kPfExiting = 0x4;
  return stat->state == 'Z' || stat->state == 'X' || (stat->flags & kPfExiting) != 0;
}

}  // namespace polus
