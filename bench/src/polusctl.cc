#include "polusctl.h"

#include <cstdlib>
#include <stdexcept>

#include <spdlog/spdlog.h>

#include "util.h"

namespace bench {

namespace {

CliOp run(const Paths& paths, std::vector<std::string> args) {
  args.insert(args.begin(), paths.polusctl);
  args.push_back("--json");
  if (args[1] != "status") args.push_back("--no-daemon");  // the engine's own cost, not polusd's
  ProcResult r = run_process(args, 60s);
  CliOp op;
  op.wall_ns = r.wall_ns;
  op.ok = r.ok() && r.out.find("\"result\":\"error\"") == std::string::npos;
  if (!op.ok) {
    op.error = json_string(r.out, "message").value_or(r.describe());
    return op;
  }
  op.engine_ns = json_uint(r.out, "apply_wall_ns").value_or(0);
  op.pause_ns = json_uint(r.out, "pause_ns").value_or(0);
  op.functions = count_occurrences(r.out, "\"old\":");
  op.trampoline = r.out.find("\"trampoline\":\"0x") != std::string::npos;
  op.state = json_string(r.out, "state").value_or("");
  if (auto hex = json_string(r.out, "new_address")) op.new_address = std::strtoull(hex->c_str(), nullptr, 16);
  return op;
}

}  // namespace

CliOp polusctl_apply(const Paths& paths, pid_t pid, const std::string& patch) {
  return run(paths, {"apply", std::to_string(pid), patch, "--agent", paths.agent});
}

CliOp polusctl_rollback(const Paths& paths, pid_t pid) {
  return run(paths, {"rollback", std::to_string(pid), "--agent", paths.agent});
}

CliOp polusctl_status(const Paths& paths, pid_t pid) { return run(paths, {"status", std::to_string(pid)}); }

namespace {
int retries = 0;
std::string first_retry_error;

template <typename F>
CliOp with_retry(const std::string& what, F run) {
  CliOp op = run();
  if (op.ok) return op;
  spdlog::warn("{} failed ({}); retrying once", what, op.error);
  if (retries++ == 0) first_retry_error = what + ": " + op.error;
  sleep_ms(100);
  op = run();
  if (!op.ok) throw std::runtime_error(what + ": " + op.error);
  return op;
}
}  // namespace

CliOp must_apply(const Paths& paths, pid_t pid, const std::string& patch) {
  return with_retry("polusctl apply " + std::to_string(pid) + " " + patch,
                    [&] { return polusctl_apply(paths, pid, patch); });
}

CliOp must_rollback(const Paths& paths, pid_t pid) {
  return with_retry("polusctl rollback " + std::to_string(pid), [&] { return polusctl_rollback(paths, pid); });
}

int polusctl_retries() { return retries; }
std::string polusctl_first_retry_error() { return first_retry_error; }

}  // namespace bench
