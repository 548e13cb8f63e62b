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

namespace {

// A run of slots holding code that stays for good: a header slot, "POLUSOR", the number of
// slots of the run (header included), the run's tag; then the code.
constexpr uint8_t kRunMagic[7] = {'P', 'O', 'L', 'U', 'S', 'O', 'R'};

/// Where the runs are in one arena's slot area (`bytes`, read from its first slot on): for
/// each slot, the index of the slot its run starts at, or -1.
std::vector<long> run_starts(const std::vector<uint8_t>& bytes, size_t slots) {
  std::vector<long> owner(slots, -1);
  for (size_t i = 0; i < slots;) {
    const size_t at = i * kTrampolineSlotSize;
    if (at + kTrampolineSlotSize <= bytes.size() && std::memcmp(bytes.data() + at, kRunMagic, sizeof kRunMagic) == 0) {
      size_t count = std::max<size_t>(bytes[at + 7], 1);
      for (size_t k = i; k < i + count && k < slots; ++k) owner[k] = static_cast<long>(i);
      i += count;
    } else {
      ++i;
    }
  }
  return owner;
}

}  // namespace

uint64_t ScratchArena::allocate_slot(BorrowedThread& thread, const std::function<bool(uint64_t)>& reaches,
                                     uint64_t near_start, uint64_t near_end) {
  // Never-used slots (still zero) first: a slot freed by a rollback is handed out again only
  // when an arena has no fresh one, so a thread that was preempted on it has long moved on.
  // Runs of permanent code are never handed out.
  uint64_t recycled = 0;
  for (uint64_t arena : arenas_) {
    std::vector<uint8_t> bytes(kArenaSize - kArenaScratchBytes);
    size_t got = memory_.read_bytes_fallible(RemoteAddr(arena + kArenaScratchBytes), bytes.data(), bytes.size());
    bytes.resize(got);
    const size_t slots = (kArenaSize - kArenaScratchBytes) / kTrampolineSlotSize;
    std::vector<long> runs = run_starts(bytes, slots);
    for (uint64_t slot = arena + kArenaScratchBytes; slot + kTrampolineSlotSize <= arena + kArenaSize;
         slot += kTrampolineSlotSize) {
      if (!reaches(slot)) break;
      size_t offset = slot - arena - kArenaScratchBytes;
      if (runs[offset / kTrampolineSlotSize] >= 0) continue;
      if (std::find(used_slots_.begin(), used_slots_.end(), slot) != used_slots_.end()) continue;
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

uint64_t ScratchArena::permanent_code(BorrowedThread& thread, uint64_t tag,
                                      const std::function<std::vector<uint8_t>(uint64_t at)>& make,
                                      const std::function<bool(uint64_t)>& reaches, uint64_t near_start,
                                      uint64_t near_end) {
  const size_t slots = (kArenaSize - kArenaScratchBytes) / kTrampolineSlotSize;
  for (int round = 0; round < 2; ++round) {
    for (uint64_t arena : arenas_) {
      const uint64_t first = arena + kArenaScratchBytes;
      std::vector<uint8_t> bytes(kArenaSize - kArenaScratchBytes);
      bytes.resize(memory_.read_bytes_fallible(RemoteAddr(first), bytes.data(), bytes.size()));
      if (bytes.size() < kArenaSize - kArenaScratchBytes) continue;
      std::vector<long> runs = run_starts(bytes, slots);
      // The same code, made for the same tag by an earlier operation: reuse it.
      for (size_t i = 0; i < slots; ++i) {
        if (runs[i] != static_cast<long>(i)) continue;
        uint64_t recorded = 0;
        std::memcpy(&recorded, bytes.data() + i * kTrampolineSlotSize + 8, 8);
        const uint64_t code_at = first + (i + 1) * kTrampolineSlotSize;
        if (recorded != tag || !reaches(code_at)) continue;
        std::vector<uint8_t> code;
        try {
          code = make(code_at);
        } catch (const Error&) {
          continue;
        }
        const size_t at = (i + 1) * kTrampolineSlotSize;
        if (at + code.size() <= bytes.size() && std::equal(code.begin(), code.end(), bytes.begin() + static_cast<long>(at))) {
          return code_at;
        }
      }
      // A new run in never-used slots, the code's size (as made for the first candidate;
      // its size does not depend on the place once it is in reach).
      for (size_t i = 0; i < slots; ++i) {
        const uint64_t code_at = first + (i + 1) * kTrampolineSlotSize;
        if (!reaches(first + i * kTrampolineSlotSize) || !reaches(code_at)) continue;
        std::vector<uint8_t> code;
        try {
          code = make(code_at);
        } catch (const Error&) {
          continue;  // out of reach from here
        }
        const size_t count = 1 + (code.size() + kTrampolineSlotSize - 1) / kTrampolineSlotSize;
        if (i + count > slots || count > 255) continue;
        bool free = true;
        for (size_t k = i; k < i + count && free; ++k) {
          const uint64_t slot = first + k * kTrampolineSlotSize;
          free = runs[k] < 0 && std::find(used_slots_.begin(), used_slots_.end(), slot) == used_slots_.end() &&
                 std::all_of(bytes.begin() + static_cast<long>(k * kTrampolineSlotSize),
                             bytes.begin() + static_cast<long>((k + 1) * kTrampolineSlotSize),
                             [](uint8_t b) { return b == 0; });
        }
        if (!free) continue;
        // The code first, then the header that makes the run a run (and never a free slot).
        std::vector<uint8_t> padded = code;
        padded.resize((count - 1) * kTrampolineSlotSize, 0xcc);
        memory_.write_bytes(RemoteAddr(code_at), padded.data(), padded.size());
        uint8_t header[kTrampolineSlotSize];
        std::memcpy(header, kRunMagic, sizeof kRunMagic);
        header[7] = static_cast<uint8_t>(count);
        std::memcpy(header + 8, &tag, 8);
        memory_.write_bytes(RemoteAddr(first + i * kTrampolineSlotSize), header, sizeof header);
        return code_at;
      }
    }
    if (round == 0) {  // no room in reach: a new arena near the code
      uint64_t arena = thread.map_memory(near_start, near_end, kArenaSize, PROT_READ | PROT_EXEC);
      arenas_.push_back(arena);
      new_arenas_.push_back(arena);
    }
  }
  throw Error(ErrorCode::kUnsafeToPatch, "no room in reach for code that runs an original function (" + hex(tag) + ")");
}

}  // namespace polus
