#include "polus/error.h"

#include <errno.h>

#include <cstring>

namespace polus {

const char* error_code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::kNoSuchProcess: return "no-such-process";
    case ErrorCode::kPermissionDenied: return "permission-denied";
    case ErrorCode::kAlreadyTraced: return "already-traced";
    case ErrorCode::kSymbolNotFound: return "symbol-not-found";
    case ErrorCode::kSymbolAmbiguous: return "symbol-ambiguous";
    case ErrorCode::kPatchMalformed: return "patch-malformed";
    case ErrorCode::kBuildMismatch: return "build-mismatch";
    case ErrorCode::kLoadFailed: return "load-failed";
    case ErrorCode::kUnsafeToPatch: return "unsafe-to-patch";
    case ErrorCode::kNothingToRollBack: return "nothing-to-roll-back";
    case ErrorCode::kTargetDied: return "target-died";
    case ErrorCode::kTimeout: return "timeout";
    case ErrorCode::kInterrupted: return "interrupted";
    case ErrorCode::kAuditFailed: return "audit-failed";
    case ErrorCode::kInternal: return "internal";
  }
  return "internal";  // an out-of-range value is itself a bug
}

// 0 is success and 2 is a usage error (polusctl's own, not an ErrorCode); 1 stays the
// catch-all so a script that only checks "non-zero" still works.
int error_exit_status(ErrorCode code) {
  switch (code) {
    case ErrorCode::kNoSuchProcess: return 3;
    case ErrorCode::kPermissionDenied: return 4;
    case ErrorCode::kAlreadyTraced: return 5;
    case ErrorCode::kSymbolNotFound: return 6;
    case ErrorCode::kSymbolAmbiguous: return 7;
    case ErrorCode::kPatchMalformed: return 8;
    case ErrorCode::kBuildMismatch: return 9;
    case ErrorCode::kLoadFailed: return 10;
    case ErrorCode::kUnsafeToPatch: return 11;
    case ErrorCode::kNothingToRollBack: return 12;
    case ErrorCode::kTargetDied: return 13;
    case ErrorCode::kTimeout: return 14;
    case ErrorCode::kInterrupted: return 15;
    case ErrorCode::kAuditFailed: return 16;
    case ErrorCode::kInternal: return 1;
  }
  return 1;
}

void throw_errno(const std::string& what, int errno_value) {
  ErrorCode code = ErrorCode::kInternal;
  if (errno_value == ESRCH) {
    code = ErrorCode::kNoSuchProcess;
  } else if (errno_value == EPERM || errno_value == EACCES) {
    code = ErrorCode::kPermissionDenied;
  }
  throw Error(code, what + ": " + std::strerror(errno_value));
}

}  // namespace polus
