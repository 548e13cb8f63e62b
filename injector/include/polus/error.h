// polus/error.h — the one error type the engine throws.
//
// Every error tells the operator what failed, why, and what to do; `code` lets polusctl
// map it to a documented exit status and lets tests check which failure happened.
#pragma once

#include <stdexcept>
#include <string>

namespace polus {

enum class ErrorCode {
  kNoSuchProcess,      // the pid does not exist (or exited while we worked)
  kPermissionDenied,   // ptrace or /proc access refused
  kAlreadyTraced,      // another debugger holds the target
  kSymbolNotFound,     // a name the patch uses is not in the target
  kSymbolAmbiguous,    // several file-static symbols share the name
  kPatchMalformed,     // the patch .so or its descriptor is not valid
  kBuildMismatch,      // the patch was made for another build of the target
  kLoadFailed,         // dlopen in the target failed
  kUnsafeToPatch,      // a function cannot be redirected safely (too short, busy, ...)
  kNothingToRollBack,  // rollback asked but no applied patch
  kTargetDied,         // the target exited during the operation
  kTimeout,            // the target did not reach a safe point in time
  kInterrupted,        // the operator asked Polus to stop (SIGINT/SIGTERM/SIGHUP) before it changed anything
  kAuditFailed,        // run as root, the operation could not be recorded in the audit log; nothing was done
  kInternal,           // a bug in Polus or an unexpected kernel answer
};

/// Short stable name of an error code, e.g. "symbol-not-found" (used in --json output).
const char* error_code_name(ErrorCode code);

/// The exit status polusctl returns for an error code (documented in tools/README.md).
int error_exit_status(ErrorCode code);

/// An engine failure. what() is a full sentence for the operator.
class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

/// Throws kInternal (or kNoSuchProcess for ESRCH) with `what` and strerror(errno_value).
[[noreturn]] void throw_errno(const std::string& what, int errno_value);

}  // namespace polus
