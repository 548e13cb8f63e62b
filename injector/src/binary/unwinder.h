// binary/unwinder.h — the call stack of a stopped thread, from the CFI of the objects it runs.
//
// Targets are built -O2 -fomit-frame-pointer, so frame pointers cannot be followed: each
// frame is unwound with the call-frame information of the object its pc lies in (.eh_frame,
// else .debug_frame in the object or in its separate debug file), read from the ELF file on
// disk with libdwarf and cached per object. The CFA and register rules handled are the ones
// compilers and glibc emit on x86-64: reg+offset CFAs, CFA expressions (PLT stubs, signal
// trampolines), offset / val_offset / register / expression / val_expression register
// rules; callee-saved registers (rbx, rbp, r12-r15) are restored frame by frame, so a frame
// whose CFA is rbp-based further up still unwinds.
//
// Signal frames: glibc's __restore_rt has an FDE whose CIE carries augmentation "S"; its
// expressions restore every register from the ucontext_t the kernel pushed, and the frame
// after it (the interrupted code) is looked up at its exact pc, not pc-1. If a sigreturn
// trampoline has no CFI it is recognised by its bytes (mov $15,%rax; syscall) and the
// ucontext_t (at the trampoline frame's sp: struct rt_sigframe's pretcode is already popped)
// is decoded directly.
//
// Where no CFI covers a pc (JIT code, our own trampolines, hand-written asm without CFI),
// the unwinder scans the stack words above sp for the first value that points into an
// executable mapping of a known ELF object just after a call instruction and whose own CFI
// gives a plausible next step, then resumes CFI unwinding from there. Such frames have
// from_scan = true, and the result says used_scan = true with a note naming the pc and its
// object. A scan is a heuristic: a stale return address left in a dead stack slot may be
// taken for a live one and real frames skipped. For a safety decision after used_scan,
// combine with the conservative whole-stack check of stack_scan.h.
//
// Not thread-safe: one Unwinder per thread of the engine (it is meant to run while every
// target thread is stopped). The ProcessSymbols given to the constructor must outlive it.
#pragma once

#include <sys/types.h>
#include <sys/user.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "process/process_memory.h"
#include "binary/symbols.h"

namespace polus {

struct StackFrame {
  uint64_t pc = 0;         // return address (the thread's pc for frame 0, the interrupted pc
                           // for the frame right above a signal frame)
  uint64_t cfa = 0;        // canonical frame address: the caller's sp once this frame returns
                           // (for a frame without CFI: just above the return address the scan found)
  bool from_scan = false;  // pc found by scanning the stack, not computed from CFI
  bool interrupted = false;  // pc is where the thread was stopped or interrupted (frame 0, the
                             // frame after a signal frame), not a return address: look it up
                             // as is rather than at pc - 1
  uint64_t scanned_from = 0;  // this frame had no usable CFI and its caller's return address was
                              // found by scanning [scanned_from, cfa - 8): the words passed over
                              // could hide a real return address. 0 if not scanned
};

struct UnwindResult {
  std::vector<StackFrame> frames;  // innermost first
  bool complete = false;           // reached the outermost frame (CFI says "return address
                                   // undefined", as for _start and clone3, or a return address of 0)
  bool used_scan = false;          // some frame had no CFI and was found by scanning
  std::string note;                // why the walk stopped early and where it scanned; "" if neither
};

/// Whether the `size` bytes ending just before a candidate return address end with a call
/// instruction (e8 rel32, or ff /2 in any of its register / memory / rip-relative forms).
/// Needs up to 7 bytes; fewer simply rule out the longer forms.
bool code_ends_with_call(const uint8_t* bytes, size_t size);

class Unwinder {
 public:
  /// `pid` (optional) lets object files be opened through /proc/PID/root and
  /// /proc/PID/map_files, as ProcessSymbols does, for targets in another mount namespace or
  /// whose binaries were replaced on disk. Nothing is parsed until a pc needs it.
  explicit Unwinder(const ProcessSymbols& symbols, pid_t pid = 0);
  ~Unwinder();
  Unwinder(const Unwinder&) = delete;
  Unwinder& operator=(const Unwinder&) = delete;

  /// Unwinds the thread whose registers are `regs`. Never throws for unreadable memory or
  /// malformed CFI: the walk stops there with complete = false and a note.
  UnwindResult unwind(ProcessMemory& memory, const user_regs_struct& regs, size_t max_frames = 256);

  /// Drops every parsed object and cached CFI row (e.g. after the target dlopen()ed).
  void clear_cache();

  /// Internal (defined in unwinder.cc): one object's parsed CFI, and one resolved CFI row.
  struct ObjectCfi;
  struct CfiRow;

 private:
  struct Walker;  // one unwind in progress (unwinder.cc)

  /// The CFI row in force at runtime address `pc` (cached), or nullptr if none covers it.
  const CfiRow* find_row(ProcessMemory& memory, uint64_t pc);
  ObjectCfi* object_cfi(ProcessMemory& memory, uint64_t pc);

  const ProcessSymbols* symbols_;
  pid_t pid_;
  std::map<std::string, std::unique_ptr<ObjectCfi>> objects_;       // by object path, "[vdso]"
  std::unordered_map<uint64_t, std::unique_ptr<CfiRow>> rows_;      // by lookup pc (runtime)
};

}  // namespace polus
