// binary/frame_check.h — "is this stopped thread inside one of these functions?", answered
// from its real frames.
//
// The whole-stack scan of stack_scan.h treats every word of the live stack as a possible
// return address. Stacks keep stale ones: the dead slots of a live frame still hold what an
// earlier call left there (nginx's master, after its daemonising fork, keeps `fork+0x1f3`
// below the frame it idles in for good; an idle bash keeps a `__libc_free` return address).
// Such a word never goes away while the thread idles, so a decision that waits for the scan
// to clear would wait forever. Here the scan only filters: a thread with no word in any range
// is outside them all (a real frame's return address is always one of its stack words).
// Otherwise its stack is unwound with CFI (binary/unwinder.h) and the frames decide, up to
// where the unwind cannot see: the first frame without CFI (above it the unwinder goes on by
// scanning, which can take a stale word for a return address and skip real frames) or the
// point where a walk stopped early. Above that point the words are checked the conservative
// way, and a hit there is reported as uncertain, with the word, its offset and why the
// unwind could not tell.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "binary/stack_scan.h"
#include "binary/symbols.h"
#include "binary/unwinder.h"
#include "process/process_memory.h"

namespace polus {

/// Why a stopped thread is, or may be, inside one of the ranges asked about.
struct RangeHit {
  const AddressRange* range = nullptr;  // the range, one of those passed in
  bool certain = false;  // a frame of a CFI walk lies in the range: the thread is really there.
                         // false: only a stack word the unwind could not account for points
                         // into it (perhaps a stale return address)
  std::string detail;    // where, for messages: "frame #3 is malloc+0x4d (0x7f...)" or "its
                         // stack holds 0x7f... (fork+0x1f3) at sp+0x1a8, perhaps a stale
                         // return address: <why the unwind could not tell>"
};

/// Whether `thread` (stopped; its snapshot read with its stack) is inside one of `ranges`:
/// its pc or the call site of one of its frames lies in one. Cheap when no stack word points
/// into any range (no unwind); otherwise unwinds with `unwinder` (which caches CFI: keep one
/// per operation) and falls back to the stack words only where the walk cannot see.
std::optional<RangeHit> thread_inside(const ThreadSnapshot& thread, const std::vector<AddressRange>& ranges,
                                      Unwinder& unwinder, ProcessMemory& memory, const ProcessSymbols& symbols);

/// "malloc+0x4d" for an address in a known symbol, "libc.so.6+0x9a0f1" in a known object
/// without one, "" otherwise (for messages).
std::string describe_code_address(const ProcessSymbols& symbols, uint64_t address);

}  // namespace polus
