// The polusctl-engine module's entry (engine_module.h): built into the shared object, with the
// run halves and the engine linked in.
#include "engine_module.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "run.h"

extern "C" __attribute__((visibility("default"))) void polusctl_engine_run(const polusctl::Json& request,
                                                                          polusctl::Output& out) {
  if (!spdlog::get("polus")) spdlog::set_default_logger(spdlog::stderr_color_mt("polus"));
  out = polusctl::run_request(request);
  polusctl::end_progress_line();
}
