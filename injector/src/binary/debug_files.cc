#include "binary/debug_files.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>

#include <spdlog/spdlog.h>

#include "binary/elf_reader.h"
#include "common/format.h"
#include "polus/error.h"

namespace polus {

namespace {

/// Whether `path` is a debug file for an object with `build_id`: readable ELF, with a .symtab,
/// and the same build-id (when `build_id` is not empty, or the file has one and `build_id`
/// must match it).
bool usable(const std::string& path, const std::string& build_id, bool require_build_id) {
  try {
    elf::ElfFile file(path);
    elf::ElfHeaders headers = elf::read_headers(file.get());
    if ((require_build_id || !headers.build_id_hex.empty()) && !build_id.empty() && headers.build_id_hex != build_id) {
      spdlog::warn("ignoring debug file {}: its build-id {} is not {}", path, headers.build_id_hex, build_id);
      return false;
    }
    if (!headers.has_symtab) {
      spdlog::warn("ignoring debug file {}: it has no .symtab", path);
      return false;
    }
    return true;
  } catch (const Error& error) {
    spdlog::warn("ignoring debug file {}: {}", path, error.what());
    return false;
  }
}

std::string directory_of(const std::string& path) {
  auto slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

}  // namespace

std::optional<uint32_t> file_crc32(const std::string& path) {
  static const std::array<uint32_t, 256> kTable = [] {
    std::array<uint32_t, 256> table{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
    return table;
  }();
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  uint32_t crc = 0xffffffffu;
  std::array<unsigned char, 1 << 16> buffer;
  for (;;) {
    ssize_t n = ::read(fd, buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      ::close(fd);
      return std::nullopt;
    }
    if (n == 0) break;
    for (ssize_t i = 0; i < n; ++i) crc = kTable[(crc ^ buffer[static_cast<size_t>(i)]) & 0xff] ^ (crc >> 8);
  }
  ::close(fd);
  return crc ^ 0xffffffffu;
}

DebugFiles::DebugFiles(const SymbolOptions& options) : options_(options) {
  for (const std::string& path : options.debug_files) {
    try {
      explicit_.emplace_back(path, read_build_id(path));
    } catch (const Error& error) {
      spdlog::warn("ignoring debug file {}: {}", path, error.what());
    }
  }
}

std::optional<std::string> DebugFiles::find(const std::string& object_path, const std::string& build_id,
                                            const DebugLink& link) {
  if (build_id.size() >= 3) {
    for (auto& [path, id] : explicit_) {
      if (id != build_id) continue;
      used_.insert(path);
      if (usable(path, build_id, true)) return path;
    }
    for (const std::string& root : options_.debug_roots) {
      std::string path = root + "/.build-id/" + build_id.substr(0, 2) + "/" + build_id.substr(2) + ".debug";
      if (::access(path.c_str(), R_OK) != 0) continue;
      if (usable(path, build_id, true)) return path;
    }
  }
  if (link.name.empty() || link.name.find('/') != std::string::npos) return std::nullopt;
  // gdb's order for a debuglink: beside the object, in .debug/ beside it, under each root.
  const std::string dir = directory_of(object_path);
  std::vector<std::string> candidates = {dir + "/" + link.name, dir + "/.debug/" + link.name};
  for (const std::string& root : options_.debug_roots) candidates.push_back(root + dir + "/" + link.name);
  for (const std::string& path : candidates) {
    if (path == object_path || ::access(path.c_str(), R_OK) != 0) continue;
    std::optional<uint32_t> crc = file_crc32(path);
    if (!crc || *crc != link.crc) {
      spdlog::warn("ignoring debug file {} named by the .gnu_debuglink of {}: its CRC-32 is {}, not {} (another build)",
                   path, object_path, crc ? hex(*crc) : "unreadable", hex(link.crc));
      continue;
    }
    if (usable(path, build_id, false)) return path;
  }
  return std::nullopt;
}

void DebugFiles::warn_unused(pid_t pid) const {
  for (const auto& [path, id] : explicit_) {
    if (!used_.count(path)) {
      spdlog::warn("debug file {} (build-id {}) matches no object mapped in process {}; it is probably from another build",
                   path, id.empty() ? "none" : id, pid);
    }
  }
}

}  // namespace polus
