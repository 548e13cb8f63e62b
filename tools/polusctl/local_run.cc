// Running a command in polusctl's own process: loading the polusctl-engine module
// (engine_module.h).
#include <dlfcn.h>

#include "engine_module.h"

namespace polusctl {

std::string engine_module_path() {
  // The build tree (the module beside polusctl), then an install at any prefix.
  return beside_this_program({"libpolusctl-engine.so", POLUS_ENGINE_FROM_SBIN}, POLUS_INSTALLED_ENGINE);
}

Output run_in_process(const Json& request) {
  const std::string path = engine_module_path();
  // RTLD_NOW: a module that does not fit this polusctl fails here, whole, not mid-command.
  void* module = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  using Run = void (*)(const Json&, Output&);
  Run run = module ? reinterpret_cast<Run>(dlsym(module, "polusctl_engine_run")) : nullptr;
  Output out;
  if (!run) {
    const char* why = dlerror();
    out.err = "polusctl: cannot load its engine module " + path + ": " + (why ? why : "no polusctl_engine_run in it") +
              " (reinstall polus; a command sent to polusd does not need it)\n";
    out.status = 1;
    return out;
  }
  run(request, out);
  return out;  // the module stays loaded until exit: its threads and handlers may outlive the call
}

}  // namespace polusctl
