#include "binary/tail_calls.h"

#include <algorithm>

#include "binary/disassembler.h"

namespace polus {

std::vector<uint64_t> jump_targets_outside(std::span<const uint8_t> code, uint64_t address) {
  std::vector<uint64_t> targets;
  Disassembler disassembler;
  const uint8_t* cursor = code.data();
  size_t left = code.size();
  uint64_t at = address;
  const uint64_t end = address + code.size();
  while (left > 0 && disassembler.next(&cursor, &left, &at)) {
    if (!disassembler.in_group(CS_GRP_JUMP)) continue;
    const cs_x86& x86 = disassembler.insn().detail->x86;
    if (x86.op_count != 1 || x86.operands[0].type != X86_OP_IMM) continue;  // indirect: unknown
    const auto target = static_cast<uint64_t>(x86.operands[0].imm);
    if ((target < address || target >= end) && std::find(targets.begin(), targets.end(), target) == targets.end()) {
      targets.push_back(target);
    }
  }
  return targets;
}

std::pair<uint64_t, uint64_t> function_extent(const std::vector<uint64_t>& starts, uint64_t address) {
  auto after = std::upper_bound(starts.begin(), starts.end(), address);
  if (after == starts.begin() || after == starts.end()) return {0, 0};
  return {*std::prev(after), *after};
}

}  // namespace polus
