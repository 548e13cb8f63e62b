#include "process/pause.h"

#include <spdlog/spdlog.h>

namespace polus {

Pause::Pause(PtraceSession& session) : session_(session), started_(Clock::now()) {
  session_.attach_missing_threads();  // threads let go while one was borrowed, or born since
  session_.stop_all(step_deadline());
}

Pause::~Pause() {
  if (ended_) return;
  try {
    session_.resume_all();
  } catch (const std::exception& e) {
    spdlog::error("could not let the target's threads go after a pause: {}", e.what());
  }
}

uint64_t Pause::end(pid_t keep) {
  ended_ = true;
  if (keep) {
    session_.resume_all_except(keep);
  } else {
    session_.resume_all();
  }
  return elapsed();
}

}  // namespace polus
