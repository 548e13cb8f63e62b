// polus/signing.h — signed patches: key pairs and detached signatures (public API).
//
// A fleet can require every patch to carry a detached Ed25519 signature (libsodium) by a key
// whose public half is installed in a trusted-keys directory (SignatureOptions in options.h;
// polusctl apply --require-signature). The signature covers exactly the bytes of the patch
// file, the same bytes apply validates and the target loads. File formats (one line each):
//   KEY.key      polus-ed25519-secret-key <base64 of libsodium's 64-byte secret key> <key id>
//   KEY.pub      polus-ed25519-public-key <base64 of the 32-byte public key> <comment>
//   PATCH.so.sig polus-ed25519-signature <key id> <base64 of the 64-byte signature>
// The key id is the first 8 bytes of the SHA-256 of the public key, in hex.
#pragma once

#include <string>

namespace polus {

struct SigningKey {
  std::string secret_path;  // BASE.key, mode 0600: keep it off the machines that apply patches
  std::string public_path;  // BASE.pub: install it in the trusted-keys directory
  std::string key_id;
};

/// Makes a new Ed25519 key pair: BASE.key (the secret key, mode 0600) and BASE.pub (the public
/// key, mode 0644, with `comment`). Never overwrites a file. Throws Error(kInternal) saying
/// what failed (kPermissionDenied when a file cannot be created there).
SigningKey generate_signing_key(const std::string& base, const std::string& comment);

/// Signs the patch at `patch_path` with the secret key at `key_path` and writes
/// PATCH_PATH.sig (replacing an older one). The patch is read once through the same trust
/// checks and validation as apply, and the signature covers exactly those bytes; the key file
/// must be the caller's or root's, readable and writable by its owner only. Returns the key id.
std::string sign_patch(const std::string& key_path, const std::string& patch_path);

}  // namespace polus
