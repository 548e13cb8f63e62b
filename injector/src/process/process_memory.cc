#include "process/process_memory.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/ptrace.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>

#include "polus/error.h"
#include "process/process_maps.h"
#include "common/format.h"

namespace polus {

void ProcessMemory::read_bytes(RemoteAddr address, void* buffer, size_t size) {
  size_t done = read_bytes_fallible(address, buffer, size);
  if (done != size && target_gone()) throw Error(ErrorCode::kTargetDied, "the target exited during the operation");
  if (done != size) {
    throw Error(ErrorCode::kInternal, "cannot read " + std::to_string(size) + " bytes of the target at " +
                                          hex(address.address()) + " (only " + std::to_string(done) +
                                          " readable): the address is not mapped");
  }
}

void ProcessMemory::write_bytes(RemoteAddr address, const void* buffer, size_t size) {
  size_t done = write_bytes_fallible(address, buffer, size);
  if (done != size && target_gone()) throw Error(ErrorCode::kTargetDied, "the target exited during the operation");
  if (done != size) {
    throw Error(ErrorCode::kInternal, "cannot write " + std::to_string(size) + " bytes of the target at " +
                                          hex(address.address()) + " (only " + std::to_string(done) +
                                          " written): the address is not mapped");
  }
}

std::vector<uint8_t> ProcessMemory::read_vector(RemoteAddr address, size_t size) {
  std::vector<uint8_t> bytes(size);
  read_bytes(address, bytes.data(), size);
  return bytes;
}

std::string ProcessMemory::read_c_string(RemoteAddr address, size_t max_length) {
  std::string result;
  char chunk[256];
  while (result.size() < max_length) {
    // Never cross a page boundary in one read, so a string ending right before a hole reads.
    uint64_t at = address.address() + result.size();
    size_t to_page_end = 4096 - (at & 4095);
    size_t want = std::min({sizeof(chunk), to_page_end, max_length - result.size()});
    size_t got = read_bytes_fallible(RemoteAddr(at), chunk, want);
    if (got == 0) break;
    const char* nul = static_cast<const char*>(std::memchr(chunk, 0, got));
    if (nul) {
      result.append(chunk, nul - chunk);
      return result;
    }
    result.append(chunk, got);
  }
  return result;
}

ProcMemory::ProcMemory(pid_t pid) : pid_(pid) {
  std::string path = "/proc/" + std::to_string(pid) + "/mem";
  fd_ = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd_ < 0) {
    int err = errno;
    if (err == ENOENT) throw Error(ErrorCode::kNoSuchProcess, "process " + std::to_string(pid) + " does not exist");
    if (err == EACCES || err == EPERM) {
      throw Error(ErrorCode::kPermissionDenied, "cannot open " + path + ": " + std::strerror(err) +
                                                    "; run as the target's user or as root");
    }
    throw_errno("cannot open " + path, err);
  }
}

bool ProcMemory::target_gone() const { return task_exited(pid_); }

ProcMemory::~ProcMemory() {
  if (fd_ >= 0) ::close(fd_);
}

size_t ProcMemory::read_bytes_fallible(RemoteAddr address, void* buffer, size_t size) {
  size_t done = 0;
  while (done < size) {
    ssize_t n = ::pread64(fd_, static_cast<char*>(buffer) + done, size - done,
                          static_cast<off64_t>(address.address() + done));
    if (n > 0) {
      done += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != EIO && errno != EFAULT) {
      // /proc/PID/mem refused us as a whole (not a hole): try the ptrace path.
      return done + peek_fallible(RemoteAddr(address.address() + done), static_cast<char*>(buffer) + done,
                                  size - done);
    }
    break;  // EIO/0: an unmapped page.
  }
  return done;
}

size_t ProcMemory::write_bytes_fallible(RemoteAddr address, const void* buffer, size_t size) {
  size_t done = 0;
  while (done < size) {
    ssize_t n = ::pwrite64(fd_, static_cast<const char*>(buffer) + done, size - done,
                           static_cast<off64_t>(address.address() + done));
    if (n > 0) {
      done += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != EIO && errno != EFAULT) {
      return done + poke_fallible(RemoteAddr(address.address() + done), static_cast<const char*>(buffer) + done,
                                  size - done);
    }
    break;
  }
  return done;
}

namespace {

/// Walks [address, address + size) one aligned word at a time through PTRACE_PEEKDATA:
/// `step(word, skip, done, take)` sees each word, where the range starts in it (`skip`), how
/// far the walk got (`done`) and how many of its bytes belong to the range (`take`); it
/// returns false to stop there. Returns the bytes walked.
template <typename Step>
size_t for_each_word(pid_t pid, RemoteAddr address, size_t size, Step step) {
  size_t done = 0;
  while (done < size) {
    uint64_t at = address.address() + done;
    uint64_t aligned = at & ~7ull;
    errno = 0;
    long word = ::ptrace(PTRACE_PEEKDATA, pid, reinterpret_cast<void*>(aligned), nullptr);
    if (errno != 0) break;
    size_t skip = at - aligned;
    size_t take = std::min(sizeof(word) - skip, size - done);
    if (!step(word, aligned, skip, done, take)) break;
    done += take;
  }
  return done;
}

}  // namespace

size_t ProcMemory::peek_fallible(RemoteAddr address, void* buffer, size_t size) {
  return for_each_word(pid_, address, size, [&](long word, uint64_t, size_t skip, size_t done, size_t take) {
    std::memcpy(static_cast<char*>(buffer) + done, reinterpret_cast<char*>(&word) + skip, take);
    return true;
  });
}

size_t ProcMemory::poke_fallible(RemoteAddr address, const void* buffer, size_t size) {
  return for_each_word(pid_, address, size, [&](long word, uint64_t aligned, size_t skip, size_t done, size_t take) {
    std::memcpy(reinterpret_cast<char*>(&word) + skip, static_cast<const char*>(buffer) + done, take);
    return ::ptrace(PTRACE_POKEDATA, pid_, reinterpret_cast<void*>(aligned), reinterpret_cast<void*>(word)) == 0;
  });
}

size_t FakeMemory::copy_fallible(uint64_t address, size_t size,
                                 const std::function<void(uint8_t* region_bytes, size_t done, size_t take)>& copy) {
  size_t done = 0;
  while (done < size) {
    uint64_t at = address + done;
    auto it = regions_.upper_bound(at);
    if (it == regions_.begin()) break;
    --it;
    if (at >= it->first + it->second.size()) break;
    size_t take = std::min(size - done, static_cast<size_t>(it->first + it->second.size() - at));
    copy(it->second.data() + (at - it->first), done, take);
    done += take;
  }
  return done;
}

size_t FakeMemory::read_bytes_fallible(RemoteAddr address, void* buffer, size_t size) {
  return copy_fallible(address.address(), size, [&](uint8_t* region, size_t done, size_t take) {
    std::memcpy(static_cast<char*>(buffer) + done, region, take);
  });
}

size_t FakeMemory::write_bytes_fallible(RemoteAddr address, const void* buffer, size_t size) {
  return copy_fallible(address.address(), size, [&](uint8_t* region, size_t done, size_t take) {
    std::memcpy(region, static_cast<const char*>(buffer) + done, take);
  });
}

}  // namespace polus
