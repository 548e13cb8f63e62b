// binary/prologue.h — where and how a function's entry can take a 5-byte jump.
//
// The jump replaces the first instruction(s) of the old function; the displaced bytes run
// again only from a stub a patch calls to run the original (binary/relocate.h). What
// matters here is who could still land in the middle of them:
//   - a thread whose pc is at an instruction boundary inside the overwritten bytes;
//   - a return address inside them (a call among the first instructions);
//   - a branch elsewhere in the function back into them (a loop to the top), or an
//     indirect jump we cannot follow — then the function must not be active at all.
// The analysis is pure (bytes in, facts out) so it is tested without a process.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace polus {

inline constexpr size_t kJumpLength = 5;  // e9 rel32

struct PrologueAnalysis {
  uint64_t function = 0;              // entry address
  uint64_t function_size = 0;
  uint64_t patch_site = 0;            // where the jump goes: entry, or entry + 4 after endbr64
  bool has_endbr64 = false;
  /// Addresses strictly inside [patch_site, patch_site + 5) where an instruction starts.
  std::vector<uint64_t> interior_boundaries;
  /// A call among the overwritten instructions: its return address is interior.
  bool call_in_overwritten = false;
  /// True when code could jump into the overwritten bytes: only patch while no thread has
  /// the function active (pc or return address inside it).
  bool requires_inactive_function = false;
  /// A direct branch of the function lands strictly inside the bytes the jump replaces: its
  /// original cannot be run from a stub either (binary/relocate.h), the branch would land in
  /// the jump.
  bool branch_into_overwritten = false;
  std::string inactive_reason;        // why, for status and errors
  /// The jump runs past the function's end into padding (int3/nop) before the next symbol.
  bool uses_padding = false;
};

/// Analyzes `code` (the function's bytes, plus up to 16 following bytes when available) of a
/// function at `address` whose symbol size is `size`. `next_symbol` is the address of the
/// next symbol after the function (0 if unknown). Throws Error(kUnsafeToPatch) when no
/// 5-byte jump fits (too short and followed right away by other code).
PrologueAnalysis analyze_prologue(std::span<const uint8_t> code, uint64_t address, uint64_t size,
                                  uint64_t next_symbol, const std::string& name);

/// The 5 bytes of `jmp rel32` at `from` to `to`. Throws if the distance exceeds ±2 GiB.
std::vector<uint8_t> encode_jump(uint64_t from, uint64_t to);

/// The 16-byte trampoline slot `jmp *0(%rip); .quad to; int3; int3`.
std::vector<uint8_t> encode_trampoline(uint64_t to);

/// Whether `to` is reachable by a rel32 jump placed at `from`.
bool jump_reaches(uint64_t from, uint64_t to);

}  // namespace polus
