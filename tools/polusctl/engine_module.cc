// The polusctl-engine module's entry (engine_module.h): built into the shared object, with the
// run halves and the engine linked in.
#include "engine_module.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "run.h"

extern "C" __attribute__((visibility("default"))) void polusctl_engine_run(const polusctl::Json& request,
                                                                          polusctl::Output& out) {
  // Nothing thrown leaves the module: polusctl has a C++ runtime of its own (tools/CMakeLists.txt).
  try {
    if (!spdlog::get("polus")) spdlog::set_default_logger(spdlog::stderr_color_mt("polus"));
    out = polusctl::run_request(request);
  } catch (const std::exception& e) {
    out.err += std::string("polusctl: internal error: ") + e.what() + "\n";
    out.status = 1;
  } catch (...) {
    out.err += "polusctl: internal error\n";
    out.status = 1;
  }
  polusctl::end_progress_line();
}
