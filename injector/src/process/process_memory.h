// process/process_memory.h — reading and writing the target's memory.
//
// The engine talks to memory only through ProcessMemory, so parsers of remote structures
// can be fuzzed against FakeMemory. The real implementation uses pread64/pwrite64 on
// /proc/PID/mem: one syscall per range, and writes succeed even on read-only text because
// the kernel opens the pages with FOLL_FORCE for a tracer (mm/memory.c, access_remote_vm).
// When /proc/PID/mem is unusable (e.g. restricted by an LSM) it falls back to
// PTRACE_PEEKDATA/POKEDATA word by word, which needs the thread to be ptrace-stopped.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "process/remote_ptr.h"

namespace polus {

class ProcessMemory {
 public:
  virtual ~ProcessMemory() = default;

  /// Reads up to `size` bytes; returns how many were readable (stops at the first hole).
  virtual size_t read_bytes_fallible(RemoteAddr address, void* buffer, size_t size) = 0;
  /// Writes up to `size` bytes; returns how many were written.
  virtual size_t write_bytes_fallible(RemoteAddr address, const void* buffer, size_t size) = 0;

  /// Reads exactly `size` bytes or throws Error(kInternal) naming the address.
  void read_bytes(RemoteAddr address, void* buffer, size_t size);
  /// Writes exactly `size` bytes or throws Error(kInternal) naming the address.
  void write_bytes(RemoteAddr address, const void* buffer, size_t size);
  std::vector<uint8_t> read_vector(RemoteAddr address, size_t size);

  template <typename T>
  T read(RemotePtr<T> address) {
    T value;
    read_bytes(address, &value, sizeof(T));
    return value;
  }
  template <typename T>
  void write(RemotePtr<T> address, const T& value) {
    write_bytes(address, &value, sizeof(T));
  }
  /// Whether the process behind this memory is gone (a failed access then means that).
  virtual bool target_gone() const { return false; }

  /// A NUL-terminated string of at most `max_length` bytes (truncated, never throws on length).
  std::string read_c_string(RemoteAddr address, size_t max_length = 4096);
};

/// The target's real memory.
class ProcMemory final : public ProcessMemory {
 public:
  /// Opens /proc/PID/mem. Throws Error(kNoSuchProcess / kPermissionDenied).
  explicit ProcMemory(pid_t pid);
  ~ProcMemory() override;
  ProcMemory(const ProcMemory&) = delete;
  ProcMemory& operator=(const ProcMemory&) = delete;

  size_t read_bytes_fallible(RemoteAddr address, void* buffer, size_t size) override;
  size_t write_bytes_fallible(RemoteAddr address, const void* buffer, size_t size) override;
  bool target_gone() const override;

 private:
  size_t peek_fallible(RemoteAddr address, void* buffer, size_t size);
  size_t poke_fallible(RemoteAddr address, const void* buffer, size_t size);
  pid_t pid_;
  int fd_ = -1;
};

/// Memory made of byte ranges set up by a test; everything else is a hole.
class FakeMemory final : public ProcessMemory {
 public:
  void map(uint64_t address, std::vector<uint8_t> bytes) { regions_[address] = std::move(bytes); }
  size_t read_bytes_fallible(RemoteAddr address, void* buffer, size_t size) override;
  size_t write_bytes_fallible(RemoteAddr address, const void* buffer, size_t size) override;

 private:
  /// Walks the mapped ranges covering [address, address + size), calling `copy` per piece.
  size_t copy_fallible(uint64_t address, size_t size,
                       const std::function<void(uint8_t* region_bytes, size_t done, size_t take)>& copy);
  std::map<uint64_t, std::vector<uint8_t>> regions_;
};

}  // namespace polus
