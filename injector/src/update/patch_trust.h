// update/patch_trust.h — refusing a patch file an untrusted user could have written or swapped.
//
// Polus usually runs as root, and the patch it loads runs as code in a production process.
// Like sshd's StrictModes, apply first checks that nobody but root, the caller and the owners
// the operator named could have written the file or replaced it on its way there:
//
//   - the file (symlinks followed) is a regular file;
//   - it, every directory looked in while resolving the path (the path as given and every
//     symlink's target, so the directory holding a symlink too), and every symlink on the
//     way are owned by a trusted uid: root, the caller (geteuid()), or one of
//     TrustOptions::allowed_owners;
//   - neither the file nor any of those directories is writable by group or others, except
//     a directory with the sticky bit (like /tmp) owned by a trusted uid: there others may add
//     entries but not rename or remove ours, and the entries we use must pass on their own.
//
// A refusal throws Error(kPermissionDenied) saying which file or directory, why, and what to
// do about it. A path that does not resolve throws kPatchMalformed ("cannot open"), as
// read_patch_file does.
//
// The walk opens each directory (O_PATH|O_NOFOLLOW) relative to the one before and judges
// what it opened (fstat of the fd), not a path lstat'ed earlier. The file itself is opened
// once, O_NOFOLLOW, and kept open: open_trusted_patch returns that fd so a caller can read the
// bytes that were checked (read_all) instead of opening the path again.
#pragma once

#include "update/patch_file.h"

#include <sys/stat.h>
#include <sys/types.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace polus {

struct TrustOptions {
  /// Owners besides root and the caller whose files (and directories) are trusted.
  std::vector<uid_t> allowed_owners;
  /// What the file is, in messages: "patch" (a path that does not resolve is then
  /// kPatchMalformed, as read_patch_file says it), or e.g. "key file", "configuration file"
  /// (then kPermissionDenied: the operation is refused for want of it).
  std::string kind = "patch";
};

/// A patch file that passed the checks, open read-only. Move-only; closes its fd.
class TrustedFile {
 public:
  TrustedFile() = default;
  TrustedFile(int fd, std::string path, const struct stat& st) : fd_(fd), path_(std::move(path)), stat_(st) {}
  ~TrustedFile();
  TrustedFile(TrustedFile&& other) noexcept;
  TrustedFile& operator=(TrustedFile&& other) noexcept;
  TrustedFile(const TrustedFile&) = delete;
  TrustedFile& operator=(const TrustedFile&) = delete;

  /// The open file (O_RDONLY|O_CLOEXEC), -1 once released or moved from.
  int fd() const { return fd_; }
  /// The absolute path without symlinks, "." or ".." (what realpath gives).
  const std::string& path() const { return path_; }
  /// fstat of fd() when it was checked.
  const struct stat& stat() const { return stat_; }
  /// Every byte of the file, read through fd() (pread from offset 0).
  std::vector<uint8_t> read_all() const;
  /// Hands the fd over to the caller, who closes it.
  int release();

 private:
  int fd_ = -1;
  std::string path_;
  struct stat stat_ {};
};

/// Resolves `path`, checks it as above, and returns the checked file open.
TrustedFile open_trusted_patch(const std::string& path, const TrustOptions& options);

/// The same walk for a directory (the trusted-keys directory): it and every directory on the
/// way are checked as above; returns it open (O_RDONLY | O_DIRECTORY) for listing.
TrustedFile open_trusted_directory(const std::string& path, const TrustOptions& options);

/// open_trusted_patch, then read_patch_bytes on the bytes of that open file: the bytes
/// validated are the bytes that were checked, whatever happens to the path meanwhile.
PatchDescription read_trusted_patch(const std::string& path, const TrustOptions& options);

/// open_trusted_patch, closing the file again: throws if `path` is not trusted.
void check_patch_trusted(const std::string& path, const TrustOptions& options);

}  // namespace polus
