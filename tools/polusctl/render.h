// tools/polusctl/render.h — how polusctl shows engine results: JSON objects (the layouts
// tools/README.md documents) and human tables whose columns fit their longest entry.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "run.h"
#include "polus/engine.h"

namespace polusctl {

/// "0x1a2b".
std::string hex(uint64_t value);

/// "2024-05-01T12:00:00Z", "-" for 0.
std::string utc_time(uint64_t unix_ns);

/// "850 us" below a millisecond, else "3.2 ms".
std::string duration(uint64_t ns);

/// A patch as --json shows it (status, apply, rollback, finish).
Json patch_json(const polus::PatchInfo& patch);

/// A process's status as `status --json` shows it.
Json status_json(const polus::ProcessStatus& status);

/// A patch file's contents as `info --json` shows it.
Json patch_file_json(const polus::PatchFileInfo& info);

/// A text table: columns as wide as their widest cell, left-aligned except the ones
/// `right_aligned` names; rows may carry indented detail lines printed under them.
class Table {
 public:
  explicit Table(std::vector<std::string> headers, std::vector<bool> right_aligned = {});
  /// Adds a row (as many cells as headers).
  void add_row(std::vector<std::string> cells);
  /// Adds a line printed, indented, under the last row.
  void add_detail(std::string line);
  /// The whole table, one line per row and detail.
  std::string render() const;

 private:
  struct Row {
    std::vector<std::string> cells;
    std::vector<std::string> details;
  };
  std::vector<std::string> headers_;
  std::vector<bool> right_;
  std::vector<Row> rows_;
};

/// Adds one patch (its row and detail lines: redirects, sync progress) to a patch table made
/// by patch_table(); with `pid`, threads holding an update are named (/proc/PID/task/TID/comm).
void add_patch_rows(Table& table, const polus::PatchInfo& patch, pid_t pid = 0);

/// The command name of a process (tid = 0) or thread, "?" if unreadable.
std::string task_name(pid_t pid, pid_t tid = 0);

/// One line on where a data update's sync phase stands: how long, and which threads (by name)
/// still run which old functions — the first three, then how many more.
std::string progress_line(const polus::SyncProgress& p);

/// An empty table with the patch columns: ID NAME SHA256 STATE APPLIED (UTC) APPLY PAUSE.
Table patch_table();

/// printf into a std::string.
std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

}  // namespace polusctl

namespace polusctl {

/// What apply, rollback and finish print for the patch they changed (one process): the JSON
/// result object with --json, else a sentence and the patch's table; `driven_by_daemon` says
/// who completes an update left syncing.
void print_change(const std::string& action, pid_t pid, const polus::PatchInfo& info, bool json, bool driven_by_daemon,
                  Output& out);

}  // namespace polusctl
