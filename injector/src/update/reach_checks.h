// update/reach_checks.h — does redirecting a function's entry reach all of its code?
//
// A jump at the entry of an old function changes what its callers run only if they reach
// that entry. Two things gcc does take callers elsewhere: copies of the function (a
// `.constprop`/`.isra` specialisation its callers call instead, a `.part` body that callers
// with the function's head inlined call directly), and inlining (the body copied into a
// caller, DW_TAG_inlined_subroutine in the DWARF). A patch that redirects the function then
// changes some calls and not others — or none, if every call was inlined — while Polus
// reports it applied. So apply refuses, naming the copies and callers the patch must cover
// instead, unless the operator knows better (--force: then it warns).
#pragma once

#include <string>
#include <vector>

#include "binary/symbols.h"

namespace polus {

/// Checks every function in `replaced` (the old functions a patch redirects, as resolved)
/// for copies gcc made that the patch does not replace too, and for callers the debug
/// information shows it inlined into. Throws Error(kUnsafeToPatch) naming them, or only
/// warns when `force`.
void check_copies_reached(const ProcessSymbols& symbols, const std::vector<Symbol>& replaced, bool force);

}  // namespace polus
