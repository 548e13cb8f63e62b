// tools/polusd/cancel_watch.h — one thread that watches every connection with a request in
// flight for the client's {"cancel": SIGNAL} line (a relayed Ctrl-C) and raises that request's
// stop flag. One for the whole daemon, started once: a request starts no thread of its own to
// listen for it, and its answer waits for nothing but the command.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace polusd {

class CancelWatch {
 public:
  /// Starts the watching thread. Throws std::runtime_error if its epoll or eventfd cannot be made.
  CancelWatch();
  /// Stops and joins the thread.
  ~CancelWatch();
  CancelWatch(const CancelWatch&) = delete;
  CancelWatch& operator=(const CancelWatch&) = delete;

  /// Watches `fd` (a connection whose request line was read; `pending`: what was read past it)
  /// until forget(fd): a {"cancel": SIGNAL} line stores SIGNAL in `flag`. A client that goes
  /// away cancels nothing: the operation goes on. False if `fd` cannot be watched (then no
  /// cancel reaches that request; the caller logs it).
  bool watch(int fd, std::string pending, std::shared_ptr<std::atomic<int>> flag);

  /// Stops watching `fd`; call before closing it (its number may be reused at once).
  void forget(int fd);

 private:
  struct Entry {
    std::string buffer;
    std::shared_ptr<std::atomic<int>> flag;
  };
  void run();
  static void take_lines(Entry& entry);

  int epoll_ = -1;
  int stop_ = -1;  // eventfd: the destructor's "stop"
  std::mutex mutex_;
  std::map<int, Entry> entries_;
  std::thread thread_;
};

}  // namespace polusd
