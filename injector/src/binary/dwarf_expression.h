// binary/dwarf_expression.h — DWARF expressions as CFI uses them (DW_CFA_def_cfa_expression,
// DW_CFA_expression, DW_CFA_val_expression), evaluated over one frame's registers.
//
// The unwinder (unwinder.h) needs them for PLT stubs, whose CFA expression depends on the pc,
// and for glibc's signal trampoline, whose register rules read the ucontext_t the kernel
// pushed. The evaluator supports the stack-machine operators such expressions use (literals
// and constants, breg, stack manipulation, arithmetic and comparisons, deref, skip and bra)
// and refuses everything else, with a reason, rather than guess.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace polus::unwind_detail {

// DWARF register numbers on x86-64 (System V psABI, figure 3.36).
constexpr int kRegCount = 17;  // rax rdx rcx rbx rsi rdi rbp rsp r8..r15, then 16 = return address
constexpr int kRsp = 7;
constexpr int kRip = 16;

/// A register set in DWARF numbering, with which values are known.
struct Registers {
  uint64_t value[kRegCount] = {};
  uint32_t valid = 0;
  bool has(int reg) const { return reg >= 0 && reg < kRegCount && ((valid >> reg) & 1u); }
  void set(int reg, uint64_t v) {
    value[reg] = v;
    valid |= 1u << reg;
  }
};

/// Where an expression's DW_OP_deref reads the target's memory from.
class ExpressionMemory {
 public:
  virtual ~ExpressionMemory() = default;
  /// Copies `size` bytes at target address `address` into `out`; false if they are unreadable.
  virtual bool read(uint64_t address, void* out, size_t size) = 0;
};

/// Reads an unsigned LEB128 number from `e` at `at`, advancing `at` past it. Bits beyond 64
/// are dropped. False if `e` ends before the number does.
bool read_uleb(const std::vector<uint8_t>& e, size_t& at, uint64_t& out);

/// Reads a signed LEB128 number from `e` at `at`, advancing `at` past it. False if `e` ends
/// before the number does.
bool read_sleb(const std::vector<uint8_t>& e, size_t& at, int64_t& out);

/// Evaluates a DWARF location expression over the registers of a frame (register 16 is the
/// frame's pc, which the PLT's CFA expression uses). `initial` is pushed first (the CFA, for
/// register rules). Returns the value on top of the stack at the end, or nullopt with `why`
/// on anything unsupported, malformed or unreadable.
std::optional<uint64_t> evaluate(const std::vector<uint8_t>& e, const Registers& regs, ExpressionMemory& memory,
                                 std::optional<uint64_t> initial, std::string& why);

}  // namespace polus::unwind_detail
