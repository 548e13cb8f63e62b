// tools/polusd/server.h — polusd's socket: taking it (from systemd or by binding it), and
// serving each connection's request on a thread of its own, one kept warm (worker_pool.h).
//
// The protocol, one connection per request: the client writes its request as one line of JSON
// (what polusctl's command units build; see tools/polusctl/cli.h), and may later write
// {"cancel": SIGNAL} to stop the operation at its next safe point (a relayed Ctrl-C); polusd
// answers with one line {"status": EXIT, "out": STDOUT, "err": STDERR} and closes.
#pragma once

#include <string>

#include "drivers.h"

namespace polusd {

/// A listening socket polusd owns: passed by systemd (LISTEN_FDS, sd_listen_fds(3)), or bound
/// at `path` while holding `path`.lock (a second polusd finds it held and leaves).
class Listener {
 public:
  /// Takes the socket. Throws std::runtime_error saying why not; sets already_served() and
  /// returns normally when another polusd holds `path`.
  explicit Listener(const std::string& path);
  ~Listener();
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  int fd() const { return fd_; }
  bool already_served() const { return already_served_; }
  const std::string& path() const { return path_; }
  bool from_systemd() const { return from_systemd_; }

 private:
  std::string path_;
  int fd_ = -1;
  int lock_fd_ = -1;
  bool already_served_ = false;
  bool from_systemd_ = false;
};

/// Accepts connections until a stop signal is pending, each served on a thread of its own, an
/// idle one if there is one (requests
/// for different processes run at once; for one process the engine's operation lock orders
/// them). Requests that leave an update in flight hand it to `drivers`.
void serve(Listener& listener, Drivers& drivers);

}  // namespace polusd
