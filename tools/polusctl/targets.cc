// Which processes a command acts on, as options (targets.h; resolving them: targets_run.cc).
#include "targets.h"

#include <algorithm>

#include "commands.h"

namespace polusctl {

void add_target_options(CLI::App* sub, TargetArgs& args) {
  sub->add_option("--tree", args.trees, "process PID and all its descendants (a master and its workers; repeatable)")
      ->type_name("PID")->expected(1)->allow_extra_args(false)->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  sub->add_option("--exe", args.exes, "every process running the executable at PATH (repeatable)")->type_name("PATH")->expected(1)->allow_extra_args(false)->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  sub->add_option("--build-id", args.build_ids, "every process whose executable has build-id HEX (repeatable)")
      ->type_name("HEX")->expected(1)->allow_extra_args(false)->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
}

Json target_request(const std::vector<std::string>& pids, const TargetArgs& args) {
  Json t{{"pids", Json::array()}, {"trees", Json::array()}, {"exes", Json::array()}, {"build_ids", Json::array()}};
  for (const std::string& p : pids) t["pids"].push_back(parse_pid(p));
  for (const std::string& p : args.trees) t["trees"].push_back(parse_pid(p));
  for (const std::string& e : args.exes) t["exes"].push_back(absolute_path(e));
  for (std::string b : args.build_ids) {
    std::transform(b.begin(), b.end(), b.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (b.empty() || b.size() > 128 || b.size() % 2 || b.find_first_not_of("0123456789abcdef") != std::string::npos) {
      throw UsageError("--build-id needs an even number of hex digits, not '" + b + "'");
    }
    t["build_ids"].push_back(b);
  }
  if (t["pids"].empty() && t["trees"].empty() && t["exes"].empty() && t["build_ids"].empty()) {
    throw UsageError("no process given (PID, --tree PID, --exe PATH or --build-id HEX)");
  }
  return t;
}

}  // namespace polusctl
