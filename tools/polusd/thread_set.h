// tools/polusd/thread_set.h — threads polusd starts for one piece of work each (a client's
// connection, a process given its stored patches), joined as they finish: a finished thread
// keeps its stack until joined, and a long-lived daemon must not collect them.
#pragma once

#include <atomic>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <thread>

namespace polusd {

class ThreadSet {
 public:
  ThreadSet() = default;
  ThreadSet(const ThreadSet&) = delete;
  ThreadSet& operator=(const ThreadSet&) = delete;
  /// Joins every thread (they must end by themselves: a stop signal pending, work done).
  ~ThreadSet() { join_all(); }

  /// Runs `work` on a thread of its own; first joins the threads that have finished.
  void start(std::function<void()> work) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = threads_.begin(); it != threads_.end();) {
      if (it->done->load()) {
        it->thread.join();
        it = threads_.erase(it);
      } else {
        ++it;
      }
    }
    auto done = std::make_shared<std::atomic<bool>>(false);
    threads_.push_back({std::thread([work = std::move(work), done] {
                          struct Mark {
                            std::atomic<bool>& flag;
                            ~Mark() { flag = true; }  // also when `work` throws
                          } mark{*done};
                          work();
                        }),
                        done});
  }

  /// Joins every thread started so far.
  void join_all() {
    std::list<Entry> all;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      all.swap(threads_);
    }
    for (Entry& e : all) e.thread.join();
  }

 private:
  struct Entry {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  std::mutex mutex_;
  std::list<Entry> threads_;
};

}  // namespace polusd
