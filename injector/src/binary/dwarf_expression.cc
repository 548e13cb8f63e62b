#include "binary/dwarf_expression.h"

#include <cstring>
#include <utility>

#include <libdwarf/dwarf.h>

#include "common/format.h"

namespace polus::unwind_detail {

namespace {

template <typename T>
bool read_fixed(const std::vector<uint8_t>& e, size_t& at, T& out) {
  if (at + sizeof(T) > e.size()) return false;
  std::memcpy(&out, e.data() + at, sizeof(T));
  at += sizeof(T);
  return true;
}

}  // namespace

bool read_uleb(const std::vector<uint8_t>& e, size_t& at, uint64_t& out) {
  out = 0;
  for (unsigned shift = 0; at < e.size(); shift += 7) {
    uint8_t byte = e[at++];
    if (shift < 64) out |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if (!(byte & 0x80)) return true;
  }
  return false;
}

bool read_sleb(const std::vector<uint8_t>& e, size_t& at, int64_t& out) {
  uint64_t result = 0;
  unsigned shift = 0;
  uint8_t byte = 0;
  do {
    if (at >= e.size()) return false;
    byte = e[at++];
    if (shift < 64) result |= static_cast<uint64_t>(byte & 0x7f) << shift;
    shift += 7;
  } while (byte & 0x80);
  if (shift < 64 && (byte & 0x40)) result |= ~0ull << shift;
  out = static_cast<int64_t>(result);
  return true;
}

std::optional<uint64_t> evaluate(const std::vector<uint8_t>& e, const Registers& regs, ExpressionMemory& memory,
                                 std::optional<uint64_t> initial, std::string& why) {
  std::vector<uint64_t> stack;
  if (initial) stack.push_back(*initial);
  auto need = [&](size_t n) {
    if (stack.size() >= n) return true;
    why = "DWARF expression underflows its stack";
    return false;
  };
  auto pop = [&]() {
    uint64_t v = stack.back();
    stack.pop_back();
    return v;
  };
  size_t at = 0;
  for (int steps = 0; at < e.size(); ++steps) {
    if (steps > 1000 || stack.size() > 64) {
      why = "DWARF expression too long";
      return std::nullopt;
    }
    uint8_t op = e[at++];
    if (op >= DW_OP_lit0 && op <= DW_OP_lit31) {
      stack.push_back(op - DW_OP_lit0);
      continue;
    }
    if ((op >= DW_OP_breg0 && op <= DW_OP_breg31) || op == DW_OP_bregx) {
      uint64_t reg = op - DW_OP_breg0;
      if (op == DW_OP_bregx && !read_uleb(e, at, reg)) break;
      int64_t offset = 0;
      if (!read_sleb(e, at, offset)) break;
      if (!regs.has(static_cast<int>(reg))) {
        why = "DWARF expression uses register " + std::to_string(reg) + ", whose value is unknown";
        return std::nullopt;
      }
      stack.push_back(regs.value[reg] + static_cast<uint64_t>(offset));
      continue;
    }
    switch (op) {
      case DW_OP_nop: break;
      case DW_OP_addr: {
        uint64_t v;
        if (!read_fixed(e, at, v)) goto truncated;
        stack.push_back(v);
        break;
      }
      case DW_OP_const1u: { uint8_t v; if (!read_fixed(e, at, v)) goto truncated; stack.push_back(v); break; }
      case DW_OP_const1s: { int8_t v; if (!read_fixed(e, at, v)) goto truncated; stack.push_back(static_cast<uint64_t>(int64_t{v})); break; }
      case DW_OP_const2u: { uint16_t v; if (!read_fixed(e, at, v)) goto truncated; stack.push_back(v); break; }
      case DW_OP_const2s: { int16_t v; if (!read_fixed(e, at, v)) goto truncated; stack.push_back(static_cast<uint64_t>(int64_t{v})); break; }
      case DW_OP_const4u: { uint32_t v; if (!read_fixed(e, at, v)) goto truncated; stack.push_back(v); break; }
      case DW_OP_const4s: { int32_t v; if (!read_fixed(e, at, v)) goto truncated; stack.push_back(static_cast<uint64_t>(int64_t{v})); break; }
      case DW_OP_const8u:
      case DW_OP_const8s: { uint64_t v; if (!read_fixed(e, at, v)) goto truncated; stack.push_back(v); break; }
      case DW_OP_constu: { uint64_t v; if (!read_uleb(e, at, v)) goto truncated; stack.push_back(v); break; }
      case DW_OP_consts: { int64_t v; if (!read_sleb(e, at, v)) goto truncated; stack.push_back(static_cast<uint64_t>(v)); break; }
      case DW_OP_plus_uconst: {
        uint64_t v;
        if (!read_uleb(e, at, v) || !need(1)) goto fail;
        stack.back() += v;
        break;
      }
      case DW_OP_dup: if (!need(1)) goto fail; stack.push_back(stack.back()); break;
      case DW_OP_drop: if (!need(1)) goto fail; stack.pop_back(); break;
      case DW_OP_over: if (!need(2)) goto fail; stack.push_back(stack[stack.size() - 2]); break;
      case DW_OP_pick: {
        uint8_t index;
        if (!read_fixed(e, at, index) || !need(size_t{index} + 1)) goto fail;
        stack.push_back(stack[stack.size() - 1 - index]);
        break;
      }
      case DW_OP_swap: if (!need(2)) goto fail; std::swap(stack[stack.size() - 1], stack[stack.size() - 2]); break;
      case DW_OP_rot: {
        if (!need(3)) goto fail;
        size_t n = stack.size();
        uint64_t top = stack[n - 1];
        stack[n - 1] = stack[n - 2];
        stack[n - 2] = stack[n - 3];
        stack[n - 3] = top;
        break;
      }
      case DW_OP_deref:
      case DW_OP_deref_size: {
        uint8_t size = 8;
        if (op == DW_OP_deref_size && !read_fixed(e, at, size)) goto truncated;
        if (!need(1) || size == 0 || size > 8) goto fail;
        uint64_t address = pop(), value = 0;
        if (!memory.read(address, &value, size)) {
          why = "cannot read " + hex(address) + " for a DWARF expression";
          return std::nullopt;
        }
        stack.push_back(value);
        break;
      }
      case DW_OP_abs: {
        if (!need(1)) goto fail;
        auto v = static_cast<int64_t>(stack.back());
        stack.back() = static_cast<uint64_t>(v < 0 ? -v : v);
        break;
      }
      case DW_OP_neg: if (!need(1)) goto fail; stack.back() = ~stack.back() + 1; break;
      case DW_OP_not: if (!need(1)) goto fail; stack.back() = ~stack.back(); break;
      case DW_OP_and: case DW_OP_or: case DW_OP_xor: case DW_OP_plus: case DW_OP_minus:
      case DW_OP_mul: case DW_OP_div: case DW_OP_mod: case DW_OP_shl: case DW_OP_shr: case DW_OP_shra:
      case DW_OP_eq: case DW_OP_ne: case DW_OP_lt: case DW_OP_le: case DW_OP_gt: case DW_OP_ge: {
        if (!need(2)) goto fail;
        uint64_t b = pop(), a = pop();
        auto sa = static_cast<int64_t>(a), sb = static_cast<int64_t>(b);
        uint64_t r = 0;
        switch (op) {
          case DW_OP_and: r = a & b; break;
          case DW_OP_or: r = a | b; break;
          case DW_OP_xor: r = a ^ b; break;
          case DW_OP_plus: r = a + b; break;
          case DW_OP_minus: r = a - b; break;
          case DW_OP_mul: r = a * b; break;
          case DW_OP_div:
            if (sb == 0) { why = "DWARF expression divides by zero"; return std::nullopt; }
            r = static_cast<uint64_t>(sa / sb);
            break;
          case DW_OP_mod:
            if (b == 0) { why = "DWARF expression divides by zero"; return std::nullopt; }
            r = a % b;
            break;
          case DW_OP_shl: r = b >= 64 ? 0 : a << b; break;
          case DW_OP_shr: r = b >= 64 ? 0 : a >> b; break;
          case DW_OP_shra: r = static_cast<uint64_t>(b >= 64 ? (sa < 0 ? -1 : 0) : sa >> b); break;
          case DW_OP_eq: r = sa == sb; break;
          case DW_OP_ne: r = sa != sb; break;
          case DW_OP_lt: r = sa < sb; break;
          case DW_OP_le: r = sa <= sb; break;
          case DW_OP_gt: r = sa > sb; break;
          case DW_OP_ge: r = sa >= sb; break;
          default: break;
        }
        stack.push_back(r);
        break;
      }
      case DW_OP_skip:
      case DW_OP_bra: {
        int16_t delta;
        if (!read_fixed(e, at, delta)) goto truncated;
        bool jump = true;
        if (op == DW_OP_bra) {
          if (!need(1)) goto fail;
          jump = pop() != 0;
        }
        if (jump) {
          auto target = static_cast<int64_t>(at) + delta;
          if (target < 0 || target > static_cast<int64_t>(e.size())) {
            why = "DWARF expression branches out of itself";
            return std::nullopt;
          }
          at = static_cast<size_t>(target);
        }
        break;
      }
      default:
        why = "unsupported DWARF expression operator " + hex(op);
        return std::nullopt;
    }
  }
  if (stack.empty()) {
    why = "DWARF expression leaves no value";
    return std::nullopt;
  }
  return stack.back();
truncated:
  why = "truncated DWARF expression";
  return std::nullopt;
fail:
  if (why.empty()) why = "malformed DWARF expression";
  return std::nullopt;
}

}  // namespace polus::unwind_detail
