#include "update/patch_memfd.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <set>
#include <vector>

#include <spdlog/spdlog.h>

#include "binary/symbols.h"
#include "common/clock.h"
#include "common/format.h"
#include "polus/error.h"

#ifndef MFD_EXEC
#define MFD_EXEC 0x0010U  // Linux 6.3: executable even where vm.memfd_noexec defaults to noexec
#endif

namespace polus {

namespace {

constexpr unsigned kSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL;

/// Offsets in glibc's struct r_debug and the public head of struct link_map (<link.h>).
constexpr uint64_t kRDebugMap = 8;
constexpr uint64_t kLinkMapName = 8;
constexpr uint64_t kLinkMapNext = 24;

std::string in_process(pid_t pid) { return " in process " + std::to_string(pid); }

/// The l_name of every object in the dynamic loader's main list.
std::set<std::string> loaded_object_names(ProcessMemory& memory, RemoteAddr r_debug) {
  std::set<std::string> names;
  uint64_t entry = memory.read(RemotePtr<uint64_t>(r_debug.address() + kRDebugMap));
  // Bounded: a list being changed or damaged must not loop us forever.
  for (int i = 0; entry != 0 && i < 65536; ++i) {
    uint64_t name = memory.read(RemotePtr<uint64_t>(entry + kLinkMapName));
    if (name) names.insert(memory.read_c_string(RemoteAddr(name), 4096));
    entry = memory.read(RemotePtr<uint64_t>(entry + kLinkMapNext));
  }
  return names;
}

std::string fd_path(int64_t fd) { return "/proc/self/fd/" + std::to_string(fd); }

/// Writes `bytes` into the target's memfd `fd` through /proc/PID/fd, seals it, and checks that
/// it now holds exactly those bytes.
void fill_and_seal(pid_t pid, int64_t fd, const std::vector<uint8_t>& bytes, const std::string& what) {
  const std::string path = "/proc/" + std::to_string(pid) + "/fd/" + std::to_string(fd);
  // Opening a descriptor's /proc link opens the same inode anew (a memfd is mode 0777), which
  // needs the same ptrace access as everything else Polus does to the process.
  int ours = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (ours < 0) {
    throw Error(ErrorCode::kLoadFailed, "cannot open the memfd of " + what + " " + path + ": " + std::strerror(errno));
  }
  auto fail = [&](const std::string& step, int err) {
    ::close(ours);
    throw Error(ErrorCode::kLoadFailed, step + " the memfd of " + what + in_process(pid) + " failed: " + std::strerror(err));
  };
  for (size_t done = 0; done < bytes.size();) {
    ssize_t n = ::pwrite(ours, bytes.data() + done, bytes.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("writing", n < 0 ? errno : EIO);
    done += static_cast<size_t>(n);
  }
  // Adding seals needs a writable descriptor (mm/memfd.c); ours is one. After F_SEAL_WRITE no
  // descriptor or mapping anywhere can change the contents, and F_SEAL_SEAL keeps it so.
  if (::fcntl(ours, F_ADD_SEALS, kSeals) != 0) fail("sealing", errno);
  int seals = ::fcntl(ours, F_GET_SEALS);
  if (seals < 0 || (static_cast<unsigned>(seals) & kSeals) != kSeals) fail("checking the seals", seals < 0 ? errno : EPERM);
  std::vector<uint8_t> back(bytes.size() + 1);
  size_t got = 0;
  while (got < back.size()) {
    ssize_t n = ::pread(ours, back.data() + got, back.size() - got, static_cast<off_t>(got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("reading back", errno);
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(ours);
  if (got != bytes.size() || std::memcmp(back.data(), bytes.data(), bytes.size()) != 0) {
    throw Error(ErrorCode::kLoadFailed, "the memfd of " + what + in_process(pid) +
                                            " does not hold the bytes Polus wrote (something else wrote to it before "
                                            "it was sealed); nothing was loaded");
  }
}

/// A descriptor of the memfd whose /proc/self/fd path no loaded object is named by. `fds`
/// collects every descriptor made (to close).
int64_t unique_descriptor(BorrowedThread& thread, ProcessMemory& memory, RemoteAddr r_debug, std::vector<int64_t>& fds,
                          const std::string& what) {
  const std::set<std::string> names = loaded_object_names(memory, r_debug);
  int64_t fd = fds.front();
  for (int attempt = 0; names.count(fd_path(fd)) != 0; ++attempt) {
    if (attempt == 1024) {
      throw Error(ErrorCode::kLoadFailed, "no descriptor number is free for " + what + " that no loaded library's name "
                                          "uses (" + std::to_string(names.size()) + " libraries loaded)");
    }
    // F_DUPFD_CLOEXEC returns the lowest free number at or above its argument.
    int64_t dup = thread.syscall(SYS_fcntl, {static_cast<uint64_t>(fds.front()), F_DUPFD_CLOEXEC, static_cast<uint64_t>(fd + 1)});
    if (dup < 0) {
      throw Error(ErrorCode::kLoadFailed, "duplicating the memfd of " + what + " failed: " + std::strerror(static_cast<int>(-dup)));
    }
    fds.push_back(dup);
    fd = dup;
  }
  return fd;
}

/// The name the dynamic loader gave the object `handle` (a struct link_map *).
std::string object_name(ProcessMemory& memory, uint64_t handle) {
  uint64_t name = memory.read(RemotePtr<uint64_t>(handle + kLinkMapName));
  return name ? memory.read_c_string(RemoteAddr(name), 4096) : "";
}

/// A sealed memfd named `memfd_name` in process `pid` holding `bytes`, opened by
/// `open_it("/proc/self/fd/N")` (a dlopen in the target, on `thread`); `what` names the
/// object in messages. Returns what open_it returned, and the path in `path`; the memfd's
/// descriptors are closed in the target either way.
uint64_t open_sealed_memfd(BorrowedThread& thread, ProcessMemory& memory, pid_t pid, RemoteAddr r_debug,
                           const std::vector<uint8_t>& bytes, const std::string& memfd_name, const std::string& what,
                           const std::function<uint64_t(const std::string& path)>& open_it, std::string& path) {
  const auto started = Clock::now();
  int64_t fd = thread.syscall_with_string(SYS_memfd_create, memfd_name, {MFD_ALLOW_SEALING | MFD_CLOEXEC | MFD_EXEC});
  if (fd == -EINVAL) fd = thread.syscall_with_string(SYS_memfd_create, memfd_name, {MFD_ALLOW_SEALING | MFD_CLOEXEC});  // before 6.3
  if (fd < 0) {
    std::string why = std::strerror(static_cast<int>(-fd));
    if (fd == -EACCES) why += " (vm.memfd_noexec = 2 forbids executable memfds; Polus needs it at 0 or 1)";
    if (fd == -ENOSYS || fd == -EPERM) why += " (a seccomp filter or a kernel without memfd_create?)";
    throw Error(ErrorCode::kLoadFailed, "memfd_create failed" + in_process(pid) + ": " + why + "; " + what +
                                            " was not loaded");
  }
  std::vector<int64_t> fds{fd};
  auto close_all = [&]() noexcept {
    for (int64_t each : fds) {
      try {
        thread.syscall(SYS_close, {static_cast<uint64_t>(each)});
      } catch (const Error& e) {
        if (e.code() == ErrorCode::kTargetDied) return;  // nothing left to close
        spdlog::warn("could not close the memfd {} of {} in process {}: {}", each, what, pid, e.what());
      } catch (const std::exception& e) {
        spdlog::warn("could not close the memfd {} of {} in process {}: {}", each, what, pid, e.what());
      }
    }
  };
  uint64_t result = 0;
  try {
    fill_and_seal(pid, fds.front(), bytes, what);
    const uint64_t filled_ns = elapsed_ns(started);
    path = fd_path(unique_descriptor(thread, memory, r_debug, fds, what));
    const uint64_t named_ns = elapsed_ns(started);
    result = open_it(path);
    spdlog::debug("memfd of {}: filled and sealed in {} us, descriptor named in {} us, dlopen {} us", what,
                  filled_ns / 1000, (named_ns - filled_ns) / 1000, (elapsed_ns(started) - named_ns) / 1000);
  } catch (...) {
    close_all();
    throw;
  }
  close_all();  // dlopen's mappings hold the memfd now
  spdlog::debug("{} loaded in process {} from memfd {} in {} us", what, pid, memfd_name, elapsed_ns(started) / 1000);
  return result;
}

}  // namespace

std::string patch_memfd_name(const std::string& patch_name, const std::string& sha256_hex, uint64_t record_id) {
  std::string name = "polus:";
  for (char c : patch_name) {
    const bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                       c == '_' || c == '-';
    name += plain ? c : '_';
  }
  return name + ":" + sha256_hex.substr(0, 12) + ":" + std::to_string(record_id);
}

RemoteAddr dynamic_loader_debug(const ProcessSymbols& symbols) {
  return symbols.resolve("_r_debug", SymbolKind::kData).address;
}

uint64_t load_patch_from_memfd(BorrowedThread& thread, ProcessMemory& memory, pid_t pid, const AgentLocation& agent,
                               RemoteAddr r_debug, const PatchDescription& patch, const std::string& name) {
  std::string path;
  const uint64_t handle = open_sealed_memfd(
      thread, memory, pid, r_debug, *patch.bytes, name, "patch " + patch.name,
      [&](const std::string& p) { return thread.call_with_string(agent.load_patch, p); }, path);
  if (handle == 0) {
    polus_agent_registry registry = memory.read(agent.registry);
    std::string error(registry.last_error, strnlen(registry.last_error, sizeof registry.last_error));
    if (error.find(path) != std::string::npos && error.find("No such file") != std::string::npos) {
      error += " (Polus loads patches through /proc/self/fd: the process must see a /proc file system)";
    }
    throw Error(ErrorCode::kLoadFailed, "dlopen of patch " + patch.name + " (from " + patch.path + ") failed" +
                                            in_process(pid) + ": " + error);
  }
  // No object was named `path` before the call, so an object of that name is the new one.
  const std::string loaded = object_name(memory, handle);
  if (loaded != path) {
    thread.call(agent.unload_patch, {handle});
    throw Error(ErrorCode::kLoadFailed, "the dynamic loader of process " + std::to_string(pid) + " returned " +
                                            (loaded.empty() ? "an unnamed library" : loaded) +
                                            ", already loaded, instead of loading patch " + patch.name + " from " + path);
  }
  return handle;
}

uint64_t load_agent_from_memfd(BorrowedThread& thread, ProcessMemory& memory, pid_t pid, RemoteAddr r_debug,
                               RemoteAddr dlopen, RemoteAddr dlerror, const AgentImage& agent) {
  std::string path;
  const uint64_t handle = open_sealed_memfd(
      thread, memory, pid, r_debug, *agent.bytes, kAgentFileName, "the Polus agent",
      [&](const std::string& p) {
        uint64_t h = thread.call_with_string(dlopen, p, {RTLD_NOW | RTLD_GLOBAL});
        if (h == 0) {
          uint64_t message = thread.call(dlerror, {});
          throw Error(ErrorCode::kLoadFailed, "cannot load the Polus agent (" + agent.path + ") into process " +
                                                  std::to_string(pid) + ": " +
                                                  (message ? memory.read_c_string(RemoteAddr(message), 1024)
                                                           : std::string("dlopen failed, and dlerror says nothing")));
        }
        return h;
      },
      path);
  if (object_name(memory, handle) != path) {
    throw Error(ErrorCode::kLoadFailed, "the dynamic loader of process " + std::to_string(pid) +
                                            " returned a library already loaded instead of the Polus agent");
  }
  return handle;
}

}  // namespace polus
