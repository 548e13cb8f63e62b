// update/redirects.h — writing, checking and taking out the jumps of a patch's redirects
// (internal to the engine): shared by the commit of an apply, a rollback, and the abandon of
// an update whose patch code faulted (which may have to write a rolled-back patch's jumps
// again).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "binary/prologue.h"
#include "binary/stack_scan.h"
#include "binary/symbols.h"
#include "polus/agent_abi.h"
#include "process/process_memory.h"
#include "update/registry.h"

namespace polus {

/// The entry of `symbol`'s function as it is in the target now: where a jump can go and who
/// must not be inside it meanwhile. Throws Error(kUnsafeToPatch) when no jump fits.
PrologueAnalysis analyze_function_entry(const ProcessSymbols& symbols, ProcessMemory& memory, const Symbol& symbol);

/// Why writing a jump over the first bytes `entry` describes is unsafe while `thread` is where
/// it is (pc or a stack word inside those bytes, or inside a function that must be inactive),
/// or "". `name` names the function in the message.
std::string jump_busy_reason(const PrologueAnalysis& entry, const std::string& name, const ThreadSnapshot& thread);

/// One write of a commit, with the bytes it replaces (empty: nothing to put back, a slot
/// nothing jumps to yet).
struct JumpWrite {
  uint64_t address = 0;
  std::vector<uint8_t> bytes, original;
};

/// The writes of redirect `r`, in order: its trampoline slot (when it has one of its own)
/// before the jump that leads to it; for a slot shared with the patch it stacks on, only the
/// slot's target.
std::vector<JumpWrite> jump_writes(const polus_redirect_record& r);

/// Makes `writes` in order (every thread stopped); one that fails puts back the ones before it
/// (so no jump leads into a patch a failed operation unloads) and rethrows.
void write_all(ProcessMemory& memory, const std::vector<JumpWrite>& writes);

/// write_all of every redirect's jump_writes.
void write_jumps(ProcessMemory& memory, const PatchRecordView& record);

/// Puts back what each redirect of `record` overwrote, newest first (every thread stopped).
void restore_jumps(ProcessMemory& memory, const PatchRecordView& record);

}  // namespace polus
