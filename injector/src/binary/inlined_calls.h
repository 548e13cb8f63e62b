// binary/inlined_calls.h — where the debug information shows a function inlined into others.
//
// A jump at a function's entry changes only the calls that reach its entry. Where gcc copied
// the function's body into a caller (inlining), that caller runs the old code whatever the
// jump says: a patch "applied" to such a function can have no effect at all. DWARF records
// each inlined copy as a DW_TAG_inlined_subroutine whose DW_AT_abstract_origin is the
// function's abstract instance — the DIE the out-of-line copy's own DW_AT_abstract_origin
// points to as well (or, for a function inlined everywhere, the only DIE with its name).
// Reading them tells which callers a patch must replace instead. Without DWARF (no -g and
// no debug file) nothing can be told and nothing is found.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "binary/symbols.h"

namespace polus {

/// A function that holds an inlined copy of another.
struct InlinedCall {
  std::string caller;        // its name as status prints it ("shop::Cart::total() const")
  uint64_t caller_address = 0;  // its entry (runtime), 0 if the DWARF gives none
  uint64_t copy_address = 0;    // where the inlined copy starts (runtime), 0 if unknown
};

/// What the debug information of `object` says about `function` (one of its symbols).
struct InliningReport {
  bool has_dwarf = false;            // false: the object and its debug file have no .debug_info
  std::vector<InlinedCall> callers;  // one entry per caller (not per inlined copy), in DIE order
};

/// Reads the DWARF of `object` (its debug file when it has one) for inlined copies of
/// `function`. Never throws for missing or malformed debug information (it is logged).
InliningReport find_inlined_calls(const ProcessSymbols& symbols, const LoadedObject& object, const Symbol& function);

}  // namespace polus
