#include "update/patch_trust.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <deque>
#include <utility>

#include "common/users.h"
#include "polus/error.h"

namespace polus {

namespace {

/// At most this many symlinks while resolving one path (the kernel's own limit).
constexpr int kMaxSymlinks = 40;

class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    std::swap(fd_, other.fd_);
    return *this;
  }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

/// What to write after --allow-owner for `uid`: its name, or the number.
std::string allow_owner_argument(uid_t uid) {
  std::string name = user_name(uid);
  return name.empty() ? std::to_string(uid) : name;
}

std::string octal_mode(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

bool writable_by_others(mode_t mode) { return (mode & (S_IWGRP | S_IWOTH)) != 0; }

/// "group", "others" or "group and others" (for a mode writable_by_others).
std::string who_can_write(mode_t mode) {
  if ((mode & S_IWGRP) && (mode & S_IWOTH)) return "group and others";
  return (mode & S_IWGRP) ? "group" : "others";
}

/// The chmod argument that takes exactly those write bits away.
std::string chmod_argument(mode_t mode) {
  if ((mode & S_IWGRP) && (mode & S_IWOTH)) return "go-w";
  return (mode & S_IWGRP) ? "g-w" : "o-w";
}

std::string kind_of(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISLNK(mode)) return "a symlink";
  if (S_ISREG(mode)) return "a regular file";
  return "not a regular file";
}

/// The components of a path, without empty ones and ".".
std::deque<std::string> components(const std::string& path) {
  std::deque<std::string> out;
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    std::string part = path.substr(start, end - start);
    if (!part.empty() && part != ".") out.push_back(std::move(part));
    start = end + 1;
  }
  return out;
}

std::string join(const std::string& directory, const std::string& name) {
  return directory == "/" ? "/" + name : directory + "/" + name;
}

/// Resolves one path component by component, judging everything it opens.
class TrustWalk {
 public:
  TrustWalk(const std::string& given, const TrustOptions& options, bool want_directory = false)
      : given_(given), options_(options), caller_(::geteuid()), want_directory_(want_directory) {}

