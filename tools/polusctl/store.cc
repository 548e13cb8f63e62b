// Patches that stick: the store (store.h).
#include "store.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

namespace polusctl {

namespace {

[[noreturn]] void store_error(const std::string& what) {
  throw polus::Error(polus::ErrorCode::kInternal, what + ": " + std::strerror(errno));
}

void make_dir(const std::string& path) {
  if (::mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) store_error("cannot make the store directory " + path);
}

std::vector<std::string> entries(const std::string& dir) {
  std::vector<std::string> names;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] != '.') names.emplace_back(e->d_name);
    }
    closedir(d);
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

std::pair<std::string, bool> store_patch(const std::string& store, const std::string& build_id, const std::string& patch) {
  polus::PatchFileInfo info = polus::describe_patch_file(patch, polus::EngineOptions{});
  for (const StoredPatch& s : list_stored(store, build_id)) {
    if (s.sha256 == info.sha256) return {s.file, false};  // stored already
  }
  make_dir(store);
  const std::string dir = store + "/" + build_id;
  make_dir(dir);
  const size_t seq = entries(dir).size() / 2 + 1;
  char prefix[32];
  std::snprintf(prefix, sizeof prefix, "%04zu", seq);
  const std::string base = dir + "/" + prefix + "-" + info.sha256.substr(0, 16);
  {
    std::ifstream in(patch, std::ios::binary);
    std::ofstream out(base + ".so.tmp", std::ios::binary | std::ios::trunc);
    out << in.rdbuf();
    if (!out) store_error("cannot write " + base + ".so");
  }
  ::chmod((base + ".so.tmp").c_str(), 0600);
  if (::rename((base + ".so.tmp").c_str(), (base + ".so").c_str()) != 0) store_error("cannot store " + base + ".so");
  const uint64_t now = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch()).count());
  std::ofstream meta(base + ".json", std::ios::trunc);
  meta << Json{{"name", info.name}, {"sha256", info.sha256}, {"source", patch}, {"stored_at_unix_ns", now}}.dump() << "\n";
  if (!meta) store_error("cannot write " + base + ".json");
  return {base + ".so", true};
}

void unstore(const std::string& file) {
  ::unlink((file.substr(0, file.size() - 3) + ".json").c_str());  // first: without it, the copy is no stored patch
  ::unlink(file.c_str());
}

std::vector<StoredPatch> list_stored(const std::string& store, const std::string& build_id) {
  std::vector<StoredPatch> found;
  std::vector<std::string> builds = build_id.empty() ? entries(store) : std::vector<std::string>{build_id};
  for (const std::string& build : builds) {
    for (const std::string& name : entries(store + "/" + build)) {
      if (name.size() < 5 || name.substr(name.size() - 5) != ".json") continue;
      const std::string base = store + "/" + build + "/" + name.substr(0, name.size() - 5);
      try {
        Json meta = Json::parse(read_file(base + ".json"));
        found.push_back({build, base + ".so", meta.value("name", ""), meta.value("sha256", ""), meta.value("source", ""),
                         meta.value("stored_at_unix_ns", uint64_t{0})});
      } catch (const std::exception&) {
        // A half-written entry (its writer died): not a stored patch.
      }
    }
  }
  return found;
}

size_t remove_stored(const std::string& store, const std::string& build_id, const std::string& name) {
  size_t removed = 0;
  for (const StoredPatch& s : list_stored(store, build_id)) {
    if (!name.empty() && s.name != name) continue;
    unstore(s.file);
    ++removed;
  }
  ::rmdir((store + "/" + build_id).c_str());  // only if empty
  return removed;
}

std::vector<std::string> apply_stored(const std::string& store, pid_t pid, const polus::EngineOptions& options) {
  std::vector<std::string> applied;
  const std::string build_id = polus::executable_build_id(pid);
  if (build_id.empty()) return applied;
  std::vector<StoredPatch> stored = list_stored(store, build_id);
  if (stored.empty()) return applied;
  polus::ProcessStatus status = polus::read_status(pid);
  for (const StoredPatch& s : stored) {
    bool present = std::any_of(status.patches.begin(), status.patches.end(),
                               [&](const polus::PatchInfo& p) { return p.path == s.file; });
    if (present) continue;
    polus::apply_patch(pid, s.file, options);
    applied.push_back(s.name);
  }
  return applied;
}

}  // namespace polusctl
