#include "binary/prologue.h"

#include "binary/disassembler.h"

#include <cstring>
#include <sstream>

#include "polus/error.h"
#include "common/format.h"

namespace polus {

namespace {

constexpr uint8_t kEndbr64[] = {0xf3, 0x0f, 0x1e, 0xfa};



}  // namespace

bool jump_reaches(uint64_t from, uint64_t to) {
  int64_t delta = static_cast<int64_t>(to - (from + kJumpLength));
  return delta >= INT32_MIN && delta <= INT32_MAX;
}

std::vector<uint8_t> encode_jump(uint64_t from, uint64_t to) {
  if (!jump_reaches(from, to)) {
    throw Error(ErrorCode::kInternal, "jump from " + hex(from) + " to " + hex(to) + " is beyond rel32 reach");
  }
  int32_t rel = static_cast<int32_t>(static_cast<int64_t>(to - (from + kJumpLength)));
  std::vector<uint8_t> bytes = {0xe9, 0, 0, 0, 0};
  std::memcpy(bytes.data() + 1, &rel, 4);
  return bytes;
}

std::vector<uint8_t> encode_trampoline(uint64_t to) {
  std::vector<uint8_t> bytes = {0xff, 0x25, 0, 0, 0, 0};  // jmp *0(%rip)
  bytes.resize(14);
  std::memcpy(bytes.data() + 6, &to, 8);
  bytes.push_back(0xcc);
  bytes.push_back(0xcc);
  return bytes;
}

PrologueAnalysis analyze_prologue(std::span<const uint8_t> code, uint64_t address, uint64_t size,
                                  uint64_t next_symbol, const std::string& name) {
  PrologueAnalysis result;
  result.function = address;
  result.function_size = size;
  result.has_endbr64 = code.size() >= 4 && std::memcmp(code.data(), kEndbr64, 4) == 0;
  // Keep endbr64 in place: an indirect call must still land on it under IBT.
  result.patch_site = address + (result.has_endbr64 ? 4 : 0);
  uint64_t jump_end = result.patch_site + kJumpLength;
  uint64_t function_end = address + size;

  Disassembler dis;
  if (jump_end > function_end) {
    // Too short for the jump: usable only if what follows, up to the next symbol, is the
    // alignment filler assemblers emit (nop of any length, int3).
    bool fits = jump_end <= address + code.size() && (next_symbol == 0 || jump_end <= next_symbol);
    const uint8_t* gap = code.data() + (function_end - address);
    size_t gap_left = code.size() - (function_end - address);
    uint64_t at = function_end;
    while (fits && at < jump_end) {
      fits = dis.next(&gap, &gap_left, &at) &&
             (dis.insn().id == X86_INS_NOP || dis.insn().id == X86_INS_INT3);
    }
    if (!fits) {
      throw Error(ErrorCode::kUnsafeToPatch,
                  "function '" + name + "' at " + hex(address) + " is " + std::to_string(size) +
                      " bytes long, too short for a 5-byte jump, and other code follows it directly; "
                      "patch its callers instead");
    }
    result.uses_padding = true;
  }

  const uint8_t* cursor = code.data();
  size_t left = code.size();
  uint64_t pc = address;
  bool decoded_all = true;
  while (left > 0 && pc < std::max(function_end, jump_end)) {
    uint64_t start = pc;
    if (!dis.next(&cursor, &left, &pc)) {
      decoded_all = false;
      break;
    }
    const cs_insn& insn = dis.insn();
    if (start > result.patch_site && start < jump_end) result.interior_boundaries.push_back(start);
    bool overwritten = start < jump_end && start + insn.size > result.patch_site;
    bool is_jump = dis.in_group(CS_GRP_JUMP);
    bool is_call = dis.in_group(CS_GRP_CALL);
    if (is_call && overwritten) result.call_in_overwritten = true;
    if (!is_jump && !is_call) continue;
    const cs_x86& x86 = insn.detail->x86;
    if (x86.op_count == 1 && x86.operands[0].type == X86_OP_IMM) {
      uint64_t target = static_cast<uint64_t>(x86.operands[0].imm);
      if (is_jump && target > result.patch_site && target < jump_end) {
        result.branch_into_overwritten = true;
        if (!result.requires_inactive_function) {
          result.requires_inactive_function = true;
          result.inactive_reason = "the instruction at " + hex(start) + " branches back into the bytes the jump replaces";
        }
      }
    } else if (is_jump && !result.requires_inactive_function) {
      result.requires_inactive_function = true;
      result.inactive_reason = "the function has an indirect jump at " + hex(start) + " (a jump table?)";
    }
  }
  if (!decoded_all && pc < jump_end) {
    throw Error(ErrorCode::kUnsafeToPatch, "cannot decode the first instructions of '" + name + "' at " +
                                               hex(address) + "; it is not code Polus can redirect");
  }
  if (!decoded_all && !result.requires_inactive_function) {
    result.requires_inactive_function = true;
    result.inactive_reason = "part of the function could not be decoded";
  }
  return result;
}

}  // namespace polus
