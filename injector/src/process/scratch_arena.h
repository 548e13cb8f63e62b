// process/scratch_arena.h — the memory Polus maps in a target for its own code and data.
//
// An arena is 64 KiB of PROT_READ|PROT_EXEC memory mapped within rel32 reach of the code it
// serves. The first arena's first page is the scratch page: the stubs injected calls and
// system calls return through (they store rax and make rt_sigreturn, see signal_frame.h),
// strings passed to them (paths for dlopen) and the argument block of callbacks and sync
// functions. The rest of every arena is cut into 16-byte trampoline slots for jumps
// to new code farther than ±2 GiB from the function they replace. Arenas outlive one
// operation: the registry in the target records them, and the next operation adopts them.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "process/process_memory.h"
#include "process/remote_ptr.h"

namespace polus {

class BorrowedThread;

inline constexpr uint64_t kArenaSize = 64 * 1024;
inline constexpr uint64_t kArenaScratchBytes = 4096;  // return stubs + strings + arguments
inline constexpr uint64_t kTrampolineSlotSize = 16;

class ScratchArena {
 public:
  explicit ScratchArena(ProcessMemory& memory) : memory_(memory) {}

  /// Takes over arenas an earlier operation mapped (recorded in the target's registry); the
  /// first becomes the scratch page if none is set yet.
  void adopt(const std::vector<uint64_t>& recorded);

  /// Whether a scratch page exists (adopted or mapped by this operation).
  bool ready() const { return !arenas_.empty(); }

  /// Maps the first arena near [near_start, near_end) through `thread` and writes its stubs,
  /// unless one exists already. Throws Error(kUnsafeToPatch) when no address is in reach.
  void ensure(BorrowedThread& thread, uint64_t near_start, uint64_t near_end);

  /// Where injected calls return to: stores rax in the frame's result slot, then makes
  /// rt_sigreturn. Throws Error(kInternal) before ensure()/adopt().
  RemoteAddr return_stub() const;

  /// `syscall`, then the return stub: runs one system call on a frame-prepared thread.
  RemoteAddr syscall_stub() const;

  /// `clone` for a process copy: the parent goes on to the return stub, a child left to
  /// itself exits at once (see the rehearsal).
  RemoteAddr clone_stub() const;

  /// The pc a thread reports at the syscall-entry stop of the return stub's rt_sigreturn.
  RemoteAddr sigreturn_pc() const;

  /// Copies `text` (NUL-terminated) to the scratch page for one injected call and returns
  /// its address. Throws Error(kPatchMalformed) when it does not fit.
  RemoteAddr put_string(const std::string& text);

  /// Copies an argument block (callback or sync arguments) to the scratch page and returns
  /// its address.
  RemoteAddr put_args(const void* data, uint64_t size);

  /// Marks a trampoline slot as taken (by a recorded patch or by this operation's plan).
  void mark_used(uint64_t slot) { used_slots_.push_back(slot); }

  /// A trampoline slot that `reaches` accepts (a jump from the patch site can get there; slots
  /// are tried in address order, so the first refusal ends an arena): a never-used one of any
  /// arena first, then a freed one, else a slot in a new arena mapped near
  /// [near_start, near_end). The slot counts as used from then on.
  uint64_t allocate_slot(BorrowedThread& thread, const std::function<bool(uint64_t slot)>& reaches,
                         uint64_t near_start, uint64_t near_end);

  /// Code that stays in the target for good, in a run of slots no trampoline is ever given
  /// (its header slot records "POLUSOR", its length and `tag`): a stub that runs a function's
  /// original first instructions, which threads may be running long after the patch that
  /// made it is gone. `make(at)` builds the code for address `at` (throwing if `at` is out of
  /// reach). A run an earlier operation made with the same tag and the same code is reused,
  /// so repeated patches of one function cost its stub once. Otherwise the code goes into
  /// never-used slots that `reaches` accepts, in a new arena near [near_start, near_end) if
  /// none has room. Returns the code's address.
  uint64_t permanent_code(BorrowedThread& thread, uint64_t tag,
                          const std::function<std::vector<uint8_t>(uint64_t at)>& make,
                          const std::function<bool(uint64_t)>& reaches, uint64_t near_start, uint64_t near_end);

  /// Every arena known, the scratch one first.
  const std::vector<uint64_t>& arenas() const { return arenas_; }

  /// Arenas this operation mapped (to record in the registry, or to unmap when it fails).
  const std::vector<uint64_t>& new_arenas() const { return new_arenas_; }

 private:
  uint64_t scratch() const;
  void write_stubs(uint64_t base);
  ProcessMemory& memory_;
  std::vector<uint64_t> arenas_;      // every arena known, the scratch one first
  std::vector<uint64_t> new_arenas_;  // mapped by this operation
  std::vector<uint64_t> used_slots_;
};

}  // namespace polus
