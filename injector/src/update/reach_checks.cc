#include "update/reach_checks.h"

#include <algorithm>

#include <spdlog/spdlog.h>

#include "binary/inlined_calls.h"
#include "common/format.h"
#include "polus/error.h"

namespace polus {

namespace {

constexpr size_t kCallersListed = 12;

std::string list_callers(const std::vector<InlinedCall>& callers) {
  std::string text;
  for (size_t i = 0; i < callers.size() && i < kCallersListed; ++i) {
    text += (i ? ", " : "") + callers[i].caller;
    if (callers[i].caller_address) text += " at " + hex(callers[i].caller_address);
  }
  if (callers.size() > kCallersListed) text += " and " + std::to_string(callers.size() - kCallersListed) + " more";
  return text;
}

}  // namespace

void check_copies_reached(const ProcessSymbols& symbols, const std::vector<Symbol>& replaced, bool force) {
  std::vector<std::string> problems;
  auto replaced_too = [&](const Symbol& s) {
    return std::any_of(replaced.begin(), replaced.end(), [&](const Symbol& r) { return r.address == s.address; });
  };
  for (const Symbol& function : replaced) {
    const std::string name = function.qualified_name();
    std::string copies;
    for (const auto& [copy, clone] : symbols.clones_of(function)) {
      if (clone.kind == CloneKind::kColdPart || clone.kind == CloneKind::kSameFunction || replaced_too(copy)) continue;
      copies += (copies.empty() ? "" : "; ") + copy.name + " at " + hex(copy.address.address()) + ", " +
                describe_clone(clone);
    }
    if (!copies.empty()) {
      problems.push_back(name + " has copies gcc made, which callers reach without passing its entry (" + copies +
                         "): replace each copy as well, naming it exactly with a new function of the copy's own "
                         "parameters, or replace the callers");
    }
    const LoadedObject* object = symbols.object_containing(function.address);
    if (!object) continue;
    InliningReport inlining = find_inlined_calls(symbols, *object, function);
    std::vector<InlinedCall> callers;
    for (const InlinedCall& call : inlining.callers) {
      bool covered = std::any_of(replaced.begin(), replaced.end(),
                                 [&](const Symbol& r) { return call.caller_address && r.address.address() == call.caller_address; });
      if (!covered) callers.push_back(call);
    }
    if (!callers.empty()) {
      problems.push_back(name + " is inlined into " + std::to_string(callers.size()) + " function(s) (" +
                         list_callers(callers) + "), which run their own copy of its old code whatever its entry says: "
                         "the patch must replace those callers too");
    }
  }
  if (problems.empty()) return;
  std::string message;
  for (const std::string& problem : problems) message += (message.empty() ? "" : "; ") + problem;
  if (force) {
    spdlog::warn("applying anyway (--force): {}", message);
    return;
  }
  throw Error(ErrorCode::kUnsafeToPatch,
              "the patch would not reach all the code it replaces: " + message +
                  ". The target is unchanged; --force applies it all the same, for a patch whose effect only the "
                  "calls through the entry need");
}

}  // namespace polus
