#include "process/process_maps.h"

#include <errno.h>

#include <algorithm>
#include <charconv>
#include <string_view>

#include "polus/error.h"

namespace polus {

namespace {

constexpr uint64_t kPageSize = 4096;
// The part of the x86-64 address space a user mapping can occupy: above the usual
// vm.mmap_min_addr (64 KiB) and below the top of the 47-bit user half (its last page
// is never handed out by the kernel).
constexpr uint64_t kUserSpaceStart = 0x10000;
constexpr uint64_t kUserSpaceEnd = 0x7ffffffff000;

constexpr uint64_t align_down(uint64_t value) { return value & ~(kPageSize - 1); }
constexpr uint64_t align_up(uint64_t value) { return align_down(value + kPageSize - 1); }

std::string_view trim_left(std::string_view text) {
  size_t at = text.find_first_not_of(" \t");
  return at == std::string_view::npos ? std::string_view() : text.substr(at);
}

/// Splits off the next space-separated field of `rest` (advancing it).
std::string_view next_field(std::string_view& rest) {
  rest = trim_left(rest);
  size_t end = rest.find_first_of(" \t");
  std::string_view field = rest.substr(0, end);
  rest = end == std::string_view::npos ? std::string_view() : rest.substr(end);
  return field;
}

bool parse_hex(std::string_view text, uint64_t& value) {
  if (text.empty()) return false;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value, 16);
  return ec == std::errc() && end == text.data() + text.size();
}

bool parse_dec(std::string_view text, uint64_t& value) {
  if (text.empty()) return false;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value, 10);
  return ec == std::errc() && end == text.data() + text.size();
}

[[noreturn]] void throw_malformed(std::string_view line, const char* why) {
  throw Error(ErrorCode::kInternal, "cannot parse a line of /proc/PID/maps (" + std::string(why) + "): '" +
                                        std::string(line) + "'; this is a Polus bug, please report it");
}

/// Parses "start-end perms offset dev inode [path]". The path is the rest of the line, so
/// it may contain spaces; the kernel appends " (deleted)" for unlinked files, which we drop
/// so the path names the file the object was loaded from.
MappedRegion parse_line(std::string_view line) {
  std::string_view rest = line;
  std::string_view range = next_field(rest);
  std::string_view perms = next_field(rest);
  std::string_view offset = next_field(rest);
  std::string_view device = next_field(rest);
  std::string_view inode = next_field(rest);
  if (inode.empty()) throw_malformed(line, "fewer than five fields");
  (void)device;  // not needed: inode + path identify files well enough for us

  MappedRegion region;
  size_t dash = range.find('-');
  if (dash == std::string_view::npos || !parse_hex(range.substr(0, dash), region.start) ||
      !parse_hex(range.substr(dash + 1), region.end) || region.end < region.start) {
    throw_malformed(line, "bad address range");
  }
  if (perms.size() < 4) throw_malformed(line, "bad permissions");
  region.readable = perms[0] == 'r';
  region.writable = perms[1] == 'w';
  region.executable = perms[2] == 'x';
  region.shared = perms[3] == 's';
  if (!parse_hex(offset, region.file_offset)) throw_malformed(line, "bad file offset");
  if (!parse_dec(inode, region.inode)) throw_malformed(line, "bad inode");

  std::string_view path = trim_left(rest);
  while (!path.empty() && (path.back() == '\n' || path.back() == '\r')) path.remove_suffix(1);
  constexpr std::string_view kDeleted = " (deleted)";
  if (path.size() > kDeleted.size() && path.ends_with(kDeleted)) path.remove_suffix(kDeleted.size());
  region.path = std::string(path);
  return region;
}

uint64_t distance_to_code(uint64_t address, uint64_t size, uint64_t near_start, uint64_t near_end) {
  if (address + size <= near_start) return near_start - (address + size);
  if (address >= near_end) return address - near_end;
  return 0;
}

