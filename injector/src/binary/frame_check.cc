#include "binary/frame_check.h"

#include <algorithm>

#include "common/format.h"

namespace polus {

std::string describe_code_address(const ProcessSymbols& symbols, uint64_t address) {
  if (std::optional<Symbol> symbol = symbols.symbol_containing(RemoteAddr(address))) {
    uint64_t offset = address - symbol->address.address();
    return symbol->name + (offset ? "+" + hex(offset) : "");
  }
  if (const LoadedObject* object = symbols.object_containing(RemoteAddr(address))) {
    return basename_of(object->path) + "+" + hex(address - object->load_bias);
  }
  return "";
}

namespace {

const AddressRange* range_of(const std::vector<AddressRange>& ranges, uint64_t address) {
  for (const AddressRange& range : ranges) {
    if (range.contains(address)) return &range;
  }
  return nullptr;
}

std::string named(const ProcessSymbols& symbols, uint64_t address) {
  std::string name = describe_code_address(symbols, address);
  return name.empty() ? hex(address) : name + " (" + hex(address) + ")";
}

/// The stack words of `thread` in [from, to) that point into a range: the first one, as a hit
/// whose detail names the word, its offset and `why` the unwind could not account for it.
std::optional<RangeHit> scan_words(const ThreadSnapshot& thread, const std::vector<AddressRange>& ranges, uint64_t from,
                                   uint64_t to, const std::string& why, const ProcessSymbols& symbols) {
  const uint64_t base = thread.sp & ~7ull;
  const uint64_t top = base + thread.stack_words.size() * 8;
  // Words outside the snapshot are on another stack (a signal handler's alternate stack):
  // beyond what the snapshot holds, as stack_scan.h says; check the whole snapshot then.
  if (from < base || from >= top) from = base;
  to = std::min(std::max(to, from), top);
  for (uint64_t at = (from + 7) & ~7ull; at + 8 <= to; at += 8) {
    uint64_t word = thread.stack_words[(at - base) / 8];
    if (const AddressRange* range = range_of(ranges, word)) {
      return RangeHit{range, false,
                      "its stack holds " + named(symbols, word) + " at sp+" + hex(at - thread.sp) +
                          ", perhaps a stale return address in a dead slot: " + why};
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<RangeHit> thread_inside(const ThreadSnapshot& thread, const std::vector<AddressRange>& ranges,
                                      Unwinder& unwinder, ProcessMemory& memory, const ProcessSymbols& symbols) {
  if (const AddressRange* range = range_of(ranges, thread.pc)) {
    return RangeHit{range, true, "its pc is at " + named(symbols, thread.pc)};
  }
  // Every real frame's return address is a word of the live stack: none in any range, no
  // frame in any range.
  if (!thread_touches(thread, ranges)) return std::nullopt;

  UnwindResult stack = unwinder.unwind(memory, thread.regs);
  // The frames CFI computed, up to the first one without CFI: the walk goes on from there by
  // scanning, and what a scan finds may be a stale word taken for a return address, with
  // real frames above it. From that frame's sp on, and above the last sure step of a walk
  // that stopped early, the words themselves are all there is to go by.
  uint64_t unsure_from = 0;
  std::string why;
  for (size_t i = 0; i < stack.frames.size(); ++i) {
    const StackFrame& frame = stack.frames[i];
    // A return address points after the call: the call itself is what lies in the function.
    const uint64_t at = frame.interrupted ? frame.pc : frame.pc - 1;
    if (const AddressRange* range = range_of(ranges, at)) {
      return RangeHit{range, true, "frame #" + std::to_string(i) + " of its stack is " + named(symbols, frame.pc)};
    }
    if (frame.scanned_from != 0) {
      unsure_from = frame.scanned_from;
      why = "the unwind found no CFI for frame #" + std::to_string(i) + " at " + named(symbols, frame.pc) +
            " and cannot tell live return addresses above it from stale ones (" + stack.note + ")";
      break;
    }
  }
  if (unsure_from == 0 && !stack.complete) {
    unsure_from = thread.sp;
    if (stack.frames.size() >= 2 && stack.frames[stack.frames.size() - 2].cfa != 0) {
      unsure_from = stack.frames[stack.frames.size() - 2].cfa;
    }
    why = "the unwind stopped below it (" + (stack.note.empty() ? std::string("no reason given") : stack.note) + ")";
  }
  if (unsure_from != 0) return scan_words(thread, ranges, unsure_from, UINT64_MAX, why, symbols);
  return std::nullopt;
}

}  // namespace polus
