#include "binary/stack_scan.h"

#include <algorithm>

#include "common/format.h"

namespace polus {

ThreadSnapshot snapshot_thread(ProcessMemory& memory, const std::vector<MappedRegion>& maps, pid_t tid,
                               const user_regs_struct& regs, size_t limit) {
  ThreadSnapshot snap;
  snap.tid = tid;
  snap.pc = regs.rip;
  snap.sp = regs.rsp;
  snap.regs = regs;
  uint64_t sp = regs.rsp & ~7ull;
  auto region = std::find_if(maps.begin(), maps.end(), [&](const MappedRegion& r) { return r.contains(sp); });
  if (region == maps.end()) {
    snap.stack_complete = false;
    return snap;
  }
  uint64_t end = region->end;
  if (end - sp > limit) {
    end = sp + limit;
    snap.stack_complete = false;
  }
  snap.stack_words.resize((end - sp) / 8);
  size_t got = memory.read_bytes_fallible(RemoteAddr(sp), snap.stack_words.data(), snap.stack_words.size() * 8);
  if (got != snap.stack_words.size() * 8) {
    snap.stack_words.resize(got / 8);
    snap.stack_complete = false;
  }
  return snap;
}

const AddressRange* thread_touches(const ThreadSnapshot& thread, const std::vector<AddressRange>& ranges) {
  for (const AddressRange& range : ranges) {
    if (range.contains(thread.pc)) return &range;
  }
  for (uint64_t word : thread.stack_words) {
    for (const AddressRange& range : ranges) {
      if (range.contains(word)) return &range;
    }
  }
  return nullptr;
}

bool thread_has_address(const ThreadSnapshot& thread, const std::vector<uint64_t>& addresses) {
  if (addresses.empty()) return false;
  if (std::find(addresses.begin(), addresses.end(), thread.pc) != addresses.end()) return true;
  for (uint64_t word : thread.stack_words) {
    if (std::find(addresses.begin(), addresses.end(), word) != addresses.end()) return true;
  }
  return false;
}

}  // namespace polus
