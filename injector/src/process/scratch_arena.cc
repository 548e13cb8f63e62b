#include "process/scratch_arena.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstring>

#include "common/format.h"
#include "polus/error.h"
#include "process/borrowed_thread.h"

namespace polus {

namespace {

constexpr uint64_t kStringOffset = 128;  // after the stubs
constexpr uint64_t kSyscallStubOffset = 32;
constexpr uint64_t kCloneStubOffset = 48;
constexpr uint64_t kSigreturnPcOffset = 17;  // after the return stub's `syscall`

// The return stub, at the scratch page's start; rsp points at the frame's ucontext (the
// pretcode slot was popped by the callee's `ret`, or never pushed for a system call).
//   mov %rax, 304(%rsp)   store the result in the frame's siginfo (kResultOffset)
//   mov $15, %rax         __NR_rt_sigreturn
//   syscall
// then, at +32, the system-call stub: `syscall; jmp <return stub>`.
constexpr uint8_t kReturnStub[] = {0x48, 0x89, 0x84, 0x24, 0x30, 0x01, 0x00, 0x00, 0x48, 0xc7, 0xc0, 0x0f,
                                   0x00, 0x00, 0x00, 0x0f, 0x05, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc,
                                   0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc};
constexpr uint8_t kSyscallStub[] = {0x0f, 0x05, 0xeb, static_cast<uint8_t>(-(int)(kSyscallStubOffset + 4)),
                                    0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc};
// At +48, the clone stub: the parent goes on to the return stub; a child that runs on its own
// (its tracer died before taking it over) exits at once instead of running the target's code:
//   syscall; test %rax,%rax; jz 1f; jmp <return stub>; 1: mov $231,%eax; xor %edi,%edi; syscall
constexpr uint8_t kCloneStub[] = {0x0f, 0x05, 0x48, 0x85, 0xc0, 0x74, 0x02, 0xeb,
                                  static_cast<uint8_t>(-(int)(kCloneStubOffset + 9)),
                                  0xb8, 0xe7, 0x00, 0x00, 0x00, 0x31, 0xff, 0x0f, 0x05, 0xcc, 0xcc};
static_assert(sizeof kReturnStub == kSyscallStubOffset);
static_assert(kSyscallStubOffset + sizeof kSyscallStub == kCloneStubOffset);
static_assert(kCloneStubOffset + sizeof kCloneStub <= kStringOffset);
constexpr uint64_t kArgsBytes = 64;     // the page's last bytes

}  // namespace

void ScratchArena::write_stubs(uint64_t base) {
  uint8_t code[sizeof kReturnStub + sizeof kSyscallStub + sizeof kCloneStub];
  std::memcpy(code, kReturnStub, sizeof kReturnStub);
  std::memcpy(code + sizeof kReturnStub, kSyscallStub, sizeof kSyscallStub);
  std::memcpy(code + kCloneStubOffset, kCloneStub, sizeof kCloneStub);
  memory_.write_bytes(RemoteAddr(base), code, sizeof code);
}

void ScratchArena::adopt(const std::vector<uint64_t>& recorded) {
  // An arena recorded by an older Polus may hold other stubs: the current ones are written.
  if (arenas_.empty() && !recorded.empty()) write_stubs(recorded.front());
  for (uint64_t base : recorded) {
    if (std::find(arenas_.begin(), arenas_.end(), base) == arenas_.end()) arenas_.push_back(base);
  }
}

void ScratchArena::ensure(BorrowedThread& thread, uint64_t near_start, uint64_t near_end) {
  if (ready()) return;
  uint64_t base = thread.map_memory(near_start, near_end, kArenaSize, PROT_READ | PROT_EXEC);
  arenas_.push_back(base);
  new_arenas_.push_back(base);
  write_stubs(base);
}

uint64_t ScratchArena::scratch() const {
  if (arenas_.empty()) throw Error(ErrorCode::kInternal, "no scratch arena in the target yet");
  return arenas_.front();
}

RemoteAddr ScratchArena::return_stub() const { return RemoteAddr(scratch()); }

RemoteAddr ScratchArena::syscall_stub() const { return RemoteAddr(scratch() + kSyscallStubOffset); }

RemoteAddr ScratchArena::clone_stub() const { return RemoteAddr(scratch() + kCloneStubOffset); }

RemoteAddr ScratchArena::sigreturn_pc() const { return RemoteAddr(scratch() + kSigreturnPcOffset); }

RemoteAddr ScratchArena::put_string(const std::string& text) {
  if (text.size() + 1 > kArenaScratchBytes - kStringOffset - kArgsBytes) {
    throw Error(ErrorCode::kPatchMalformed, "path too long: " + text);
  }
  RemoteAddr at(scratch() + kStringOffset);
  memory_.write_bytes(at, text.c_str(), text.size() + 1);
  return at;
}

RemoteAddr ScratchArena::put_args(const void* data, uint64_t size) {
  if (size > kArgsBytes) throw Error(ErrorCode::kInternal, "argument block of " + std::to_string(size) + " bytes");
  RemoteAddr at(scratch() + kArenaScratchBytes - kArgsBytes);
  memory_.write_bytes(at, data, size);
  return at;
}

uint64_t ScratchArena::allocate_slot(BorrowedThread& thread, const std::function<bool(uint64_t)>& reaches,
                                     uint64_t near_start, uint64_t near_end) {
  // Never-used slots (still zero) first: a slot freed by a rollback is handed out again only
  // when an arena has no fresh one, so a thread that was preempted on it has long moved on.
  uint64_t recycled = 0;
  for (uint64_t arena : arenas_) {
    std::vector<uint8_t> bytes(kArenaSize - kArenaScratchBytes);
    size_t got = memory_.read_bytes_fallible(RemoteAddr(arena + kArenaScratchBytes), bytes.data(), bytes.size());
    for (uint64_t slot = arena + kArenaScratchBytes; slot + kTrampolineSlotSize <= arena + kArenaSize;
         slot += kTrampolineSlotSize) {
      if (!reaches(slot)) break;
      if (std::find(used_slots_.begin(), used_slots_.end(), slot) != used_slots_.end()) continue;
      size_t offset = slot - arena - kArenaScratchBytes;
      bool fresh = offset + kTrampolineSlotSize <= got &&
                   std::all_of(bytes.begin() + static_cast<long>(offset),
                               bytes.begin() + static_cast<long>(offset + kTrampolineSlotSize),
                               [](uint8_t b) { return b == 0; });
      if (fresh) {
        used_slots_.push_back(slot);
        return slot;
      }
      if (!recycled) recycled = slot;
    }
  }
  if (!recycled) {
    uint64_t arena = thread.map_memory(near_start, near_end, kArenaSize, PROT_READ | PROT_EXEC);
    arenas_.push_back(arena);
    new_arenas_.push_back(arena);
    recycled = arena + kArenaScratchBytes;
  }
  used_slots_.push_back(recycled);
  return recycled;
}

}  // namespace polus
