// Which processes polusd looks after unasked (scope.h).
#include "scope.h"

#include <cstdlib>
#include <fstream>
#include <string>

namespace polusd {

namespace {

pid_t scope_root() {
  static const pid_t root = [] {
    const char* text = std::getenv("POLUSD_SCOPE_ROOT");
    if (!text || !*text) return pid_t{0};
    char* end = nullptr;
    long value = std::strtol(text, &end, 10);
    return *end == '\0' && value > 0 ? static_cast<pid_t>(value) : pid_t{0};
  }();
  return root;
}

pid_t parent_of(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return 0;
  auto close = line.rfind(')');  // the command name may hold spaces and parentheses
  if (close == std::string::npos || close + 4 >= line.size()) return 0;
  return static_cast<pid_t>(std::strtol(line.c_str() + close + 4, nullptr, 10));  // ") S PPID"
}

}  // namespace

bool in_scope(pid_t pid) {
  const pid_t root = scope_root();
  if (root == 0) return true;
  for (int depth = 0; pid > 1 && depth < 4096; ++depth) {
    if (pid == root) return true;
    pid = parent_of(pid);
  }
  return pid == root;
}

}  // namespace polusd
