// process/process_maps.h — the target's memory map, from /proc/PID/maps.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "process/proc_files.h"  // task_exited, read_task_stat: their users include this header
#include "process/remote_ptr.h"

namespace polus {

/// One line of /proc/PID/maps.
struct MappedRegion {
  uint64_t start = 0;
  uint64_t end = 0;     // exclusive
  uint64_t file_offset = 0;
  bool readable = false, writable = false, executable = false, shared = false;
  uint64_t inode = 0;
  std::string path;     // "" for anonymous, "[heap]", "[stack]", "[vdso]", or a file path

  bool contains(uint64_t address) const { return address >= start && address < end; }
  bool is_file() const { return !path.empty() && path[0] == '/'; }
};

/// Reads /proc/PID/maps. Throws Error(kNoSuchProcess) if the process is gone.
std::vector<MappedRegion> read_process_maps(pid_t pid);

/// Parses the text of a maps file (exposed for tests and fuzzing).
std::vector<MappedRegion> parse_process_maps(const std::string& text);

/// A free range of `size` bytes (page-aligned) whose every byte is within `reach` bytes of
/// every byte of [near_start, near_end), or nullopt. Prefers ranges closest to the code.
std::optional<uint64_t> find_free_range_near(const std::vector<MappedRegion>& maps, uint64_t near_start,
                                             uint64_t near_end, uint64_t size,
                                             uint64_t reach = (1ull << 31) - (1ull << 20));

}  // namespace polus
