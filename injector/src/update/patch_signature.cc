// Detached Ed25519 signatures over a patch's exact bytes (libsodium), and the key files
// behind them. Formats: polus/signing.h.
#include "update/patch_signature.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <sstream>
#include <vector>

#include <spdlog/spdlog.h>

#include "polus/error.h"
#include "polus/signing.h"
#include "update/patch_trust.h"

namespace polus {

namespace {

constexpr const char* kSecretTag = "polus-ed25519-secret-key";
constexpr const char* kPublicTag = "polus-ed25519-public-key";
constexpr const char* kSignatureTag = "polus-ed25519-signature";
constexpr size_t kMaxLine = 4096;

void init_sodium() {
  if (sodium_init() < 0) throw Error(ErrorCode::kInternal, "libsodium could not initialise (sodium_init failed)");
}

std::string to_base64(const unsigned char* bytes, size_t size) {
  std::string out(sodium_base64_encoded_len(size, sodium_base64_VARIANT_ORIGINAL), '\0');
  sodium_bin2base64(out.data(), out.size(), bytes, size, sodium_base64_VARIANT_ORIGINAL);
  out.resize(std::strlen(out.c_str()));
  return out;
}

/// Exactly `size` bytes from base64 `text`, or false.
bool from_base64(const std::string& text, unsigned char* out, size_t size) {
  size_t length = 0;
  if (sodium_base642bin(out, size, text.data(), text.size(), nullptr, &length, nullptr, sodium_base64_VARIANT_ORIGINAL) != 0) {
    return false;
  }
  return length == size;
}

std::string key_id_of(const unsigned char (&public_key)[crypto_sign_PUBLICKEYBYTES]) {
  unsigned char digest[crypto_hash_sha256_BYTES];
  crypto_hash_sha256(digest, public_key, sizeof public_key);
  char hex[17];
  sodium_bin2hex(hex, sizeof hex, digest, 8);
  return hex;
}

/// The words of the first line of `text` (at most kMaxLine bytes).
std::vector<std::string> words(const std::string& text) {
  std::istringstream line(text.substr(0, text.find('\n')));
  std::vector<std::string> out;
  for (std::string word; line >> word;) out.push_back(word);
  return out;
}

/// The first kMaxLine bytes of an open regular file.
std::string read_small(int fd, const std::string& path) {
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    throw Error(ErrorCode::kPermissionDenied, path + " is not a regular file");
  }
  std::string text(kMaxLine, '\0');
  ssize_t n = ::pread(fd, text.data(), text.size(), 0);
  if (n < 0) throw Error(ErrorCode::kPermissionDenied, "cannot read " + path + ": " + std::strerror(errno));
  text.resize(static_cast<size_t>(n));
  return text;
}

struct TrustedKey {
  unsigned char public_key[crypto_sign_PUBLICKEYBYTES];
  std::string file;
};

/// Every *.pub file in the trusted-keys directory, each through the trust checks, by key id.
std::map<std::string, TrustedKey> read_trusted_keys(const std::string& directory) {
  TrustOptions trust;
  trust.kind = "directory of trusted keys";
  TrustedFile dir;
  try {
    dir = open_trusted_directory(directory, trust);
  } catch (const Error& e) {
    throw Error(e.code(), std::string(e.what()) + "; signatures are required, and the public keys that may sign "
                                                  "patches are read from there (polusctl keygen makes key pairs)");
  }
  std::vector<std::string> names;
  if (DIR* listing = ::fdopendir(::dup(dir.fd()))) {
    while (dirent* entry = ::readdir(listing)) {
      std::string name = entry->d_name;
      if (name[0] != '.' && name.size() > 4 && name.ends_with(".pub")) names.push_back(name);
    }
    ::closedir(listing);
  }
  std::sort(names.begin(), names.end());
  std::map<std::string, TrustedKey> keys;
  trust.kind = "key file";
  for (const std::string& name : names) {
    const std::string path = dir.path() + "/" + name;
    TrustedFile file = open_trusted_patch(path, trust);  // the same checks as a patch file
    std::vector<std::string> w = words(read_small(file.fd(), path));
    TrustedKey key;
    if (w.size() < 2 || w[0] != kPublicTag || !from_base64(w[1], key.public_key, sizeof key.public_key)) {
      throw Error(ErrorCode::kPermissionDenied, "the trusted key file " + path + " is not a Polus public key (its "
                                                "line must read '" + kPublicTag + " BASE64 [comment]'); fix or remove it");
    }
    key.file = path;
    keys.emplace(key_id_of(key.public_key), key);
  }
  return keys;
}

/// A new file at `path`, never an existing one, with exactly `mode`.
void write_new_file(const std::string& path, const std::string& text, mode_t mode) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
  if (fd < 0) {
    int err = errno;
    throw Error(err == EACCES || err == EPERM ? ErrorCode::kPermissionDenied : ErrorCode::kInternal,
                "cannot create " + path + ": " + std::strerror(err) + (err == EEXIST ? " (Polus never overwrites a key)" : ""));
  }
  bool ok = ::fchmod(fd, mode) == 0 && ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  int err = errno;
  ok = ::close(fd) == 0 && ok;
  if (!ok) throw Error(ErrorCode::kInternal, "cannot write " + path + ": " + std::strerror(err));
}

}  // namespace

