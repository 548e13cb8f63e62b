// The daemon's one cancel watcher (cancel_watch.h).
#include "cancel_watch.h"

#include <errno.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <stdexcept>

#include <nlohmann/json.hpp>

namespace polusd {

CancelWatch::CancelWatch() {
  epoll_ = ::epoll_create1(EPOLL_CLOEXEC);
  stop_ = ::eventfd(0, EFD_CLOEXEC);
  epoll_event stop{};
  stop.events = EPOLLIN;
  stop.data.fd = stop_;
  if (epoll_ < 0 || stop_ < 0 || ::epoll_ctl(epoll_, EPOLL_CTL_ADD, stop_, &stop) != 0) {
    const std::string why = std::strerror(errno);
    if (epoll_ >= 0) ::close(epoll_);
    if (stop_ >= 0) ::close(stop_);
    throw std::runtime_error("cannot watch connections for cancels: " + why);
  }
  thread_ = std::thread([this] { run(); });
}

CancelWatch::~CancelWatch() {
  uint64_t one = 1;
  (void)!::write(stop_, &one, sizeof one);
  thread_.join();
  ::close(epoll_);
  ::close(stop_);
}

bool CancelWatch::watch(int fd, std::string pending, std::shared_ptr<std::atomic<int>> flag) {
  std::lock_guard<std::mutex> lock(mutex_);
  Entry& entry = entries_[fd];
  entry = Entry{std::move(pending), std::move(flag)};
  take_lines(entry);  // a cancel sent right behind the request
  // Level-triggered: what a read leaves unread is reported again.
  epoll_event event{};
  event.events = EPOLLIN | EPOLLRDHUP;
  event.data.fd = fd;
  if (::epoll_ctl(epoll_, EPOLL_CTL_ADD, fd, &event) != 0) {
    entries_.erase(fd);
    return false;
  }
  return true;
}

void CancelWatch::forget(int fd) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (entries_.erase(fd)) (void)::epoll_ctl(epoll_, EPOLL_CTL_DEL, fd, nullptr);
}

void CancelWatch::take_lines(Entry& entry) {
  for (size_t end; (end = entry.buffer.find('\n')) != std::string::npos;) {
    nlohmann::json line = nlohmann::json::parse(entry.buffer.substr(0, end), nullptr, /*allow_exceptions=*/false);
    entry.buffer.erase(0, end + 1);
    if (line.is_object() && line.contains("cancel") && line["cancel"].is_number_integer()) {
      const int sig = line["cancel"].get<int>();
      if (sig > 0) entry.flag->store(sig);
    }
  }
  if (entry.buffer.size() > 4096) entry.buffer.clear();  // no cancel line is that long
}

void CancelWatch::run() {
  epoll_event events[16];
  for (;;) {
    int n = ::epoll_wait(epoll_, events, 16, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;
    }
    for (int i = 0; i < n; ++i) {
      const int fd = events[i].data.fd;
      if (fd == stop_) return;
      std::lock_guard<std::mutex> lock(mutex_);
      // Forgotten meanwhile (its request answered), or the number already reused by a newer
      // connection, which is then watched under it: read what is there without waiting.
      auto it = entries_.find(fd);
      if (it == entries_.end()) continue;
      char chunk[1024];
      ssize_t got = ::recv(fd, chunk, sizeof chunk, MSG_DONTWAIT);
      if (got > 0) {
        it->second.buffer.append(chunk, static_cast<size_t>(got));
        take_lines(it->second);
      } else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
        // The client went away: the operation goes on; nothing more to read here.
        (void)::epoll_ctl(epoll_, EPOLL_CTL_DEL, fd, nullptr);
      }
    }
  }
}

}  // namespace polusd
