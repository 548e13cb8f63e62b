// tools/polusctl/store.h — patches that stick: `apply --persist` keeps a copy of the patch in
// the store, keyed by the build-id of the executable it was applied to; polusd applies the
// stored patches to every process of that build it sees start (and at its own start).
//
// Layout: STORE/<build-id>/<seq>-<sha256 prefix>.so and .json ({"name","sha256","source",
// "stored_at_unix_ns"}); <seq> orders the patches of one build as they were applied. The store
// is root's (0700); a stored copy is what apply loads and what the record names, so rollback
// and finish find it.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "run.h"

namespace polusctl {

/// One stored patch.
struct StoredPatch {
  std::string build_id;
  std::string file;    // the stored copy (absolute)
  std::string name;    // the patch's name
  std::string sha256;
  std::string source;  // the path it was applied from
  uint64_t stored_at_unix_ns = 0;
};

/// Copies `patch` into `store` for processes running `build_id`, unless the same bytes are
/// stored for that build already; returns the stored copy's path and whether it is new.
/// Throws polus::Error(kInternal) when the store cannot be written.
std::pair<std::string, bool> store_patch(const std::string& store, const std::string& build_id, const std::string& patch);

/// Removes one stored copy (`file`, as store_patch returned it) and its description.
void unstore(const std::string& file);

/// The stored patches, every build or only `build_id`'s, each build's in the order applied.
std::vector<StoredPatch> list_stored(const std::string& store, const std::string& build_id = "");

/// Removes the stored patches of `build_id` whose name is `name` ("" = all of that build);
/// returns how many. Processes keep what is applied to them.
size_t remove_stored(const std::string& store, const std::string& build_id, const std::string& name);

/// Applies to `pid` every patch stored for its executable's build that its registry does not
/// list yet (by stored path), in order. Returns the names applied; throws the first failure.
std::vector<std::string> apply_stored(const std::string& store, pid_t pid, const polus::EngineOptions& options);

}  // namespace polusctl
