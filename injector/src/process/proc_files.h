// process/proc_files.h — one home for reading /proc: whole /proc files, a task's stat line,
// and the file behind a mapping (through /proc/PID/root, map_files and exe).
//
// The maps parser (process_maps.h) stays apart: it is pure text in, regions out.
#pragma once

#include <sys/types.h>

#include <functional>
#include <optional>
#include <string>

namespace polus {

struct MappedRegion;  // process_maps.h

/// Reads a whole /proc file (or any file) into `out`, appending; returns errno on failure
/// (0 on success). /proc files report no size, so it reads until EOF.
int read_whole_file(const std::string& path, std::string& out);

/// The fields of /proc/PID[/task/TID]/stat that Polus reads.
struct TaskStat {
  char state = '?';        // R, S, D, Z, X, t, ...
  pid_t parent = 0;
  unsigned long flags = 0;  // PF_* (include/linux/sched.h)
};

/// Reads /proc/PID/stat (tid = 0) or /proc/PID/task/TID/stat; nullopt if the task is gone.
std::optional<TaskStat> read_task_stat(pid_t pid, pid_t tid = 0);

/// Whether a process (tid = 0) or one of its threads is gone, a zombie or exiting: no /proc
/// entry, state Z or X, or PF_EXITING in its stat file. ptrace refuses such tasks with EPERM
/// and their memory is released or being released.
bool task_exited(pid_t pid, pid_t tid = 0);

}  // namespace polus
