// How polusctl shows engine results (render.h).
#include "render.h"

#include <time.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <fstream>

namespace polusctl {

std::string format(const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  va_list copy;
  va_copy(copy, args);
  int n = std::vsnprintf(nullptr, 0, fmt, copy);
  va_end(copy);
  std::string out(n > 0 ? static_cast<size_t>(n) : 0, '\0');
  if (n > 0) std::vsnprintf(out.data(), out.size() + 1, fmt, args);
  va_end(args);
  return out;
}

std::string hex(uint64_t value) { return format("0x%llx", static_cast<unsigned long long>(value)); }

std::string utc_time(uint64_t unix_ns) {
  if (unix_ns == 0) return "-";
  time_t seconds = static_cast<time_t>(unix_ns / 1000000000ull);
  tm t{};
  gmtime_r(&seconds, &t);
  char buf[32];
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &t);
  return buf;
}

std::string duration(uint64_t ns) {
  return ns < 1000000 ? format("%.0f us", ns / 1e3) : format("%.1f ms", ns / 1e6);
}

Json patch_json(const polus::PatchInfo& p) {
  Json j;
  j["id"] = p.id;
  j["name"] = p.name;
  j["path"] = p.path;
  j["sha256"] = p.sha256;
  j["applied_by_uid"] = p.applied_by_uid;
  j["details_withheld"] = p.details_withheld;
  j["state"] = p.state;
  j["direction"] = p.direction;
  j["applied_at"] = utc_time(p.applied_at_unix_ns);
  j["applied_at_unix_ns"] = p.applied_at_unix_ns;
  j["committed_at_unix_ns"] = p.committed_at_unix_ns;
  j["apply_wall_ns"] = p.apply_wall_ns;
  j["pause_ns"] = p.pause_ns;
  j["inspections"] = p.inspections;
  j["unwind_fallbacks"] = p.unwind_fallbacks;
  j["fault"] = p.fault.empty() ? Json(nullptr) : Json(p.fault);
  j["watched"] = p.watched;
  j["holders"] = Json::array();
  for (const auto& h : p.holders) j["holders"].push_back({{"tid", h.tid}, {"function", h.function}});
  j["items"] = Json::array();
  for (const auto& item : p.items) {
    j["items"].push_back({{"name", item.name}, {"side", item.side}, {"address", hex(item.address)}, {"size", item.size},
                          {"sync_calls", item.sync_calls}});
  }
  j["functions"] = Json::array();
  for (const auto& r : p.redirects) {
    j["functions"].push_back({{"old", r.old_name}, {"old_address", hex(r.old_function)}, {"new", r.new_name},
                              {"new_address", hex(r.new_function)}, {"patch_site", hex(r.patch_site)},
                              {"trampoline", r.trampoline ? Json(hex(r.trampoline)) : Json(nullptr)},
                              {"stacked", r.stacked}});
  }
  return j;
}

Json status_json(const polus::ProcessStatus& s) {
  Json j;
  j["pid"] = s.pid;
  j["agent_loaded"] = s.agent_loaded;
  j["sync_active"] = s.sync_active;
  j["write_faults"] = s.write_faults;
  j["false_sharing"] = s.false_sharing;
  j["chained_faults"] = s.chained_faults;
  j["last_failure"] = nullptr;
  if (const auto& f = s.last_failure) {
    j["last_failure"] = {{"patch_id", f->patch_id}, {"patch", f->patch_name}, {"direction", f->direction},
                         {"signal", f->signal}, {"at", utc_time(f->at_unix_ns)}, {"reason", f->reason}};
  }
  j["patches"] = Json::array();
  for (const auto& p : s.patches) j["patches"].push_back(patch_json(p));
  return j;
}

