// update/patch_signature.h — checking a patch's detached signature before apply touches the
// target (the formats and the tools that make keys and signatures: polus/signing.h).
#pragma once

#include <string>

#include "polus/options.h"
#include "update/patch_file.h"

namespace polus {

/// Who signed a patch whose signature was good.
struct PatchSigner {
  std::string key_id;
  std::string key_file;  // the trusted public key file that verified it
};

/// Verifies GIVEN_PATH.sig against patch.bytes (the bytes read once and validated) with the
/// public keys in signature.trusted_keys. The directory and every key file in it must pass the
/// patch-file trust checks (owned by root or the caller, writable by nobody else). Throws
/// Error(kPermissionDenied) with a distinct message for: no signature file, a file that is no
/// signature, a key directory or key file that is missing, untrusted or malformed, a signature
/// by a key not in the directory, and a signature that does not match the bytes.
PatchSigner verify_patch_signature(const PatchDescription& patch, const std::string& given_path,
                                   const SignatureOptions& signature);

}  // namespace polus
