// update/patch_memfd.h — the target loads exactly the bytes Polus checked: a sealed memfd.
//
// apply opens the patch file once (patch_trust), validates the bytes it read (patch_file) and,
// when asked, checks their signature (patch_signature). Handing the target's dlopen the path
// would have it looked up again, later, in the target's mount namespace: a file swapped in
// between, or a container that sees another file there or none. So the target gets the bytes
// themselves: a memfd made in it (memfd_create on a borrowed thread), filled by Polus through
// /proc/PID/fd/N, sealed against every change (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE |
// F_SEAL_SEAL: no process, the target included, can alter it afterwards), read back and
// compared with the validated bytes, then loaded with dlopen("/proc/self/fd/N"). The
// descriptor is closed once dlopen has mapped the file; the mappings keep the memfd alive.
//
// glibc's dlopen hands back an already loaded library whose name equals the path asked for
// (elf/dl-load.c, _dl_map_object compares names before opening anything): a patch loaded
// through the fd number an earlier patch used (closed since, and reused by the kernel) would
// get that earlier patch back. So the path is made unique among the names in the dynamic
// loader's list (the fd is duplicated to a higher number when needed), and the name of what
// dlopen returned is checked. A DT_SONAME does not matter: the soname comparison is against
// the name asked for, which is never "/proc/self/fd/N". Distinct memfds are distinct inodes,
// so ld.so's file-identity check never takes one patch for another either.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "binary/symbols.h"
#include "process/borrowed_thread.h"
#include "process/process_memory.h"
#include "update/patch_file.h"
#include "update/registry.h"

namespace polus {

/// The memfd's name: "polus:NAME:SHA:ID" with NAME the patch's name reduced to [A-Za-z0-9._-],
/// SHA the first 12 hex digits of its SHA-256 and ID its record's id (never reused in one
/// process, so no two memfds of one process share a name). /proc/PID/maps shows the patch's
/// mappings as "/memfd:<name> (deleted)".
std::string patch_memfd_name(const std::string& patch_name, const std::string& sha256_hex, uint64_t record_id);

/// Loads `patch` into process `pid` (its memory `memory`, `thread` one of its threads, the
/// agent at `agent`) from a sealed memfd named `memfd_name` holding patch.bytes, through the agent's
/// polus_agent_load_patch. `r_debug` is the dynamic loader's _r_debug. Returns the dlopen
/// handle (a struct link_map *). Throws Error(kLoadFailed) saying what failed (dlerror's text
/// for the load itself); the memfd's descriptors are closed in the target either way.
uint64_t load_patch_from_memfd(BorrowedThread& thread, ProcessMemory& memory, pid_t pid, const AgentLocation& agent,
                               RemoteAddr r_debug, const PatchDescription& patch, const std::string& memfd_name);

/// Loads the Polus agent into process `pid` the same way: a sealed memfd named
/// "libpolus-agent.so" (its mappings show as "/memfd:libpolus-agent.so (deleted)") holding
/// agent.bytes, opened with the target's own `dlopen` (RTLD_NOW | RTLD_GLOBAL: patches link
/// against its exports); `dlerror` explains a failure. Returns the handle (a struct link_map *).
/// Throws Error(kLoadFailed).
uint64_t load_agent_from_memfd(BorrowedThread& thread, ProcessMemory& memory, pid_t pid, RemoteAddr r_debug,
                               RemoteAddr dlopen, RemoteAddr dlerror, const AgentImage& agent);

/// The dynamic loader's _r_debug in a process whose symbols are `symbols`.
RemoteAddr dynamic_loader_debug(const ProcessSymbols& symbols);

}  // namespace polus
