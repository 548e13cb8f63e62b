// process/proc_files.h — one home for reading /proc: whole /proc files, a task's stat line,
// and the file behind a mapping (through /proc/PID/root, map_files and exe).
//
// /proc/PID/maps has its own header, process_maps.h (the parser and the free-range search).
#pragma once

#include <sys/types.h>

#include <functional>
#include <optional>
#include <set>
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
  unsigned long long start_time = 0;  // clock ticks after boot: with the pid, names one process for good
};

/// Reads /proc/PID/stat (tid = 0) or /proc/PID/task/TID/stat; nullopt if the task is gone.
std::optional<TaskStat> read_task_stat(pid_t pid, pid_t tid = 0);

/// Whether a process (tid = 0) or one of its threads is gone, a zombie or exiting: no /proc
/// entry, state Z or X, or PF_EXITING in its stat file. ptrace refuses such tasks with EPERM
/// and their memory is released or being released.
bool task_exited(pid_t pid, pid_t tid = 0);

/// The thread ids listed in /proc/PID/task (empty if the process is gone).
std::set<pid_t> list_tasks(pid_t pid);

/// The lines of /proc/PID[/task/TID]/status that Polus reads.
struct TaskStatus {
  pid_t tracer = 0;          // TracerPid: 0 if nobody traces it
  uint64_t pending = 0;      // SigPnd: signals queued for this thread
  uint64_t shared_pending = 0;  // ShdPnd: signals queued for the whole process
  uint64_t blocked = 0;      // SigBlk
  int seccomp = 0;           // Seccomp: 0 off, 1 strict, 2 filter
  bool shadow_stack = false; // x86_Thread_features lists shstk (CET user shadow stacks on)
  char state = '?';          // State: R, S, D, T (stopped by a job-control signal), t (traced), Z...
};

/// Reads /proc/PID/status (tid = 0) or /proc/PID/task/TID/status; nullopt if the task is gone.
std::optional<TaskStatus> read_task_status(pid_t pid, pid_t tid = 0);

/// Where a thread is, read from /proc/PID/task/TID/syscall without stopping it: the kernel
/// fills it only for a thread that is not running on a CPU (blocked in a system call, or
/// preempted), so a thread that is running now has running = true and no pc or sp.
struct TaskSyscall {
  bool running = false;
  uint64_t sp = 0;
  uint64_t pc = 0;  // the user pc (after the syscall instruction for a thread in a call)
};

/// Reads /proc/PID/task/TID/syscall; nullopt if the thread is gone or it is unreadable.
std::optional<TaskSyscall> read_task_syscall(pid_t pid, pid_t tid);
/// Who a process runs as, as the kernel's ptrace access check sees it.
struct ProcessCredentials {
  uid_t uid[4] = {};     // real, effective, saved, filesystem (the Uid: line of /proc/PID/status)
  gid_t gid[4] = {};     // the same for groups (Gid:)
  bool dumpable = false; // its dumpable attribute is 1 (SUID_DUMP_USER)
};

/// Reads the credentials of process `pid`; nullopt if it is gone. Dumpable is read from the
/// owner of /proc/PID: the kernel shows a process that is not dumpable as owned by root
/// (proc(5); fs/proc/base.c, task_dump_owner), so a process owned by its effective uid is
/// dumpable. (For a root process this cannot tell, and does not need to.)
std::optional<ProcessCredentials> read_process_credentials(pid_t pid);

/// The command name (/proc/PID[/task/TID]/comm), "?" if unreadable.
std::string task_name(pid_t pid, pid_t tid = 0);

/// "thread state S, in the kernel at futex_wait_queue": where a thread waits, for messages.
std::string describe_wait(pid_t pid, pid_t tid);

/// A file open_mapped_file opened: the caller owns `fd`.
struct MappedFile {
  int fd = -1;              // -1: no candidate could be opened (or none passed the check)
  std::string path;         // the candidate that was opened, e.g. "/proc/123/map_files/..."
  bool unverified = false;  // its inode differs from the mapped one and no build-id could
                            // tell: it may be another build, and the caller should warn
};

/// Whether the file at `path` is the build the process mapped, e.g. because its build-id is
/// the one the caller knows. Returns false rather than throw on unreadable files.
using SameBuildCheck = std::function<bool(const std::string& path)>;

/// Opens the file `region` maps. The candidates, in order: /proc/PID/root + path (the
/// target's mount namespace), the path itself, /proc/PID/map_files/START-END and, for the
/// main executable (`is_main`), /proc/PID/exe; the /proc ones only if pid > 0. The path in
/// maps may since have been replaced (an upgrade installed a new build while the old one
/// keeps running), so a candidate counts only if it is the mapped file: `same_build` decides
/// when given (the caller knows the object's build-id; process/ does not read ELF files),
/// otherwise the inode must be the mapped one. The map_files and exe links always reach the
/// mapped file itself. overlayfs can report other inodes, so without `same_build` a
/// candidate whose inode differs is still used if nothing better turns up, marked
/// unverified. Never throws; fd = -1 if nothing could be opened.
MappedFile open_mapped_file(pid_t pid, const MappedRegion& region, bool is_main,
                            const SameBuildCheck& same_build = {});

}  // namespace polus
