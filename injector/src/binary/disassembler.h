// binary/disassembler.h — capstone's x86-64 disassembler, one instruction at a time, with
// operand details (for prologue analysis, tail-call discovery and relocating instructions).
// The library is loaded on first use (disassembler.cc says why).
#pragma once

#include <capstone/capstone.h>

#include <cstddef>
#include <cstdint>

namespace polus {

class Disassembler {
 public:
  /// Throws Error(kInternal) if capstone cannot be opened.
  Disassembler();
  ~Disassembler();
  Disassembler(const Disassembler&) = delete;
  Disassembler& operator=(const Disassembler&) = delete;

  /// Decodes one instruction at `*code`, advancing the cursor; false on undecodable bytes.
  bool next(const uint8_t** code, size_t* size, uint64_t* address);
  /// The instruction last decoded.
  const cs_insn& insn() const { return *insn_; }
  /// Whether the instruction last decoded is in capstone group `group` (CS_GRP_JUMP...).
  bool in_group(uint8_t group) const;

 private:
  csh handle_ = 0;
  cs_insn* insn_ = nullptr;
};

}  // namespace polus
