#include "update/redirects.h"

#include <algorithm>
#include <cstring>

#include <spdlog/spdlog.h>

#include "common/format.h"

namespace polus {

namespace {

uint64_t next_symbol_after(const ProcessSymbols& symbols, const Symbol& symbol) {
  uint64_t next = 0;
  for (const LoadedObject& object : symbols.objects()) {
    if (object.path != symbol.object_path) continue;
    for (const Symbol& s : symbols.symbols_of(object)) {
      uint64_t a = s.address.address();
      if (a > symbol.address.address() && (next == 0 || a < next)) next = a;
    }
  }
  return next;
}

}  // namespace

PrologueAnalysis analyze_function_entry(const ProcessSymbols& symbols, ProcessMemory& memory, const Symbol& symbol) {
  uint64_t address = symbol.address.address();
  std::vector<uint8_t> code(symbol.size + 16);
  code.resize(memory.read_bytes_fallible(RemoteAddr(address), code.data(), code.size()));
  return analyze_prologue(code, address, symbol.size, next_symbol_after(symbols, symbol), symbol.qualified_name());
}

std::string jump_busy_reason(const PrologueAnalysis& a, const std::string& name, const ThreadSnapshot& thread) {
  const std::string who = "thread " + std::to_string(thread.tid);
  if (std::find(a.interior_boundaries.begin(), a.interior_boundaries.end(), thread.pc) != a.interior_boundaries.end()) {
    return who + " is executing the first bytes of " + name;
  }
  if (thread_has_address(thread, a.interior_boundaries)) {
    return who + " has the first bytes of " + name + " on its stack (a return address or an interrupted pc)";
  }
  if (a.requires_inactive_function) {
    AddressRange whole{a.function, a.function + std::max<uint64_t>(a.function_size, 1), name};
    if (thread_touches(thread, {whole})) return who + " is inside " + name + " and " + a.inactive_reason;
  }
  return "";
}

std::vector<JumpWrite> jump_writes(const polus_redirect_record& r) {
  std::vector<JumpWrite> writes;
  if (r.flags & POLUS_REDIRECT_REUSED_TRAMPOLINE) {
    std::vector<uint8_t> target(8), previous(8);
    std::memcpy(target.data(), &r.new_function, 8);
    std::memcpy(previous.data(), &r.previous_target, 8);
    writes.push_back({r.trampoline + 6, target, previous});  // the .quad of `jmp *0(%rip)`
  } else {
    if (r.trampoline) writes.push_back({r.trampoline, encode_trampoline(r.new_function), {}});
    std::vector<uint8_t> jump = encode_jump(r.patch_site, r.trampoline ? r.trampoline : r.new_function);
    writes.push_back({r.patch_site, jump, std::vector<uint8_t>(r.saved_bytes, r.saved_bytes + jump.size())});
  }
  return writes;
}

void write_all(ProcessMemory& memory, const std::vector<JumpWrite>& writes) {
  for (size_t i = 0; i < writes.size(); ++i) {
    try {
      memory.write_bytes(RemoteAddr(writes[i].address), writes[i].bytes.data(), writes[i].bytes.size());
    } catch (...) {
      for (size_t j = i; j-- > 0;) {
        if (writes[j].original.empty()) continue;
        try {
          memory.write_bytes(RemoteAddr(writes[j].address), writes[j].original.data(), writes[j].original.size());
        } catch (const std::exception& e) {
          spdlog::error("could not put back the bytes at {} after a failed write: {}", hex(writes[j].address), e.what());
        }
      }
      throw;
    }
  }
}

void write_jumps(ProcessMemory& memory, const PatchRecordView& record) {
  std::vector<JumpWrite> writes;
  for (const polus_redirect_record& r : record.redirects) {
    for (JumpWrite& write : jump_writes(r)) writes.push_back(std::move(write));
  }
  write_all(memory, writes);
}

void restore_jumps(ProcessMemory& memory, const PatchRecordView& record) {
  for (auto r = record.redirects.rbegin(); r != record.redirects.rend(); ++r) {
    memory.write_bytes(RemoteAddr(r->patch_site), r->saved_bytes, r->saved_length);
    if (r->flags & POLUS_REDIRECT_REUSED_TRAMPOLINE) memory.write(RemotePtr<uint64_t>(r->trampoline + 6), r->previous_target);
  }
}

}  // namespace polus