Json patch_file_json(const polus::PatchFileInfo& info) {
  Json j;
  j["path"] = info.path;
  j["name"] = info.name;
  j["description"] = info.description;
  j["sha256"] = info.sha256;
  j["size_bytes"] = info.size_bytes;
  j["replaces"] = Json::array();
  for (const auto& r : info.replaces) j["replaces"].push_back({{"old", r.old_name}, {"new", r.new_name}});
  j["adds"] = info.adds;
  j["syncs"] = Json::array();
  for (const auto& d : info.syncs) {
    j["syncs"].push_back({{"old", d.old_name}, {"new", d.new_name}, {"old_size", d.old_size}, {"new_size", d.new_size},
                          {"read_only", d.read_only}, {"heap_root", d.heap_root}, {"has_sync", d.has_sync}});
  }
  j["uses"] = info.uses;
  j["callbacks"] = info.callbacks;
  j["build_ids"] = Json::array();
  for (const auto& b : info.build_ids) j["build_ids"].push_back({{"object", b.object}, {"build_id", b.hex}});
  j["trusted"] = info.trust.empty();
  if (!info.trust.empty()) j["untrusted_because"] = info.trust;
  return j;
}

Table::Table(std::vector<std::string> headers, std::vector<bool> right_aligned)
    : headers_(std::move(headers)), right_(std::move(right_aligned)) {
  right_.resize(headers_.size(), false);
}

void Table::add_row(std::vector<std::string> cells) {
  cells.resize(headers_.size());
  rows_.push_back({std::move(cells), {}});
}

void Table::add_detail(std::string line) {
  if (!rows_.empty()) rows_.back().details.push_back(std::move(line));
}

std::string Table::render() const {
  std::vector<size_t> width(headers_.size());
  for (size_t c = 0; c < headers_.size(); ++c) {
    width[c] = headers_[c].size();
    for (const Row& row : rows_) width[c] = std::max(width[c], row.cells[c].size());
  }
  auto line = [&](const std::vector<std::string>& cells) {
    std::string out;
    for (size_t c = 0; c < cells.size(); ++c) {
      const bool last = c + 1 == cells.size();
      std::string pad(width[c] - std::min(width[c], cells[c].size()), ' ');
      if (right_[c]) out += pad + cells[c];
      else out += cells[c] + (last ? "" : pad);
      if (!last) out += "  ";
    }
    while (!out.empty() && out.back() == ' ') out.pop_back();
    return out + "\n";
  };
  std::string out = line(headers_);
  for (const Row& row : rows_) {
    out += line(row.cells);
    for (const std::string& d : row.details) out += "    " + d + "\n";
  }
  return out;
}

Table patch_table() {
  return Table({"ID", "NAME", "SHA256", "STATE", "APPLIED (UTC)", "APPLY", "PAUSE"}, {true, false, false, false, false, true, true});
}

std::string task_name(pid_t pid, pid_t tid) {
  std::ifstream in("/proc/" + std::to_string(pid) + (tid ? "/task/" + std::to_string(tid) : "") + "/comm");
  std::string name;
  std::getline(in, name);
  return name.empty() ? "?" : name;
}