PatchSigner verify_patch_signature(const PatchDescription& patch, const std::string& given_path,
                                   const SignatureOptions& signature) {
  init_sodium();
  const std::string sig_path = given_path + ".sig";
  const std::string required = "signatures are required (--require-signature, or require-signature in " +
                               std::string(kDefaultConfigFile) + ")";
  // A signature needs no trust of its own (it is checked against a trusted key), but it must
  // be read without blocking on a FIFO or a device.
  int fd = ::open(sig_path.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) {
    throw Error(ErrorCode::kPermissionDenied, "patch " + given_path + " is not signed: " + sig_path +
                                                  " does not exist, and " + required +
                                                  "; sign it with `polusctl sign --key KEY " + given_path + "`");
  }
  if (fd < 0) throw Error(ErrorCode::kPermissionDenied, "cannot open the signature " + sig_path + ": " + std::strerror(errno));
  std::string text;
  try {
    text = read_small(fd, sig_path);
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  std::vector<std::string> w = words(text);
  unsigned char sig[crypto_sign_BYTES];
  if (w.size() != 3 || w[0] != kSignatureTag || w[1].size() != 16 || !from_base64(w[2], sig, sizeof sig)) {
    throw Error(ErrorCode::kPermissionDenied, sig_path + " is not a Polus signature (its line must read '" +
                                                  kSignatureTag + " KEY-ID BASE64'); sign the patch again with "
                                                  "`polusctl sign --key KEY " + given_path + "`");
  }
  const std::string& key_id = w[1];
  std::map<std::string, TrustedKey> keys = read_trusted_keys(signature.trusted_keys);
  auto key = keys.find(key_id);
  if (key == keys.end()) {
    std::string known;
    for (const auto& [id, k] : keys) known += (known.empty() ? "" : ", ") + id + " (" + k.file + ")";
    throw Error(ErrorCode::kPermissionDenied, "patch " + given_path + " is signed by key " + key_id +
                                                  ", which is not a trusted key: " + signature.trusted_keys +
                                                  (known.empty() ? " holds no public key (*.pub)" : " holds " + known) +
                                                  "; install the signer's .pub file there if you trust it");
  }
  const std::vector<uint8_t>& bytes = *patch.bytes;
  if (crypto_sign_verify_detached(sig, bytes.data(), bytes.size(), key->second.public_key) != 0) {
    throw Error(ErrorCode::kPermissionDenied, "the signature " + sig_path + " does not match patch " + given_path +
                                                  " (key " + key_id + ", " + key->second.file +
                                                  "): the patch or its signature was changed after signing");
  }
  spdlog::info("patch {} is signed by trusted key {} ({})", patch.name, key_id, key->second.file);
  return PatchSigner{key_id, key->second.file};
}

SigningKey generate_signing_key(const std::string& base, const std::string& comment) {
  init_sodium();
  unsigned char public_key[crypto_sign_PUBLICKEYBYTES];
  unsigned char secret_key[crypto_sign_SECRETKEYBYTES];
  crypto_sign_keypair(public_key, secret_key);
  SigningKey key{base + ".key", base + ".pub", key_id_of(public_key)};
  std::string secret_line = std::string(kSecretTag) + " " + to_base64(secret_key, sizeof secret_key) + " " + key.key_id + "\n";
  sodium_memzero(secret_key, sizeof secret_key);
  std::string clean_comment;
  for (char c : comment) clean_comment += (c == '\n' || c == '\r') ? ' ' : c;
  write_new_file(key.secret_path, secret_line, 0600);
  sodium_memzero(secret_line.data(), secret_line.size());
  write_new_file(key.public_path, std::string(kPublicTag) + " " + to_base64(public_key, sizeof public_key) + " " +
                                      clean_comment + "\n", 0644);
  return key;
}

std::string sign_patch(const std::string& key_path, const std::string& patch_path) {
  init_sodium();
  TrustOptions trust;
  trust.kind = "secret key file";
  TrustedFile key_file = open_trusted_patch(key_path, trust);
  if (key_file.stat().st_mode & 077) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(key_file.stat().st_mode & 07777));
    throw Error(ErrorCode::kPermissionDenied, "refusing " + key_path + ": the secret key is open to group or others (mode " +
                                                  mode + "); chmod 600 " + key_path + ", and consider the key leaked");
  }
  std::string text = read_small(key_file.fd(), key_path);
  std::vector<std::string> w = words(text);
  sodium_memzero(text.data(), text.size());
  unsigned char secret_key[crypto_sign_SECRETKEYBYTES];
  if (w.size() < 2 || w[0] != kSecretTag || !from_base64(w[1], secret_key, sizeof secret_key)) {
    throw Error(ErrorCode::kPermissionDenied, key_path + " is not a Polus secret key (made by `polusctl keygen`)");
  }
  unsigned char public_key[crypto_sign_PUBLICKEYBYTES];
  crypto_sign_ed25519_sk_to_pk(public_key, secret_key);
  const std::string key_id = key_id_of(public_key);

  PatchDescription patch = read_trusted_patch(patch_path, TrustOptions{});
  unsigned char sig[crypto_sign_BYTES];
  crypto_sign_detached(sig, nullptr, patch.bytes->data(), patch.bytes->size(), secret_key);
  sodium_memzero(secret_key, sizeof secret_key);

  // Written beside, then renamed over the old one: a reader sees one whole signature or the other.
  const std::string sig_path = patch_path + ".sig";
  const std::string temporary = sig_path + ".tmp-" + std::to_string(::getpid());
  ::unlink(temporary.c_str());
  write_new_file(temporary, std::string(kSignatureTag) + " " + key_id + " " + to_base64(sig, sizeof sig) + "\n", 0644);
  if (::rename(temporary.c_str(), sig_path.c_str()) != 0) {
    int err = errno;
    ::unlink(temporary.c_str());
    throw Error(ErrorCode::kInternal, "cannot write " + sig_path + ": " + std::strerror(err));
  }
  return key_id;
}

}  // namespace polus
