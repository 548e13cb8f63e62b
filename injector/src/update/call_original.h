// update/call_original.h — what a patch calls to run the version of a function it replaces.
//
// An OLD function's `resolved` slot receives an address the patch's code can call. For a
// function the patch does not redirect that is its entry. For one it redirects, the entry
// would lead straight back into the patch (the jump), so the slot receives code that runs the
// version being replaced instead: the original function through a stub in the scratch arena
// (its displaced first instructions, relocated, then a jump back past the jump:
// binary/relocate.h), or, when an older patch redirected the function already, that patch's
// new function. Stubs stay in the target for good (a thread may run one long after the patch
// is gone) and are reused by the next patch of the same function; rollback needs nothing of
// them, as the function's bytes after the jump never change.
#pragma once

#include "binary/prologue.h"
#include "binary/symbols.h"
#include "polus/agent_abi.h"
#include "process/borrowed_thread.h"
#include "update/target.h"

namespace polus {

/// The address an OLD function's `resolved` slot gets when this patch redirects `function`
/// (`analysis`: its prologue; `stacked_on`: the active redirect of an older patch, if any).
/// Throws Error(kUnsafeToPatch) when the original's first instructions cannot be moved.
uint64_t replaced_version_entry(TargetContext& target, BorrowedThread& thread, const Symbol& function,
                                const PrologueAnalysis& analysis, const polus_redirect_record* stacked_on);

}  // namespace polus
