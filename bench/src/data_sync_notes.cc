// data_sync_notes.cc — the notes on method for the data update rows (F0, D1–D5), and why the
// write tracking is built the way it is; report.cc puts them under the table.
#include <sstream>
#include <string>

#include "sections.h"

namespace bench {

std::string data_sync_notes(const DataSyncResults& d) {
  std::ostringstream n;
  n << "**F0, D1–D4.** F0: a bare SIGSEGV round trip measured in the same process as D2–D4 (a store to a "
       "read-only page, a handler that only advances rip, sigreturn): what any fault-based write tracking pays "
       "at least; D2 and D3 are also given as ratios to it. D1: the greeter under the same load client as T1–T3, with greeter-v0-v1-data.so "
       "(test-servers/patches), which tracks its request counter — one atomic increment per request, from "
       "worker threads that block every signal, on a page the ticker thread also writes — and names the "
       "workers' loop as a user of it, so the update stays *syncing*; requests/s before the apply and while "
       "syncing, same process, per sample (a fresh server each). D1w: the Fig. 2 counter (test-servers/fig2/counter.c), eight threads incrementing ab.a.i "
       "through bar()/foo() in a tight loop, so every iteration is a write to changed data; a thread kept in "
       "hold() holds the update in *syncing*. Completed calls per second for a while before the apply and "
       "while syncing, in the same process, per sample; the worst case for write-through, since each write "
       "costs a fault. D2: the agent's own micro-benchmark run in this run (agent_sync_test perf): a write to "
       "a tracked item whose sync function stores once, through the counterpart's writable view (one fault). "
       "D3: a write to an untracked variable on a tracked page (one fault, no sync). D4: threads each writing "
       "its own tracked item (its own pair) in a loop for a fixed time; total tracked writes per second, and the "
       "same with every write forced under the agent's one sync lock (POLUS_SYNC_NO_FAST_PATH) for comparison; on "
       "2 shared cores both are bounded by the CPUs, and the kernel's own signal delivery takes a per-process lock "
       "(sighand), so the row shows no waiting rather than a speed-up: the agent_sync_test two_items test asserts it "
       "(no lock wait at all between two threads on different pairs). D5: the greeter data patch's commit pause, "
       "part by part (PatchInfo.commit_pause_parts), median per part. D1n: D1w with counter-v0-v1-notified.so. "
       "This run: *"
    << d.engine_answer << "*.\n\n";
  n << "**Why this design (F0, D2, D3).** A tracked page is never writable at its address while an update syncs, "
       "so every write to it faults; the fault (F0, dominated on this machine by the kernel saving and restoring the "
       "CPU's large XSAVE area around the signal) is the floor. Everything the agent used to add on top is gone: the "
       "store is no longer carried out with pwrite(/proc/self/mem) (a system call per write) but with a plain store "
       "through a second, writable mapping of the same page (a memfd mapped read-only at the page and read-write "
       "elsewhere, moved over the page with one atomic mremap); the sync function gets its counterpart through that "
       "mapping too, so its store no longer faults a second time (D2 was two faults and two system calls); the "
       "thread's id comes from glibc's TCB instead of gettid/getpid; and writes to different pairs take different "
       "locks instead of one process-wide lock. What remains is decoding the instruction, running it out of line "
       "and comparing the item with its shadow: a few hundred ns, within the noise of F0 here. Below one fault per "
       "write needs the writer's cooperation: the opt-in (POLUS_DATA_WRITES_NOTIFIED and polus_wrote) lets new code "
       "write its own data without any fault (0.07 µs a write in agent_sync_test notified); Fig. 2's counter "
       "(D1w, D1n) still faults three times a call on the old page, where its semaphore and call counter sit beside "
       "the changed global (false sharing, one F0 each).\n\n";
  return n.str();
}

}  // namespace bench