void add_patch_rows(Table& table, const polus::PatchInfo& p, pid_t pid) {
  if (p.details_withheld) {
    table.add_row({std::to_string(p.id), p.name, "-", p.state, utc_time(p.applied_at_unix_ns), "-", "-"});
    table.add_detail("applied by uid " + std::to_string(p.applied_by_uid) + "; details withheld");
    return;
  }
  table.add_row({std::to_string(p.id), p.name, p.sha256.substr(0, 12), p.state, utc_time(p.applied_at_unix_ns),
                 duration(p.apply_wall_ns), duration(p.pause_ns)});
  // Names whole, in columns as wide as the longest (the arrows line up).
  int old_width = 0, new_width = 0;
  for (const auto& r : p.redirects) {
    old_width = std::max(old_width, static_cast<int>(r.old_name.size()));
    new_width = std::max(new_width, static_cast<int>(r.new_name.size()));
  }
  for (const auto& r : p.redirects) {
    std::string line = format("%-*s %-14s -> %-*s %-14s", old_width, r.old_name.c_str(), hex(r.old_function).c_str(),
                              new_width, r.new_name.c_str(), hex(r.new_function).c_str());
    if (r.trampoline) line += " (via trampoline " + hex(r.trampoline) + ")";
    while (!line.empty() && line.back() == ' ') line.pop_back();
    table.add_detail(line);
  }
  if (!p.fault.empty()) table.add_detail("FAULTED: " + p.fault);
  if (p.state != "syncing") return;
  table.add_detail(format("data update (%s) syncing: %llu inspections", p.direction.c_str(),
                          static_cast<unsigned long long>(p.inspections)) +
                   (p.unwind_fallbacks ? ", " + std::to_string(p.unwind_fallbacks) + " frames found by stack scan (no CFI)" : ""));
  for (const auto& item : p.items) {
    table.add_detail(format("protected %s %s %s (%llu bytes): %llu sync calls", item.side.c_str(), item.name.c_str(),
                            hex(item.address).c_str(), static_cast<unsigned long long>(item.size),
                            static_cast<unsigned long long>(item.sync_calls)));
  }
  if (p.holders.empty()) table.add_detail("no thread runs a watched function at the last inspection");
  for (const auto& h : p.holders) {
    table.add_detail("held by thread " + std::to_string(h.tid) + (pid ? " (" + task_name(pid, h.tid) + ")" : "") + " in " +
                     h.function);
  }
}

}  // namespace polusctl

namespace polusctl {

void print_change(const std::string& action, pid_t pid, const polus::PatchInfo& info, bool json, bool driven_by_daemon,
                  Output& out) {
  if (json) {
    out.out += Json{{"result", "ok"}, {"action", action}, {"already_applied", info.already_applied}, {"patch", patch_json(info)}}
                   .dump() + "\n";
  } else if (info.already_applied) {
    out.out += format("%s is already applied to process %d (id %llu, sha256 %s, %s); nothing changed\n", info.name.c_str(),
                      pid, static_cast<unsigned long long>(info.id), info.sha256.substr(0, 12).c_str(), info.state.c_str());
    return;
  } else if (action == "apply") {
    out.out += format("applied %s to process %d: %zu function(s) redirected in %s, target paused %s\n", info.name.c_str(),
                      pid, info.redirects.size(), duration(info.apply_wall_ns).c_str(), duration(info.pause_ns).c_str());
  } else if (info.state == "rolled-back") {
    out.out += format("rolled back %s in process %d in %s, target paused %s\n", info.name.c_str(), pid,
                      duration(info.apply_wall_ns).c_str(), duration(info.pause_ns).c_str());
  }
  if (!json && info.state != "rolled-back") {
    Table table = patch_table();
    add_patch_rows(table, info, pid);
    out.out += table.render();
  }
  if (info.state == "syncing" && !json) {
    out.out += format("the %s of %s is still syncing (threads above still run code it retires); ", info.direction.c_str(),
                      info.name.c_str()) +
               (driven_by_daemon ? "polusd completes it (`polusctl status " + std::to_string(pid) + "` shows progress)\n"
                                 : "it completes with `polusctl finish " + std::to_string(pid) + "`\n");
  }
}

std::string progress_line(const polus::SyncProgress& p) {
  std::string line = "syncing " + p.patch + " (" + p.direction + ") in process " + std::to_string(p.pid) + ", " +
                     format("%.1f", static_cast<double>(p.elapsed_ms) / 1000.0) + " s: ";
  if (p.holders.empty()) return line + "no thread runs old code now";
  line += std::to_string(p.holders.size()) + (p.holders.size() == 1 ? " thread runs" : " threads run") + " old code: ";
  for (size_t i = 0; i < p.holders.size() && i < 3; ++i) {
    const auto& h = p.holders[i];
    line += (i ? ", " : "") + std::to_string(h.tid) + (h.thread_name.empty() ? "" : " (" + h.thread_name + ")") + " in " +
            h.function;
  }
  if (p.holders.size() > 3) line += ", and " + std::to_string(p.holders.size() - 3) + " more";
  return line;
}

}  // namespace polusctl
