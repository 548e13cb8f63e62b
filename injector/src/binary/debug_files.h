// binary/debug_files.h — finding the separate debug file of a stripped object, as gdb does.
//
// Distributions ship binaries stripped and their symbols in separate files (Debian's -dbgsym
// packages), and people split their own builds with objcopy. gdb finds such a file by
// build-id first — <root>/.build-id/xx/rest.debug — and then by the name and CRC-32 in the
// object's .gnu_debuglink section: next to the object (/usr/bin/foo.debug), in a .debug
// directory next to it (/usr/bin/.debug/foo.debug), and under each debug root with the
// object's directory appended (/usr/lib/debug/usr/bin/foo.debug). A file found by debuglink
// counts only if its CRC-32 is the one recorded (and, where both have one, its build-id the
// object's): a debug file of another build would give wrong addresses. Files named
// explicitly (--debug-file) are matched by build-id before all of these.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "polus/options.h"

namespace polus {

/// What an object says about where its debug file is.
struct DebugLink {
  std::string name;  // the file name in .gnu_debuglink ("foo.debug"), "" if none
  uint32_t crc = 0;  // the CRC-32 of the debug file, as gnu_debuglink_crc32 computes it
};

/// The CRC-32 (polynomial 0xedb88320, the one .gnu_debuglink records) of a whole file;
/// nullopt if it cannot be read.
std::optional<uint32_t> file_crc32(const std::string& path);

/// Finds debug files for the objects of one process (see the file comment).
class DebugFiles {
 public:
  /// Reads the build-ids of the explicitly named files now (warning about unreadable ones).
  explicit DebugFiles(const SymbolOptions& options);

  /// The path of a debug file with a .symtab for the object at `object_path` whose build-id
  /// is `build_id` ("" if none) and whose .gnu_debuglink is `link`, or nullopt.
  std::optional<std::string> find(const std::string& object_path, const std::string& build_id, const DebugLink& link);

  /// Warns about explicitly named debug files that matched no object: likely the wrong build.
  void warn_unused(pid_t pid) const;

 private:
  const SymbolOptions& options_;
  std::vector<std::pair<std::string, std::string>> explicit_;  // path, build-id
  std::set<std::string> used_;
};

}  // namespace polus
