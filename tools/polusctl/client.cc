// polusctl's side of polusd (client.h). Until polusd serves requests, run them here.
#include "client.h"

namespace polusctl {

Output run_through_daemon(const Json& request) { return run_request(request); }

}  // namespace polusctl
