// tools/polusd/scope.h — which processes polusd looks after on its own.
//
// What a client names, polusd acts on (the caller's rights permitting). What polusd does
// unasked — taking up updates left in flight when it starts, applying stored patches to
// processes as they start — reaches every process on the host, unless $POLUSD_SCOPE_ROOT
// names a process: then only that process and its descendants. For a polusd that serves one
// container or one tenant's process tree, and for tests that must not touch each other's
// targets (make the root a child subreaper, prctl(PR_SET_CHILD_SUBREAPER), so that daemons
// started under it stay its descendants).
#pragma once

#include <sys/types.h>

namespace polusd {

/// Whether polusd may act on `pid` unasked: true for every process unless $POLUSD_SCOPE_ROOT
/// (read once) names one, then only for it and its descendants.
bool in_scope(pid_t pid);

}  // namespace polusd
