// Finding processes by what they are (process_tree, processes_running,
// processes_with_build_id, patched_processes): the selectors polusctl and polusd act on.
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <utility>

#include "binary/elf_reader.h"
#include "polus/engine.h"
#include "polus/error.h"
#include "process/proc_files.h"
#include "update/registry.h"

namespace polus {

namespace {

/// Every pid listed in /proc now, ascending.
std::vector<pid_t> all_processes() {
  std::vector<pid_t> pids;
  DIR* proc = opendir("/proc");
  if (!proc) return pids;
  while (dirent* entry = readdir(proc)) {
    char* end = nullptr;
    long pid = std::strtol(entry->d_name, &end, 10);
    if (pid > 0 && *end == 0) pids.push_back(static_cast<pid_t>(pid));
  }
  closedir(proc);
  std::sort(pids.begin(), pids.end());
  return pids;
}

}  // namespace

std::vector<pid_t> process_tree(pid_t root) {
  if (!read_task_stat(root)) return {};
  std::multimap<pid_t, pid_t> children;
  for (pid_t pid : all_processes()) {
    if (std::optional<TaskStat> stat = read_task_stat(pid)) children.emplace(stat->parent, pid);
  }
  std::vector<pid_t> tree{root};
  for (size_t i = 0; i < tree.size(); ++i) {
    auto [first, last] = children.equal_range(tree[i]);
    for (auto it = first; it != last; ++it) tree.push_back(it->second);
  }
  return tree;
}

std::vector<pid_t> processes_running(const std::string& path) {
  struct stat want {};
  if (::stat(path.c_str(), &want) != 0) throw_errno("cannot read executable " + path, errno);
  std::vector<pid_t> found;
  for (pid_t pid : all_processes()) {
    struct stat exe {};
    // /proc/PID/exe is a magic link: stat follows it to the very file mapped, even one since
    // deleted or renamed.
    if (::stat(("/proc/" + std::to_string(pid) + "/exe").c_str(), &exe) == 0 && exe.st_dev == want.st_dev &&
        exe.st_ino == want.st_ino) {
      found.push_back(pid);
    }
  }
  return found;
}

std::vector<pid_t> processes_with_build_id(const std::string& hex) {
  std::vector<pid_t> found;
  std::map<std::pair<dev_t, ino_t>, std::string> seen;  // each executable read once
  for (pid_t pid : all_processes()) {
    struct stat exe {};
    if (::stat(("/proc/" + std::to_string(pid) + "/exe").c_str(), &exe) != 0) continue;
    auto key = std::make_pair(exe.st_dev, exe.st_ino);
    auto it = seen.find(key);
    if (it == seen.end()) it = seen.emplace(key, executable_build_id(pid)).first;
    if (!it->second.empty() && it->second == hex) found.push_back(pid);
  }
  return found;
}

std::vector<pid_t> patched_processes() {
  std::vector<pid_t> found;
  // Its memfd's mappings (update/patch_memfd.h), or the file an older Polus loaded.
  const std::string from_memfd = std::string("/memfd:") + kAgentFileName + " (deleted)\n";
  const std::string from_file = std::string("/") + kAgentFileName + "\n";
  for (pid_t pid : all_processes()) {
    std::string maps;
    if (read_whole_file("/proc/" + std::to_string(pid) + "/maps", maps) != 0) continue;
    if (maps.find(from_memfd) != std::string::npos || maps.find(from_file) != std::string::npos) found.push_back(pid);
  }
  return found;
}

std::string executable_build_id(pid_t pid) {
  try {
    elf::ElfFile file("/proc/" + std::to_string(pid) + "/exe");
    return elf::read_headers(file.get()).build_id_hex;
  } catch (const std::exception&) {
    return "";
  }
}

}  // namespace polus
