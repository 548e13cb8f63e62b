// Patches that stick (sticky.h).
#include "sticky.h"

#include <errno.h>
#include <linux/cn_proc.h>
#include <linux/connector.h>
#include <linux/netlink.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <set>

#include <spdlog/spdlog.h>

#include "polus/engine.h"
#include "polus/error.h"
#include "polus/stop_request.h"
#include "cli.h"
#include "scope.h"
#include "store.h"

namespace polusd {

namespace {

/// A netlink socket subscribed to the process events connector, or -1 (errno says why).
int open_proc_connector() {
  int fd = ::socket(PF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_CONNECTOR);
  if (fd < 0) return -1;
  sockaddr_nl address{};
  address.nl_family = AF_NETLINK;
  address.nl_groups = CN_IDX_PROC;
  address.nl_pid = 0;  // the kernel picks a unique port id
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    ::close(fd);
    return -1;
  }
  // nlmsghdr, then cn_msg, then the operation (cn_msg ends in a flexible array: laid out by hand).
  alignas(nlmsghdr) char listen[NLMSG_LENGTH(sizeof(cn_msg) + sizeof(enum proc_cn_mcast_op))] = {};
  auto* header = reinterpret_cast<nlmsghdr*>(listen);
  header->nlmsg_len = sizeof listen;
  header->nlmsg_type = NLMSG_DONE;
  header->nlmsg_pid = static_cast<__u32>(getpid());
  auto* message = static_cast<cn_msg*>(NLMSG_DATA(header));
  message->id.idx = CN_IDX_PROC;
  message->id.val = CN_VAL_PROC;
  message->len = sizeof(enum proc_cn_mcast_op);
  enum proc_cn_mcast_op op = PROC_CN_MCAST_LISTEN;
  std::memcpy(message->data, &op, sizeof op);
  if (::send(fd, listen, sizeof listen, 0) != static_cast<ssize_t>(sizeof listen)) {
    ::close(fd);
    return -1;
  }
  return fd;
}

}  // namespace

Sticky::Sticky(std::string store, Drivers& drivers) : store_(std::move(store)), drivers_(drivers) {
  fd_ = open_proc_connector();
  if (fd_ < 0) {
    spdlog::warn("polusd: cannot listen to process events ({}): stored patches reach only processes running "
                 "when polusd starts", std::strerror(errno));
    return;
  }
  watcher_ = std::thread(&Sticky::watch, this);
}

Sticky::~Sticky() {
  if (watcher_.joinable()) watcher_.join();
  workers_.join_all();
  if (fd_ >= 0) ::close(fd_);
}

void Sticky::apply_to_running() {
  std::set<std::string> builds;
  for (const polusctl::StoredPatch& s : polusctl::list_stored(store_)) builds.insert(s.build_id);
  for (const std::string& build : builds) {
    for (pid_t pid : polus::processes_with_build_id(build)) {
      if (in_scope(pid)) apply_to(pid, false);
    }
  }
}

void Sticky::watch() {
  alignas(nlmsghdr) char buffer[8192];
  while (!polus::stop_requested()) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    ssize_t n = ::recv(fd_, buffer, sizeof buffer, 0);
    if (n <= 0) continue;  // ENOBUFS: events were lost under load; the next ones still come
    for (auto* header = reinterpret_cast<nlmsghdr*>(buffer); NLMSG_OK(header, static_cast<size_t>(n));
         header = NLMSG_NEXT(header, n)) {
      auto* message = static_cast<cn_msg*>(NLMSG_DATA(header));
      if (message->id.idx != CN_IDX_PROC || message->id.val != CN_VAL_PROC) continue;
      auto* event = reinterpret_cast<proc_event*>(message->data);
      pid_t pid = 0;
      if (event->what == proc_event::PROC_EVENT_EXEC) {
        pid = static_cast<pid_t>(event->event_data.exec.process_tgid);
      } else if (event->what == proc_event::PROC_EVENT_FORK &&
                 event->event_data.fork.child_pid == event->event_data.fork.child_tgid) {
        // A new process (not a thread) that runs its parent's code without exec: an nginx
        // worker. Forked from a patched master it has the patch already (apply_stored finds it
        // applied and does nothing); forked before the master was patched — a restarted
        // nginx forks its workers within milliseconds — it gets the patch here.
        pid = static_cast<pid_t>(event->event_data.fork.child_tgid);
      } else {
        continue;
      }
      if (!in_scope(pid)) continue;
      const std::string build = build_of(pid);
      if (build.empty() || polusctl::list_stored(store_, build).empty()) continue;
      apply_to(pid, true);
    }
  }
}

std::string Sticky::build_of(pid_t pid) {
  // Every fork on the host comes here: reading an ELF's notes once per executable file, not
  // once per process, keeps a fork-heavy host (a shell script) cheap to watch.
  struct stat st;
  if (::stat(("/proc/" + std::to_string(pid) + "/exe").c_str(), &st) != 0) return "";
  const std::tuple<dev_t, ino_t, time_t, long> key{st.st_dev, st.st_ino, st.st_mtim.tv_sec, st.st_mtim.tv_nsec};
  auto cached = build_ids_.find(key);
  if (cached != build_ids_.end()) return cached->second;
  std::string build = polus::executable_build_id(pid);
  if (build_ids_.size() > 4096) build_ids_.clear();
  build_ids_.emplace(key, build);
  return build;
}

void Sticky::apply_to(pid_t pid, bool just_started) {
  workers_.start([this, pid, just_started] {
    polus::EngineOptions options;
    options.agent_path = polusctl::default_agent_path();
    options.timeout = std::chrono::milliseconds(2000);
    options.sync_timeout = std::chrono::milliseconds(200);
    // A process that has just exec'd is still in the dynamic loader (libc not mapped yet, no
    // thread safe to borrow): try again, sooner at first, until it has started.
    for (int attempt = 0; attempt < 40 && !polus::stop_requested(); ++attempt) {
      try {
        for (const std::string& name : polusctl::apply_stored(store_, pid, options)) {
          spdlog::info("polusd: applied stored patch {} to process {}{}", name, pid, just_started ? " (just started)" : "");
        }
        polus::ProcessStatus status = polus::read_status(pid);
        for (const auto& p : status.patches) {
          if (p.state == "syncing") drivers_.adopt(pid, options);
        }
        return;
      } catch (const polus::Error& e) {
        if (e.code() == polus::ErrorCode::kNoSuchProcess || e.code() == polus::ErrorCode::kTargetDied) return;
        if (attempt == 39) spdlog::error("polusd: cannot apply the stored patches to process {}: {}", pid, e.what());
        else spdlog::debug("polusd: stored patches for process {} not applied yet: {}", pid, e.what());
      } catch (const std::exception& e) {
        spdlog::error("polusd: stored patches for process {}: {}", pid, e.what());
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(attempt < 10 ? 20 : 250));
    }
  });
}

}  // namespace polusd
