// polusctl keygen and polusctl sign, their options (their runs: run_sign.cc): the key pairs and
// detached signatures of signed patches (polus/signing.h). Both run in polusctl's own process, as
// the user who runs it: the secret key never travels to polusd.
#include <unistd.h>

#include "cli.h"
#include "commands.h"

namespace polusctl {

namespace {

struct SignArgs {
  std::string base;     // keygen: BASE
  std::string comment;  // keygen
  std::string key;      // sign: BASE.key
  std::string patch;    // sign
  bool json = false;
  bool verbose = false;
};

}  // namespace

std::function<Json()> add_keygen(CLI::App& app) {
  auto args = std::make_shared<SignArgs>();
  CLI::App* sub = app.add_subcommand("keygen", "make a signing key pair: BASE.key (secret) and BASE.pub");
  sub->add_option("BASE", args->base, "path of the key pair without its .key/.pub ending")->required();
  sub->add_option("--comment", args->comment, "comment in BASE.pub (default: uid N@HOST)")->type_name("TEXT");
  add_output_flags(sub, args->json, args->verbose);
  return [args] {
    std::string comment = args->comment;
    if (comment.empty()) {
      char host[256] = "";
      gethostname(host, sizeof host - 1);
      comment = "uid " + std::to_string(getuid()) + "@" + host;
    }
    return Json{{"command", "keygen"}, {"json", args->json}, {"verbose", args->verbose},
                {"base", absolute_path(args->base)}, {"comment", comment}};
  };
}

std::function<Json()> add_sign(CLI::App& app) {
  auto args = std::make_shared<SignArgs>();
  CLI::App* sub = app.add_subcommand("sign", "write PATCH.so.sig, an Ed25519 signature of the patch");
  sub->add_option("--key", args->key, "the secret key (BASE.key, made by polusctl keygen)")->type_name("BASE.key");
  sub->add_option("PATCH", args->patch, "the patch file")->required();
  add_output_flags(sub, args->json, args->verbose);
  return [args] {
    if (args->key.empty()) throw UsageError("sign needs --key BASE.key (made by polusctl keygen)");
    return Json{{"command", "sign"}, {"json", args->json}, {"verbose", args->verbose},
                {"key", absolute_path(args->key)}, {"patch", absolute_path(args->patch)}};
  };
}

}  // namespace polusctl
