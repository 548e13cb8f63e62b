// polusctl keygen and polusctl sign, their runs (cmd_sign.cc parses them); in polusctl's own
// process, as the user who runs it: the secret key never travels to polusd.
#include "polus/signing.h"
#include "render.h"
#include "run.h"

namespace polusctl {

void run_keygen(const Json& request, Output& out) {
  polus::SigningKey key = polus::generate_signing_key(request["base"].get<std::string>(), request["comment"].get<std::string>());
  if (request.value("json", false)) {
    out.out += Json{{"result", "ok"}, {"key_id", key.key_id}, {"secret_key", key.secret_path}, {"public_key", key.public_path}}
                   .dump() + "\n";
    return;
  }
  out.out += format("key %s: secret key %s (keep it where patches are built, not where they are applied), public key %s "
                    "(install it in the trusted-keys directory, e.g. /etc/polus/trusted-keys/)\n",
                    key.key_id.c_str(), key.secret_path.c_str(), key.public_path.c_str());
}

void run_sign(const Json& request, Output& out) {
  const std::string patch = request["patch"].get<std::string>();
  std::string key_id = polus::sign_patch(request["key"].get<std::string>(), patch);
  if (request.value("json", false)) {
    out.out += Json{{"result", "ok"}, {"key_id", key_id}, {"signature", patch + ".sig"}}.dump() + "\n";
    return;
  }
  out.out += format("signed %s with key %s: %s.sig\n", patch.c_str(), key_id.c_str(), patch.c_str());
}

}  // namespace polusctl
