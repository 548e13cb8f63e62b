// binary/stack_scan.h — conservative questions about what a stopped thread is running.
//
// "Could this thread be inside function F?" is answered by looking at its pc and at every
// 8-byte word of its live stack, [rsp, top of the stack mapping): a return address into F
// must be one of those words. A word that merely looks like an address into F makes the
// answer "yes" — a false positive only costs a retry, never safety. But a stale return
// address in a dead slot of a live frame can stay there for good (an idle thread's stack
// does not change), so decisions that would otherwise wait forever are taken from the
// frames the CFI unwind finds (binary/frame_check.h), with this scan only where the unwind
// cannot see.
#pragma once

#include <sys/types.h>
#include <sys/user.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "process/process_maps.h"
#include "process/process_memory.h"

namespace polus {

struct AddressRange {
  uint64_t start = 0;
  uint64_t end = 0;  // exclusive
  std::string what;  // shown in messages, e.g. "malloc" or "ld-linux-x86-64.so.2"
  bool contains(uint64_t a) const { return a >= start && a < end; }
};

/// A stopped thread's pc and live stack words.
struct ThreadSnapshot {
  pid_t tid = 0;
  uint64_t pc = 0;
  uint64_t sp = 0;
  std::vector<uint64_t> stack_words;
  bool stack_complete = true;  // false if the stack mapping was not found or was cut at the limit
  user_regs_struct regs{};     // every register at the stop (what an unwind starts from)
};

/// Reads the live stack of a thread whose registers are `regs` (up to `limit` bytes).
ThreadSnapshot snapshot_thread(ProcessMemory& memory, const std::vector<MappedRegion>& maps, pid_t tid,
                               const user_regs_struct& regs, size_t limit = 8u << 20);

/// The first range the thread's pc or a stack word falls into, if any.
const AddressRange* thread_touches(const ThreadSnapshot& thread, const std::vector<AddressRange>& ranges);

/// Whether the pc or any stack word equals one of `addresses` exactly.
bool thread_has_address(const ThreadSnapshot& thread, const std::vector<uint64_t>& addresses);

}  // namespace polus
