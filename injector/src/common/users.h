// common/users.h — naming users in messages.
#pragma once

#include <pwd.h>
#include <sys/types.h>

#include <string>

namespace polus {

/// The login name of `uid`, "" if it has none.
inline std::string user_name(uid_t uid) {
  struct passwd pw;
  struct passwd* found = nullptr;
  char buf[4096];
  if (getpwuid_r(uid, &pw, buf, sizeof buf, &found) != 0 || !found) return "";
  return found->pw_name;
}

/// "uid 1000 (alice)", or "uid 1000" for a uid without a name.
inline std::string describe_uid(uid_t uid) {
  std::string name = user_name(uid);
  return "uid " + std::to_string(uid) + (name.empty() ? "" : " (" + name + ")");
}

}  // namespace polus
