// update/audit.h — the audit trail: one line per apply, rollback or finish, refusals included.
//
// Each operation is recorded once it ends, through spdlog, to syslog (facility authpriv, ident
// "polus-audit"; journald takes it from there where it runs) and to an append-only file. The
// file is opened with O_APPEND before the operation starts: run as root (effective uid 0),
// Polus does nothing it cannot record (Error kAuditFailed); run as another user, a file it
// cannot open costs a warning (syslog still gets the line). Each line is one JSON object, so
// `jq` and log shippers read it without a grammar of its own:
//   {"time":"2024-05-01T10:00:00.123456Z","action":"apply","result":"ok","exit_status":0,
//    "caller_uid":0,"caller_pid":4242,"target_pid":1234,"executable":"/usr/sbin/server",
//    "build_id":"ab12...","patch":"fix-1","patch_path":"/srv/patches/fix-1.so",
//    "sha256":"9f86...","signed_by":"","state":"committed","duration_ms":4.215,"message":""}
// result is "ok", "already-applied", or the error's code (polus/error.h's names: e.g.
// "permission-denied" for a refused patch file, signature or caller); exit_status is what
// polusctl returns for it.
#pragma once

#include <sys/types.h>

#include <exception>
#include <memory>
#include <string>

#include "common/clock.h"
#include "polus/engine.h"
#include "polus/options.h"

namespace spdlog {
class logger;
}

namespace polus {

/// What one operation concerns; the operation fills in the patch as soon as it knows it.
struct AuditEvent {
  std::string action;  // "apply", "rollback", "finish"
  pid_t target_pid = 0;
  std::string executable;
  std::string build_id;
  std::string patch_name;
  std::string patch_path;
  std::string sha256;
  std::string signed_by;  // key id, when a signature was required and verified
};

class AuditTrail {
 public:
  /// Opens the audit file and syslog when options.enabled, and notes the target's executable
  /// and build-id. Throws Error(kAuditFailed) when run as root and the file cannot be opened.
  AuditTrail(const AuditOptions& options, const Caller& caller, const char* action, pid_t pid);
  ~AuditTrail();
  AuditTrail(const AuditTrail&) = delete;
  AuditTrail& operator=(const AuditTrail&) = delete;

  AuditEvent& event() { return event_; }

  /// Records a completed operation: result "ok" (or "already-applied"), the patch's state.
  void succeeded(const PatchInfo& info);

  /// Records a failed or refused one: the error's code, exit status and message.
  void failed(const std::exception& error);

 private:
  void write(const std::string& result, int exit_status, const std::string& state, const std::string& message,
             bool warning);

  AuditOptions options_;
  Caller caller_;
  Clock::time_point started_;
  AuditEvent event_;
  std::shared_ptr<spdlog::logger> logger_;
};

/// One JSON string literal (quotes and escapes included).
std::string json_quote(const std::string& text);

}  // namespace polus
