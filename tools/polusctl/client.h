// tools/polusctl/client.h — polusctl's side of polusd: finding or starting it, and having it
// run a request.
#pragma once

#include "cli.h"

namespace polusctl {

/// Sends `request` to polusd (its socket: $POLUS_SOCKET, else the default one), starting
/// polusd first if none answers, and returns what the command printed and its exit status.
/// If polusd cannot be reached or started, says why (exit 1). With `timings`, the request asks
/// polusd for its own timestamps and `timings` gets them with the client's (bench/).
Output run_through_daemon(const Json& request, Json* timings = nullptr);

}  // namespace polusctl
