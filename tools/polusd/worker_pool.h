// tools/polusd/worker_pool.h — the threads that serve polusd's connections, kept warm: a
// request is handed to a thread already waiting for one (a wake-up, not a thread's creation and
// its stack's mapping), and a new thread is started only when none is idle, so requests still
// run at once, as many as come. After a burst, at most `keep_idle` threads stay.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>

#include "thread_set.h"

namespace polusd {

class WorkerPool {
 public:
  explicit WorkerPool(size_t keep_idle) : keep_idle_(keep_idle) {}
  /// Runs what was handed over and joins every worker.
  ~WorkerPool() { stop(); }
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  /// Runs `job` on an idle worker, or on a new one when none is idle.
  void run(std::function<void()> job) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (idle_ > jobs_.size()) {
        jobs_.push_back(std::move(job));
        ready_.notify_one();
        return;
      }
    }
    threads_.start([this, job = std::move(job)]() mutable { work(std::move(job)); });
  }

  /// Lets the idle workers end once every job handed over has run, and joins them all (the
  /// busy ones end with their job).
  void stop() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    ready_.notify_all();
    threads_.join_all();
  }

 private:
  void work(std::function<void()> job) {
    for (;;) {
      job();
      job = nullptr;  // what it captured goes now, not when the next job comes
      std::unique_lock<std::mutex> lock(mutex_);
      if (stopping_ || idle_ >= keep_idle_) return;
      ++idle_;
      ready_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
      --idle_;
      if (jobs_.empty()) return;  // stopping
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
  }

  const size_t keep_idle_;
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::function<void()>> jobs_;
  size_t idle_ = 0;  // workers waiting in work()
  bool stopping_ = false;
  ThreadSet threads_;
};

}  // namespace polusd
