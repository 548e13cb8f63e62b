// binary/relocate.h — a function's first instructions, moved: what a patch calls to run the
// function as it was before the jump.
//
// The 5-byte jump at a redirected function's entry overwrites its first instruction(s). To
// run the original function anyway (a wrapper that calls the old version, a fix that
// corrects the arguments and then calls it), those displaced instructions are executed
// elsewhere — in a stub in the scratch arena — followed by a jump back to the first byte the
// jump left intact. Moving an instruction changes what its rip-relative parts mean: a
// rip-relative memory operand gets its displacement adjusted, a relative call or jump is
// re-encoded with a 32-bit offset to the same target. What cannot be moved is refused:
// a branch into the displaced bytes themselves, loop/jrcxz (8-bit offsets only), a target or
// operand beyond ±2 GiB of the stub. The construction is pure (bytes in, bytes out).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace polus {

/// The stub's code: [endbr64 if `with_endbr64`] + the instructions of `code` (the function's
/// bytes from `patch_site` on) that a 5-byte jump at `patch_site` overwrites, relocated to run
/// at `stub`, + a jump to the first instruction after them. `code` must hold at least those
/// instructions (a few more bytes are fine). Throws Error(kUnsafeToPatch) naming the
/// instruction that cannot be moved (`name` is the function's, for the message).
std::vector<uint8_t> build_original_stub(std::span<const uint8_t> code, uint64_t patch_site, bool with_endbr64,
                                         uint64_t stub, const std::string& name);

/// The most bytes build_original_stub returns: endbr64, up to 5 relocated instructions grown
/// to their rel32 forms, a 14-byte absolute jump.
inline constexpr size_t kMaxOriginalStubBytes = 4 + 5 * 15 + 14;

}  // namespace polus
