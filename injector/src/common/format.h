// common/format.h — small text helpers for messages.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

namespace polus {

/// "0x55d0c0a01139": how addresses appear in every message and in status.
inline std::string hex(uint64_t value) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(value));
  return buf;
}

/// The file name of a path: "libc.so.6" for "/usr/lib/x86_64-linux-gnu/libc.so.6".
inline std::string basename_of(const std::string& path) {
  auto slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace polus
