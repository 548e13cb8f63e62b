// binary/tail_calls.h — where a function's code goes without leaving a frame of its own.
//
// A function that ends with a jump to another (a tail call: `free` ends in `jmp _int_free`)
// is gone from the stack while the other runs: no return address into it remains. A check
// for "is this thread inside free?" from frames (binary/frame_check.h) must therefore also
// look for the functions free jumps to. Those are found here from the code: every direct jump
// (jmp or jcc with an immediate target) that leaves the function's own bytes. Their extents
// come from the object's unwind table: .eh_frame_hdr lists where every function with CFI
// starts, so a function runs from its start to the next one's (padding included).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace polus {

/// The targets of the direct jumps in `code` (a function at `address`, its bytes) that lie
/// outside [address, address + code.size()). Stops at bytes capstone cannot decode.
std::vector<uint64_t> jump_targets_outside(std::span<const uint8_t> code, uint64_t address);

/// From `starts` (sorted function starts, e.g. read_function_starts), the extent of the
/// function containing `address`: [start, next start). {0, 0} if it precedes every start or
/// follows the last (whose end is unknown).
std::pair<uint64_t, uint64_t> function_extent(const std::vector<uint64_t>& starts, uint64_t address);

}  // namespace polus
