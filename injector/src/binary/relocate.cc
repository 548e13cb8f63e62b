#include "binary/relocate.h"

#include <cstring>

#include "binary/disassembler.h"
#include "binary/prologue.h"
#include "common/format.h"
#include "polus/error.h"

namespace polus {

namespace {

constexpr uint8_t kEndbr64[] = {0xf3, 0x0f, 0x1e, 0xfa};

bool fits_rel32(int64_t value) { return value >= INT32_MIN && value <= INT32_MAX; }

void append_rel32(std::vector<uint8_t>& out, int64_t value) {
  int32_t rel = static_cast<int32_t>(value);
  uint8_t bytes[4];
  std::memcpy(bytes, &rel, 4);
  out.insert(out.end(), bytes, bytes + 4);
}

}  // namespace

std::vector<uint8_t> build_original_stub(std::span<const uint8_t> code, uint64_t patch_site, bool with_endbr64,
                                         uint64_t stub, const std::string& name) {
  std::vector<uint8_t> out;
  out.reserve(kMaxOriginalStubBytes);
  if (with_endbr64) out.assign(std::begin(kEndbr64), std::end(kEndbr64));
  auto refuse = [&](uint64_t at, const std::string& why) {
    throw Error(ErrorCode::kUnsafeToPatch, "the original of '" + name + "' cannot be called from the patch: its "
                                           "instruction at " + hex(at) + ", which the jump displaces, " + why +
                                           "; replace the function whole, without calling the old one");
  };

  // First pass: how far the displaced instructions reach.
  Disassembler dis;
  std::vector<std::pair<uint64_t, size_t>> instructions;  // address, size
  {
    const uint8_t* cursor = code.data();
    size_t left = code.size();
    uint64_t pc = patch_site;
    while (pc < patch_site + kJumpLength) {
      uint64_t start = pc;
      if (left == 0 || !dis.next(&cursor, &left, &pc)) refuse(start, "cannot be decoded");
      instructions.emplace_back(start, dis.insn().size);
    }
  }
  const uint64_t displaced_end = instructions.back().first + instructions.back().second;

  const uint8_t* cursor = code.data();
  size_t left = code.size();
  uint64_t pc = patch_site;
  for (size_t i = 0; i < instructions.size(); ++i) {
    const uint64_t start = pc;
    dis.next(&cursor, &left, &pc);
    const cs_insn& insn = dis.insn();
    const cs_x86& x86 = insn.detail->x86;
    const uint64_t here = stub + out.size();  // where this instruction goes
    const bool is_jump = dis.in_group(CS_GRP_JUMP);
    const bool is_call = dis.in_group(CS_GRP_CALL);

    // (capstone does not count these among the jumps.)
    if (insn.id == X86_INS_LOOP || insn.id == X86_INS_LOOPE || insn.id == X86_INS_LOOPNE || insn.id == X86_INS_JRCXZ ||
        insn.id == X86_INS_JECXZ) {
      refuse(start, "is " + std::string(insn.mnemonic) + ", which has no 32-bit form");
    }
    if ((is_jump || is_call) && x86.op_count == 1 && x86.operands[0].type == X86_OP_IMM) {
      const auto target = static_cast<uint64_t>(x86.operands[0].imm);
      if (target >= patch_site && target < displaced_end) refuse(start, "branches into the displaced bytes");
      if (is_call) {
        out.push_back(0xe8);
      } else if (insn.id == X86_INS_JMP) {
        out.push_back(0xe9);
      } else {
        // jcc: the condition is the low nibble of 7x (rel8) or 0f 8x (rel32).
        uint8_t condition = x86.opcode[0] == 0x0f ? (x86.opcode[1] & 0x0f) : (x86.opcode[0] & 0x0f);
        out.push_back(0x0f);
        out.push_back(static_cast<uint8_t>(0x80 | condition));
      }
      const int64_t rel = static_cast<int64_t>(target - (stub + out.size() + 4));
      if (!fits_rel32(rel)) refuse(start, "branches to " + hex(target) + ", beyond ±2 GiB of the stub");
      append_rel32(out, rel);
      continue;
    }
    // Anything else runs the same anywhere, but for a rip-relative operand (`jmp *x(%rip)`
    // included), whose displacement is adjusted to the new place.
    std::vector<uint8_t> bytes(insn.bytes, insn.bytes + insn.size);
    bool rip_relative = false;
    for (uint8_t op = 0; op < x86.op_count; ++op) {
      if (x86.operands[op].type == X86_OP_MEM && x86.operands[op].mem.base == X86_REG_RIP) rip_relative = true;
    }
    if (rip_relative) {
      if (x86.encoding.disp_offset == 0 || x86.encoding.disp_size != 4) refuse(start, "has a rip-relative operand Polus cannot re-encode");
      const uint64_t absolute = start + insn.size + static_cast<uint64_t>(x86.disp);
      const int64_t disp = static_cast<int64_t>(absolute - (here + insn.size));
      if (!fits_rel32(disp)) refuse(start, "refers to " + hex(absolute) + ", beyond ±2 GiB of the stub");
      int32_t value = static_cast<int32_t>(disp);
      std::memcpy(bytes.data() + x86.encoding.disp_offset, &value, 4);
    }
    out.insert(out.end(), bytes.begin(), bytes.end());
  }

  // Back into the function, after the displaced instructions.
  const uint64_t from = stub + out.size();
  if (jump_reaches(from, displaced_end)) {
    std::vector<uint8_t> jump = encode_jump(from, displaced_end);
    out.insert(out.end(), jump.begin(), jump.end());
  } else {
    std::vector<uint8_t> jump = encode_trampoline(displaced_end);
    out.insert(out.end(), jump.begin(), jump.begin() + 14);
  }
  return out;
}

}  // namespace polus