  TrustedFile run() {
    if (given_.empty()) cannot_open(given_, ENOENT);
    std::string absolute = given_;
    if (absolute[0] != '/') {
      char cwd[PATH_MAX];
      if (!::getcwd(cwd, sizeof cwd)) cannot_open("the current directory", errno);
      absolute = join(cwd, absolute);
    }
    std::deque<std::string> pending = components(absolute);

    Fd root(::open("/", O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (root.get() < 0) cannot_open("/", errno);
    check_directory(root.get(), "/");
    dirs_.push_back(Directory{std::move(root), "/"});

    int symlinks = 0;
    while (!pending.empty()) {
      std::string name = std::move(pending.front());
      pending.pop_front();
      if (name == "..") {
        if (dirs_.size() > 1) dirs_.pop_back();
        continue;
      }
      const Directory& parent = dirs_.back();
      const std::string path = join(parent.path, name);
      struct stat st;
      if (::fstatat(parent.fd.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) cannot_open(path, errno);

      if (S_ISLNK(st.st_mode)) {
        // Its owner could put another link in its place if the directory is sticky (the
        // directory itself was checked when it was opened).
        if (!trusted(st.st_uid)) {
          refuse("the symlink " + path + " is owned by " + describe_uid(st.st_uid) + ", not " + trusted_owners() +
                 ", who could point it elsewhere; give the path it points to" + allow_hint(st.st_uid, ", or "));
        }
        if (++symlinks > kMaxSymlinks) cannot_open(path, ELOOP);
        std::string target = read_link(parent.fd.get(), name, path);
        if (target[0] == '/') dirs_.resize(1);
        std::deque<std::string> more = components(target);
        pending.insert(pending.begin(), more.begin(), more.end());
        continue;
      }

      if (pending.empty() && want_directory_ && !S_ISDIR(st.st_mode)) {
        refuse((path == given_ ? "it" : path) + " is " + kind_of(st.st_mode) + ", not a directory");
      }
      if (pending.empty() && !want_directory_) return open_file(name, path, st);

      if (!S_ISDIR(st.st_mode)) cannot_open(path, ENOTDIR);
      Fd fd(::openat(parent.fd.get(), name.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (fd.get() < 0) cannot_open(path, errno);
      check_directory(fd.get(), path);
      dirs_.push_back(Directory{std::move(fd), path});
    }
    // The path ended in a directory ("/", "..", or a symlink to one of those).
    if (want_directory_) return open_directory();
    refuse_not_regular(dirs_.back().path, S_IFDIR);
  }

 private:
  struct Directory {
    Fd fd;             // O_PATH, checked
    std::string path;  // absolute, resolved
  };

  [[noreturn]] void refuse(const std::string& why) const {
    throw Error(ErrorCode::kPermissionDenied, "refusing " + given_ + ": " + why);
  }

  /// A path that does not resolve is reported as read_patch_file reports it (kPatchMalformed);
  /// a lookup the caller may not make, as permission denied.
  [[noreturn]] void cannot_open(const std::string& where, int err) const {
    std::string message = "cannot open " + options_.kind + " " + given_ + (where == given_ ? "" : ": " + where) + ": " +
                          std::strerror(err);
    // Missing trust material (a key, the keys directory) refuses the operation as untrusted.
    if (err == EACCES || err == EPERM || options_.kind != "patch") throw Error(ErrorCode::kPermissionDenied, message);
    throw Error(ErrorCode::kPatchMalformed, message);
  }

  /// How to trust a file of `uid`: --allow-owner for patches; other files must be root's.
  std::string allow_hint(uid_t uid, const char* joint) const {
    if (options_.kind == "patch") {
      return std::string(joint) + "pass --allow-owner " + allow_owner_argument(uid) + " if you trust that user's patches";
    }
    return std::string(joint) + "give it to root (chown root) if it is yours to trust";
  }

  /// The directory the path led to, checked on the way, opened for reading its entries.
  TrustedFile open_directory() const {
    const Directory& last = dirs_.back();
    Fd fd(::openat(last.fd.get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (fd.get() < 0) cannot_open(last.path, errno);
    struct stat st;
    if (::fstat(fd.get(), &st) != 0) cannot_open(last.path, errno);
    return TrustedFile(fd.release(), last.path, st);
  }

  bool trusted(uid_t uid) const {
    return uid == 0 || uid == caller_ ||
           std::find(options_.allowed_owners.begin(), options_.allowed_owners.end(), uid) != options_.allowed_owners.end();
  }

  std::string trusted_owners() const {
    std::string out = caller_ == 0 ? "root" : "root or you (" + describe_uid(caller_) + ")";
    if (!options_.allowed_owners.empty()) out += " or an owner allowed with --allow-owner";
    return out;
  }

  std::string read_link(int directory, const std::string& name, const std::string& path) const {
    char buf[PATH_MAX];
    ssize_t n = ::readlinkat(directory, name.c_str(), buf, sizeof buf);
    if (n < 0) cannot_open(path, errno);
    if (n == 0) cannot_open(path, ENOENT);
    if (static_cast<size_t>(n) >= sizeof buf) cannot_open(path, ENAMETOOLONG);
    return std::string(buf, static_cast<size_t>(n));
  }

  /// Judges an opened directory by its fstat.
  void check_directory(int fd, const std::string& path) const {
    struct stat st;
    if (::fstat(fd, &st) != 0) cannot_open(path, errno);
    if (!trusted(st.st_uid)) {
      refuse("the directory " + path + " is owned by " + describe_uid(st.st_uid) + ", not " + trusted_owners() +
             ", so that user could replace what is in it; move the " + options_.kind + " to a directory root owns" +
             allow_hint(st.st_uid, ", or "));
    }
    // Sticky and owned by a trusted uid (like /tmp): others may add entries but not rename or
    // remove ours, and every entry used on the way is checked itself.
    if (writable_by_others(st.st_mode) && !(st.st_mode & S_ISVTX)) {
      refuse("the directory " + path + " is writable by " + who_can_write(st.st_mode) + " (mode " +
             octal_mode(st.st_mode) + "), so others could replace what is in it; make it writable by its owner only "
             "(chmod " + chmod_argument(st.st_mode) + " " + path + ")");
    }
  }

  [[noreturn]] void refuse_not_regular(const std::string& path, mode_t mode) const {
    refuse((path == given_ ? "it" : path) + " is " + kind_of(mode) +
           ", not a regular file; give the path of the " + (options_.kind == "patch" ? "patch .so" : options_.kind) + " itself");
  }

  /// Opens the last component, without following a symlink, and judges what was opened.
  TrustedFile open_file(const std::string& name, const std::string& path, const struct stat& looked_up) const {
    // Not even opened if it is no regular file: opening a FIFO or a device can block or act.
    if (!S_ISREG(looked_up.st_mode)) refuse_not_regular(path, looked_up.st_mode);
    const Directory& parent = dirs_.back();
    Fd fd(::openat(parent.fd.get(), name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
    if (fd.get() < 0) cannot_open(path, errno);
    struct stat st;
    if (::fstat(fd.get(), &st) != 0) cannot_open(path, errno);
    if (!S_ISREG(st.st_mode)) refuse_not_regular(path, st.st_mode);
    const std::string what = path == given_ ? "the file" : "the file " + path;
    if (!trusted(st.st_uid)) {
      refuse(what + " is owned by " + describe_uid(st.st_uid) + ", not " + trusted_owners() +
             allow_hint(st.st_uid, "; "));
    }
    if (writable_by_others(st.st_mode)) {
      refuse(what + " is writable by " + who_can_write(st.st_mode) + " (mode " + octal_mode(st.st_mode) +
             "), so others could change it; make it writable by its owner only (chmod " +
             chmod_argument(st.st_mode) + " " + path + ")");
    }
    int flags = ::fcntl(fd.get(), F_GETFL);
    if (flags >= 0) ::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK);
    return TrustedFile(fd.release(), path, st);
  }

  std::string given_;
  const TrustOptions& options_;
  uid_t caller_;
  bool want_directory_;
  std::vector<Directory> dirs_;  // the resolved path so far; dirs_[0] is "/"
};

}  // namespace

TrustedFile::~TrustedFile() {
  if (fd_ >= 0) ::close(fd_);
}

TrustedFile::TrustedFile(TrustedFile&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), path_(std::move(other.path_)), stat_(other.stat_) {}

TrustedFile& TrustedFile::operator=(TrustedFile&& other) noexcept {
  std::swap(fd_, other.fd_);
  std::swap(path_, other.path_);
  std::swap(stat_, other.stat_);
  return *this;
}

int TrustedFile::release() { return std::exchange(fd_, -1); }

std::vector<uint8_t> TrustedFile::read_all() const {
  std::vector<uint8_t> bytes;
  bytes.reserve(static_cast<size_t>(std::max<off_t>(stat_.st_size, 0)));
  uint8_t buf[65536];
  for (off_t offset = 0;;) {
    ssize_t n = ::pread(fd_, buf, sizeof buf, offset);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno("cannot read " + path_, errno);
    if (n == 0) break;
    bytes.insert(bytes.end(), buf, buf + n);
    offset += n;
  }
  return bytes;
}

TrustedFile open_trusted_patch(const std::string& path, const TrustOptions& options) {
  return TrustWalk(path, options).run();
}

TrustedFile open_trusted_directory(const std::string& path, const TrustOptions& options) {
  return TrustWalk(path, options, /*want_directory=*/true).run();
}

void check_patch_trusted(const std::string& path, const TrustOptions& options) { open_trusted_patch(path, options); }

PatchDescription read_trusted_patch(const std::string& path, const TrustOptions& options) {
  TrustedFile file = open_trusted_patch(path, options);
  return read_patch_bytes(file.read_all(), file.path());
}

}  // namespace polus