/// Where, within the free gap [gap_start, gap_end), to put `size` bytes closest to the code,
/// given the window [lowest, highest] of start addresses that keep the whole range in reach.
/// All bounds are page-aligned, so the answer is too.
std::optional<uint64_t> best_in_gap(uint64_t gap_start, uint64_t gap_end, uint64_t size, uint64_t lowest,
                                    uint64_t highest, uint64_t near_start, uint64_t near_end) {
  if (gap_end < gap_start || gap_end - gap_start < size) return std::nullopt;
  uint64_t first = std::max(gap_start, lowest);
  uint64_t last = std::min(gap_end - size, highest);
  if (first > last) return std::nullopt;
  // The spots hugging the code from below and from above, moved into the window.
  uint64_t below = std::clamp(near_start >= size ? align_down(near_start - size) : 0, first, last);
  uint64_t above = std::clamp(align_up(near_end), first, last);
  return distance_to_code(below, size, near_start, near_end) <= distance_to_code(above, size, near_start, near_end)
             ? below
             : above;
}

}  // namespace

std::vector<MappedRegion> parse_process_maps(const std::string& text) {
  std::vector<MappedRegion> regions;
  std::string_view rest = text;
  while (!rest.empty()) {
    size_t newline = rest.find('\n');
    std::string_view line = rest.substr(0, newline);
    rest = newline == std::string_view::npos ? std::string_view() : rest.substr(newline + 1);
    if (trim_left(line).empty()) continue;
    regions.push_back(parse_line(line));
  }
  return regions;
}

std::vector<MappedRegion> read_process_maps(pid_t pid) {
  std::string path = "/proc/" + std::to_string(pid) + "/maps";
  std::string text;
  int error = read_whole_file(path, text);
  if (error == ENOENT || error == ESRCH) {
    throw Error(ErrorCode::kNoSuchProcess, "process " + std::to_string(pid) + " does not exist");
  }
  if (error != 0) {
    throw_errno("cannot read " + path + " (Polus needs the same user as the target, or root)", error);
  }
  // A zombie (or a kernel thread) has an empty map: there is nothing left to patch.
  if (text.empty()) {
    throw Error(ErrorCode::kNoSuchProcess, "process " + std::to_string(pid) +
                                               " has no address space (it has exited or is a kernel thread)");
  }
  return parse_process_maps(text);
}

std::optional<uint64_t> find_free_range_near(const std::vector<MappedRegion>& maps, uint64_t near_start,
                                             uint64_t near_end, uint64_t size, uint64_t reach) {
  if (near_end < near_start) std::swap(near_start, near_end);
  size = align_up(std::max<uint64_t>(size, 1));
  if (size > reach) return std::nullopt;
  // Every byte of [addr, addr+size) must be within `reach` of every byte of the code:
  // addr >= near_end - reach and addr + size <= near_start + reach.
  uint64_t lowest = near_end > reach ? align_up(near_end - reach) : 0;
  if (near_start + reach < size) return std::nullopt;
  uint64_t highest = align_down(near_start + reach - size);

  std::vector<MappedRegion> sorted = maps;
  std::sort(sorted.begin(), sorted.end(),
            [](const MappedRegion& a, const MappedRegion& b) { return a.start < b.start; });

  std::optional<uint64_t> best;
  uint64_t best_distance = UINT64_MAX;
  auto consider = [&](uint64_t free_start, uint64_t free_end) {
    // One guard page on each side, so an overrun in either direction faults.
    uint64_t gap_start = std::max(align_up(free_start) + kPageSize, kUserSpaceStart);
    uint64_t aligned_end = align_down(free_end);
    if (aligned_end < kPageSize) return;
    uint64_t gap_end = std::min(aligned_end - kPageSize, kUserSpaceEnd);
    auto candidate = best_in_gap(gap_start, gap_end, size, lowest, highest, near_start, near_end);
    if (!candidate) return;
    uint64_t distance = distance_to_code(*candidate, size, near_start, near_end);
    if (distance < best_distance) {
      best = candidate;
      best_distance = distance;
    }
  };

  uint64_t cursor = kUserSpaceStart - kPageSize;  // the universe's edge needs no extra guard
  for (const MappedRegion& region : sorted) {
    if (region.start > cursor) consider(cursor, region.start);
    cursor = std::max(cursor, region.end);
    if (cursor >= kUserSpaceEnd) break;
  }
  if (cursor < kUserSpaceEnd) consider(cursor, kUserSpaceEnd + kPageSize);
  return best;
}

}  // namespace polus
