#include "binary/unwinder.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstring>
#include <optional>
#include <utility>

#include <libdwarf/dwarf.h>
#include <libdwarf/libdwarf.h>
#include <spdlog/spdlog.h>

#include "binary/dwarf_expression.h"
#include "common/format.h"
#include "process/proc_files.h"

namespace polus {

namespace unwind_detail {

// Columns libdwarf keeps per row: comfortably more than the 17 we use, so CFI that mentions
// vector registers (17+) does not make libdwarf fail.
constexpr Dwarf_Half kTableSize = 64;

constexpr uint64_t kPageSize = 4096;
constexpr size_t kScanLimit = 1u << 20;   // bytes of stack one fallback scan may look at
constexpr size_t kRowCacheLimit = 1u << 16;

bool is_callee_saved(int reg) { return reg == 3 || reg == 6 || (reg >= 12 && reg <= 15); }

Registers from_user_regs(const user_regs_struct& r) {
  Registers regs;
  const uint64_t values[kRegCount] = {r.rax, r.rdx, r.rcx, r.rbx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8,
                                      r.r9,  r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.rip};
  for (int i = 0; i < kRegCount; ++i) regs.set(i, values[i]);
  return regs;
}

/// How one register (or the CFA) is recovered, as libdwarf reports a CFI row.
enum class RuleKind : uint8_t {
  kUndefined,      // DW_CFA_undefined: no value (for the return address: outermost frame)
  kSame,           // unchanged from the callee
  kOffset,         // saved at CFA + offset
  kValOffset,      // value is CFA + offset
  kRegister,       // value of another register (for the CFA: register + offset)
  kExpression,     // saved at the address an expression computes (for the CFA: the value)
  kValExpression,  // value is what an expression computes
  kUnsupported,
};

struct Rule {
  RuleKind kind = RuleKind::kSame;
  int reg = 0;
  int64_t offset = 0;
  std::vector<uint8_t> expression;
};

/// Reads of the target's stack and code during one unwind, a page at a time: a frame costs
/// a memcpy, not a syscall. Falls back to an exact read when a page is only partly readable.
class CachedReader : public ExpressionMemory {
 public:
  explicit CachedReader(ProcessMemory& memory) : memory_(memory) {}

  bool read(uint64_t address, void* out, size_t size) override {
    uint64_t page = address & ~(kPageSize - 1);
    if (address - page + size <= kPageSize) {
      auto it = pages_.find(page);
      if (it == pages_.end()) {
        auto fresh = std::make_unique<Page>();
        fresh->size = memory_.read_bytes_fallible(RemoteAddr(page), fresh->bytes.data(), kPageSize);
        it = pages_.emplace(page, std::move(fresh)).first;
      }
      if (address - page + size <= it->second->size) {
        std::memcpy(out, it->second->bytes.data() + (address - page), size);
        return true;
      }
    }
    return memory_.read_bytes_fallible(RemoteAddr(address), out, size) == size;
  }

  std::optional<uint64_t> word(uint64_t address) {
    uint64_t value = 0;
    if (!read(address, &value, sizeof value)) return std::nullopt;
    return value;
  }

 private:
  struct Page {
    std::array<uint8_t, kPageSize> bytes;
    size_t size = 0;
  };
  ProcessMemory& memory_;
  std::unordered_map<uint64_t, std::unique_ptr<Page>> pages_;
};

// ---------------------------------------------------------------------------------------
// libdwarf plumbing.

std::string take_error(Dwarf_Debug dbg, Dwarf_Error& error) {
  std::string message = error ? dwarf_errmsg(error) : "unknown libdwarf error";
  if (error) dwarf_dealloc_error(dbg, error);
  error = nullptr;
  return message;
}

struct FdeList {
  Dwarf_Cie* cies = nullptr;
  Dwarf_Signed cie_count = 0;
  Dwarf_Fde* fdes = nullptr;
  Dwarf_Signed fde_count = 0;
};

/// One ELF file's frame sections, open in libdwarf (the fd stays open: libdwarf reads lazily).
struct CfiSource {
  std::string path;
  int fd = -1;
  Dwarf_Debug dbg = nullptr;
  FdeList eh_frame, debug_frame;

  CfiSource() = default;
  CfiSource(const CfiSource&) = delete;
  CfiSource& operator=(const CfiSource&) = delete;
  ~CfiSource() {
    for (FdeList* list : {&eh_frame, &debug_frame}) {
      if (list->fdes || list->cies) {
        dwarf_fde_cie_list_dealloc(dbg, list->cies, list->cie_count, list->fdes, list->fde_count);
      }
    }
    if (dbg) {
      Dwarf_Error error = nullptr;
      if (dwarf_finish(dbg, &error) == DW_DLV_ERROR) take_error(nullptr, error);
    }
    if (fd >= 0) ::close(fd);
  }
};

/// Opens `fd` (taking ownership) in libdwarf and loads the FDE tables it has. Returns nullptr
/// with `why` if the file has no usable frame section.
std::unique_ptr<CfiSource> open_cfi(int fd, const std::string& path, bool want_eh_frame, std::string& why) {
  auto source = std::make_unique<CfiSource>();
  source->path = path;
  source->fd = fd;
  Dwarf_Error error = nullptr;
  int rc = dwarf_init_b(fd, DW_DLC_READ, DW_GROUPNUMBER_ANY, nullptr, nullptr, &source->dbg, &error);
  if (rc != DW_DLV_OK) {
    why = rc == DW_DLV_ERROR ? "libdwarf cannot read " + path + ": " + take_error(nullptr, error)
                             : path + " has no DWARF or frame sections";
    source->dbg = nullptr;
    return nullptr;
  }
  Dwarf_Debug dbg = source->dbg;
  dwarf_set_frame_rule_table_size(dbg, kTableSize);
  dwarf_set_frame_rule_initial_value(dbg, DW_FRAME_SAME_VAL);
  dwarf_set_frame_cfa_value(dbg, DW_FRAME_CFA_COL3);
  dwarf_set_frame_same_value(dbg, DW_FRAME_SAME_VAL);
  dwarf_set_frame_undefined_value(dbg, DW_FRAME_UNDEFINED_VAL);

  auto load = [&](FdeList& list, bool eh, const char* name) {
    int r = eh ? dwarf_get_fde_list_eh(dbg, &list.cies, &list.cie_count, &list.fdes, &list.fde_count, &error)
               : dwarf_get_fde_list(dbg, &list.cies, &list.cie_count, &list.fdes, &list.fde_count, &error);
    if (r == DW_DLV_ERROR) {
      spdlog::warn("ignoring the {} of {}: {}", name, path, take_error(dbg, error));
    }
    if (r != DW_DLV_OK) list = FdeList{};
  };
  if (want_eh_frame) load(source->eh_frame, true, ".eh_frame");
  load(source->debug_frame, false, ".debug_frame");
  if (!source->eh_frame.fdes && !source->debug_frame.fdes) {
    why = path + " has no .eh_frame or .debug_frame";
    return nullptr;
  }
  spdlog::debug("CFI of {}: {} .eh_frame FDEs, {} .debug_frame FDEs", path, source->eh_frame.fde_count,
                source->debug_frame.fde_count);
  return source;
}

}  // namespace unwind_detail

using namespace unwind_detail;

// ---------------------------------------------------------------------------------------

struct Unwinder::ObjectCfi {
  std::string what;   // object path, or "[vdso]"
  uint64_t bias = 0;  // runtime address = link-time address + bias
  std::vector<std::unique_ptr<CfiSource>> sources;  // the object itself, then its debug file
  std::string problem;                              // why there is no CFI at all, if so
};

struct Unwinder::CfiRow {
  Rule cfa;                 // kRegister (register + offset) or kExpression (the CFA's value)
  Rule regs[kRegCount];
  bool signal_frame = false;  // the CIE's augmentation has 'S'
};

namespace {

/// Converts a libdwarf register rule.
Rule convert_rule(const Dwarf_Regtable_Entry3& entry) {
  Rule rule;
  switch (entry.dw_value_type) {
    case DW_EXPR_OFFSET:
      if (entry.dw_offset_relevant) {
        rule.kind = RuleKind::kOffset;
        rule.offset = static_cast<int64_t>(entry.dw_offset_or_block_len);
      } else if (entry.dw_regnum == DW_FRAME_UNDEFINED_VAL) {
        rule.kind = RuleKind::kUndefined;
      } else if (entry.dw_regnum == DW_FRAME_SAME_VAL) {
        rule.kind = RuleKind::kSame;
      } else {
        rule.kind = RuleKind::kRegister;
        rule.reg = entry.dw_regnum;
      }
      break;
    case DW_EXPR_VAL_OFFSET:
      rule.kind = RuleKind::kValOffset;
      rule.offset = static_cast<int64_t>(entry.dw_offset_or_block_len);
      break;
    case DW_EXPR_EXPRESSION:
    case DW_EXPR_VAL_EXPRESSION: {
      rule.kind = entry.dw_value_type == DW_EXPR_EXPRESSION ? RuleKind::kExpression : RuleKind::kValExpression;
      auto* bytes = static_cast<const uint8_t*>(entry.dw_block_ptr);
      if (bytes) rule.expression.assign(bytes, bytes + entry.dw_offset_or_block_len);
      break;
    }
    default:
      rule.kind = RuleKind::kUnsupported;
      break;
  }
  return rule;
}

/// The CFA rule: DW_CFA_def_cfa (register + offset) or DW_CFA_def_cfa_expression, whose
/// expression computes the CFA itself (libdwarf reports it as DW_EXPR_EXPRESSION).
Rule convert_cfa_rule(const Dwarf_Regtable_Entry3& entry) {
  Rule rule;
  if (entry.dw_value_type == DW_EXPR_OFFSET && entry.dw_regnum < kRegCount) {
    rule.kind = RuleKind::kRegister;
    rule.reg = entry.dw_regnum;
    rule.offset = entry.dw_offset_relevant ? static_cast<int64_t>(entry.dw_offset_or_block_len) : 0;
  } else if (entry.dw_value_type == DW_EXPR_EXPRESSION || entry.dw_value_type == DW_EXPR_VAL_EXPRESSION) {
    rule.kind = RuleKind::kExpression;
    auto* bytes = static_cast<const uint8_t*>(entry.dw_block_ptr);
    if (bytes) rule.expression.assign(bytes, bytes + entry.dw_offset_or_block_len);
  } else {
    rule.kind = RuleKind::kUnsupported;
  }
  return rule;
}

/// Fills `row` with the CFI row of `fde` at link-time address `pc`.
bool build_row(Dwarf_Debug dbg, Dwarf_Fde fde, Dwarf_Addr pc, Unwinder::CfiRow& row, std::string& why) {
  std::vector<Dwarf_Regtable_Entry3> entries(kTableSize);
  Dwarf_Regtable3 table{};
  table.rt3_reg_table_size = kTableSize;
  table.rt3_rules = entries.data();
  Dwarf_Addr row_pc = 0;
  Dwarf_Error error = nullptr;
  if (dwarf_get_fde_info_for_all_regs3(fde, pc, &table, &row_pc, &error) != DW_DLV_OK) {
    why = "libdwarf cannot compute the CFI row: " + take_error(dbg, error);
    return false;
  }
  row.cfa = convert_cfa_rule(table.rt3_cfa_rule);
  for (int reg = 0; reg < kRegCount; ++reg) row.regs[reg] = convert_rule(entries[reg]);

  Dwarf_Cie cie = nullptr;
  if (dwarf_get_cie_of_fde(fde, &cie, &error) == DW_DLV_OK) {
    Dwarf_Unsigned bytes = 0, code_align = 0, instructions_length = 0;
    Dwarf_Small version = 0;
    char* augmentation = nullptr;
    Dwarf_Signed data_align = 0;
    Dwarf_Half ra_column = 0, offset_size = 0;
    Dwarf_Ptr instructions = nullptr;
    if (dwarf_get_cie_info_b(cie, &bytes, &version, &augmentation, &code_align, &data_align, &ra_column,
                             &instructions, &instructions_length, &offset_size, &error) == DW_DLV_OK) {
      row.signal_frame = augmentation && augmentation[0] == 'z' && std::strchr(augmentation, 'S') != nullptr;
      if (ra_column != kRip) {
        why = "CFI names register " + std::to_string(ra_column) + " as the return address column";
        return false;
      }
    } else if (error) {
      take_error(dbg, error);
    }
  } else if (error) {
    take_error(dbg, error);
  }
  return true;
}

bool is_sigreturn_trampoline(const uint8_t* code) {
  // mov $15 (__NR_rt_sigreturn), %rax; syscall — glibc's __restore_rt (and gdb's signature of it).
  static const uint8_t kCode[] = {0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05};
  return std::memcmp(code, kCode, sizeof kCode) == 0;
}

std::string object_label(const ProcessSymbols& symbols, uint64_t pc) {
  if (const LoadedObject* object = symbols.object_containing(RemoteAddr(pc))) return object->path;
  const auto& maps = symbols.maps();
  auto after = std::upper_bound(maps.begin(), maps.end(), pc,
                                [](uint64_t value, const MappedRegion& r) { return value < r.start; });
  if (after != maps.begin() && std::prev(after)->contains(pc)) {
    const MappedRegion& region = *std::prev(after);
    return region.path.empty() ? "an anonymous executable mapping" : region.path;
  }
  return "an unknown mapping";
}

}  // namespace

bool code_ends_with_call(const uint8_t* bytes, size_t size) {
  auto at = [&](size_t back) -> int { return back <= size ? bytes[size - back] : -1; };
  auto call_modrm = [](int modrm) { return modrm >= 0 && ((modrm >> 3) & 7) == 2; };
  if (at(5) == 0xe8) return true;  // call rel32
  if (at(2) == 0xff && call_modrm(at(1))) {  // call *%reg, call *(%reg)
    int mod = at(1) >> 6, rm = at(1) & 7;
    if (mod == 3 || (mod == 0 && rm != 4 && rm != 5)) return true;
  }
  if (at(3) == 0xff && call_modrm(at(2))) {  // call *disp8(%reg), call *(%base,%index,s)
    int mod = at(2) >> 6, rm = at(2) & 7;
    if (mod == 1 && rm != 4) return true;
    if (mod == 0 && rm == 4 && (at(1) & 7) != 5) return true;
  }
  if (at(4) == 0xff && call_modrm(at(3))) {  // call *disp8(%base,%index,s)
    int mod = at(3) >> 6, rm = at(3) & 7;
    if (mod == 1 && rm == 4) return true;
  }
  if (at(6) == 0xff && call_modrm(at(5))) {  // call *disp32(%rip), call *disp32(%reg)
    int mod = at(5) >> 6, rm = at(5) & 7;
    if ((mod == 0 && rm == 5) || (mod == 2 && rm != 4)) return true;
  }
  if (at(7) == 0xff && call_modrm(at(6))) {  // call *disp32(%base,%index,s), call *disp32(,%index,s)
    int mod = at(6) >> 6, rm = at(6) & 7;
    if (rm == 4 && (mod == 2 || (mod == 0 && (at(5) & 7) == 5))) return true;
  }
  return false;
}

// ---------------------------------------------------------------------------------------
// The walk.

/// One unwind: the registers of the frame being looked at and the result so far.
struct Unwinder::Walker {
  // kNeedsScan: there is CFI, but it builds on a register whose value is unknown (only after
  // a scan resumed the walk with nothing but sp and pc): as good as no CFI.
  enum class Status { kOk, kNoCfi, kNeedsScan, kFailed };
  struct Step {
    Status status = Status::kNoCfi;
    uint64_t cfa = 0;
    Registers next;              // the caller's registers; next.value[kRip] is its pc
    bool signal_frame = false;   // this frame is a sigreturn trampoline
    bool outermost = false;      // the return address is undefined
    std::string why;
  };
  struct Candidate {
    uint64_t slot = 0;
    uint64_t value = 0;
  };

  Walker(Unwinder& unwinder, ProcessMemory& memory, size_t max_frames)
      : self(unwinder), memory(memory), reader(memory), max_frames(max_frames) {}

  Unwinder& self;
  ProcessMemory& memory;
  CachedReader reader;
  size_t max_frames;
  UnwindResult result;

  void note(const std::string& text) {
    if (!result.note.empty()) result.note += "; ";
    result.note += text;
  }

  const MappedRegion* region_of(uint64_t address) const {
    const auto& maps = self.symbols_->maps();
    auto after = std::upper_bound(maps.begin(), maps.end(), address,
                                  [](uint64_t value, const MappedRegion& r) { return value < r.start; });
    if (after == maps.begin() || !std::prev(after)->contains(address)) return nullptr;
    return &*std::prev(after);
  }

  bool executable(uint64_t address) const {
    const MappedRegion* region = region_of(address);
    return region && region->executable;
  }

  /// Unwinds one frame with CFI (or the sigreturn layout when a trampoline has none).
  Step step(const Registers& regs, bool pc_is_return) {
    Step st;
    uint64_t pc = regs.value[kRip];
    const CfiRow* row = self.find_row(memory, pc_is_return ? pc - 1 : pc);
    if (!row) return decode_sigreturn_without_cfi(regs);

    st.signal_frame = row->signal_frame;
    // The CFA.
    if (row->cfa.kind == RuleKind::kRegister) {
      if (!regs.has(row->cfa.reg)) {
        st.status = Status::kNeedsScan;
        st.why = "the CFA at pc " + hex(pc) + " is based on register " + std::to_string(row->cfa.reg) +
                 ", whose value is unknown";
        return st;
      }
      st.cfa = regs.value[row->cfa.reg] + static_cast<uint64_t>(row->cfa.offset);
    } else if (row->cfa.kind == RuleKind::kExpression) {
      std::string why;
      auto cfa = evaluate(row->cfa.expression, regs, reader, std::nullopt, why);
      if (!cfa) {
        st.status = Status::kFailed;
        st.why = "cannot compute the CFA at pc " + hex(pc) + ": " + why;
        return st;
      }
      st.cfa = *cfa;
    } else {
      st.status = Status::kFailed;
      st.why = "unsupported CFA rule at pc " + hex(pc);
      return st;
    }

    // The caller's registers.
    std::string ra_problem;
    for (int reg = 0; reg < kRegCount; ++reg) {
      const Rule& rule = row->regs[reg];
      std::string why;
      std::optional<uint64_t> value;
      switch (rule.kind) {
        case RuleKind::kUndefined:
          if (reg == kRip) st.outermost = true;
          break;
        case RuleKind::kSame:
          // Only callee-saved registers survive a call; a signal frame restores everything.
          if (reg != kRip && regs.has(reg) && (is_callee_saved(reg) || st.signal_frame)) value = regs.value[reg];
          if (reg == kRip) why = "no rule for the return address";
          break;
        case RuleKind::kOffset:
          value = reader.word(st.cfa + static_cast<uint64_t>(rule.offset));
          if (!value) why = "cannot read " + hex(st.cfa + static_cast<uint64_t>(rule.offset));
          break;
        case RuleKind::kValOffset:
          value = st.cfa + static_cast<uint64_t>(rule.offset);
          break;
        case RuleKind::kRegister:
          if (regs.has(rule.reg)) value = regs.value[rule.reg];
          else why = "register " + std::to_string(rule.reg) + " is unknown";
          break;
        case RuleKind::kExpression:
          if (auto address = evaluate(rule.expression, regs, reader, st.cfa, why)) {
            value = reader.word(*address);
            if (!value) why = "cannot read " + hex(*address);
          }
          break;
        case RuleKind::kValExpression:
          value = evaluate(rule.expression, regs, reader, st.cfa, why);
          break;
        case RuleKind::kUnsupported:
          why = "unsupported register rule";
          break;
      }
      if (value) st.next.set(reg, *value);
      if (reg == kRip && !value && !st.outermost) ra_problem = why;
    }
    // The caller's sp is the CFA unless the CFI says otherwise (signal frames restore it).
    const Rule& sp_rule = row->regs[kRsp];
    if (sp_rule.kind == RuleKind::kSame || sp_rule.kind == RuleKind::kUndefined || !st.next.has(kRsp)) {
      st.next.set(kRsp, st.cfa);
    }
    if (!st.outermost && !st.next.has(kRip)) {
      st.status = Status::kFailed;
      st.why = "cannot find the return address of the frame at pc " + hex(pc) + ": " + ra_problem;
      return st;
    }
    st.status = Status::kOk;
    return st;
  }

  /// A pc without CFI that is a sigreturn trampoline: the kernel's rt_sigframe is below the
  /// interrupted stack; once the handler has returned into the trampoline (popping pretcode),
  /// sp points at its ucontext_t, whose mcontext holds every register of the interrupted code.
  Step decode_sigreturn_without_cfi(const Registers& regs) {
    Step st;
    uint8_t code[9];
    if (!regs.has(kRsp) || !reader.read(regs.value[kRip], code, sizeof code) || !is_sigreturn_trampoline(code)) {
      return st;  // kNoCfi
    }
    uint64_t gregs_at = regs.value[kRsp] + offsetof(ucontext_t, uc_mcontext) + offsetof(mcontext_t, gregs);
    greg_t gregs[NGREG];
    if (!reader.read(gregs_at, gregs, sizeof gregs)) {
      st.status = Status::kFailed;
      st.why = "cannot read the ucontext_t of the signal frame at " + hex(regs.value[kRsp]);
      return st;
    }
    static const int kGreg[kRegCount] = {REG_RAX, REG_RDX, REG_RCX, REG_RBX, REG_RSI, REG_RDI,
                                         REG_RBP, REG_RSP, REG_R8,  REG_R9,  REG_R10, REG_R11,
                                         REG_R12, REG_R13, REG_R14, REG_R15, REG_RIP};
    for (int reg = 0; reg < kRegCount; ++reg) st.next.set(reg, static_cast<uint64_t>(gregs[kGreg[reg]]));
    st.cfa = st.next.value[kRsp];
    st.signal_frame = true;
    st.status = Status::kOk;
    return st;
  }

  /// The next stack word at or above `from` that looks like a live return address: it points
  /// into an executable mapping of a known ELF object, right after a call instruction.
  std::optional<Candidate> next_candidate(uint64_t from, uint64_t limit) {
    for (uint64_t slot = (from + 7) & ~7ull; slot + 8 <= limit; slot += 8) {
      auto value = reader.word(slot);
      if (!value) return std::nullopt;  // the end of the readable stack
      if (*value < kPageSize || !executable(*value)) continue;
      if (!self.symbols_->object_containing(RemoteAddr(*value))) continue;
      uint8_t code[7];
      if (!reader.read(*value - sizeof code, code, sizeof code)) continue;
      if (!code_ends_with_call(code, sizeof code)) continue;
      return Candidate{slot, *value};
    }
    return std::nullopt;
  }

  void push(uint64_t pc, uint64_t cfa, bool from_scan, bool pc_is_return, uint64_t scanned_from = 0) {
    result.frames.push_back(StackFrame{pc, cfa, from_scan, !pc_is_return, scanned_from});
  }

  UnwindResult run(Registers regs) {
    bool pc_is_return = false;  // frame 0's pc is where the thread is, not a return address
    bool from_scan = false;
    uint64_t previous_cfa = 0;
    for (;;) {
      uint64_t pc = regs.value[kRip];
      if (result.frames.size() >= max_frames) {
        note("stopped after " + std::to_string(max_frames) + " frames");
        break;
      }
      if (pc == 0) {
        if (result.frames.empty()) {
          note("the thread's pc is 0");
        } else {
          result.complete = true;  // a zero return address ends the chain
        }
        break;
      }
      // Frame 0's pc is a fact; a computed one outside every executable mapping is not.
      if (!result.frames.empty() && !executable(pc)) {
        note("return address " + hex(pc) + " is outside any executable mapping");
        break;
      }

      Step st = step(regs, pc_is_return);
      if (st.status == Status::kOk) {
        bool increasing = result.frames.empty() || st.cfa > previous_cfa || st.signal_frame;
        push(pc, st.cfa, from_scan, pc_is_return);
        if (!increasing) {
          note("CFA " + hex(st.cfa) + " at pc " + hex(pc) + " does not increase; stopped");
          break;
        }
        if (st.outermost) {
          result.complete = true;
          break;
        }
        regs = st.next;
        pc_is_return = !st.signal_frame;  // the pc after a signal frame is the interrupted one
        from_scan = false;
        previous_cfa = st.cfa;
        continue;
      }
      if (st.status == Status::kFailed) {
        push(pc, st.cfa, from_scan, pc_is_return);
        note(st.why);
        break;
      }

      // No (usable) CFI covers this pc: scan the stack above sp for the caller's return address.
      result.used_scan = true;
      if (st.status == Status::kNeedsScan) {
        note(st.why + "; scanned");
      } else {
        note("no CFI for pc " + hex(pc) + " in " + object_label(*self.symbols_, pc) + "; scanned");
      }
      if (!regs.has(kRsp)) {
        push(pc, 0, from_scan, pc_is_return);
        note("no stack pointer to scan from");
        break;
      }
      uint64_t cursor = regs.value[kRsp];
      uint64_t scan_start = cursor;  // where the scan for the current frame's caller began
      uint64_t limit = cursor + kScanLimit;
      if (const MappedRegion* stack = region_of(cursor)) limit = std::min(limit, stack->end);
      bool resumed = false;
      bool stop = false;
      while (!resumed && !stop) {
        auto candidate = next_candidate(cursor, limit);
        if (!candidate) {
          push(pc, 0, from_scan, pc_is_return, scan_start);
          note("the scan found no return address above " + hex(regs.value[kRsp]));
          stop = true;
          break;
        }
        Registers trial;
        trial.set(kRsp, candidate->slot + 8);
        trial.set(kRip, candidate->value);
        Step check = step(trial, true);
        bool plausible = check.status == Status::kOk && check.cfa > candidate->slot &&
                         (check.outermost || check.next.value[kRip] == 0 || executable(check.next.value[kRip]));
        if (plausible) {
          push(pc, candidate->slot + 8, from_scan, pc_is_return, scan_start);
          regs = trial;
          pc_is_return = true;
          from_scan = true;
          previous_cfa = candidate->slot + 8;
          resumed = true;
        } else if (check.status == Status::kNoCfi || check.status == Status::kNeedsScan) {
          // A return address into code whose CFI cannot be used from here (none, or based on
          // a register the scan cannot know, e.g. an rbp-based frame): a frame of its own,
          // whose caller the scan goes on looking for.
          push(pc, candidate->slot + 8, from_scan, pc_is_return, scan_start);
          pc = candidate->value;
          from_scan = true;
          pc_is_return = true;
          note((check.status == Status::kNoCfi ? "no CFI for pc " + hex(pc) + " in " + object_label(*self.symbols_, pc)
                                               : check.why) +
               "; scanned");
          if (result.frames.size() >= max_frames) {
            note("stopped after " + std::to_string(max_frames) + " frames");
            stop = true;
          }
          cursor = candidate->slot + 8;
          scan_start = cursor;
        } else {
          cursor = candidate->slot + 8;  // a stale value in a dead slot: keep looking
        }
      }
      if (stop) break;
    }
    return std::move(result);
  }
};

// ---------------------------------------------------------------------------------------

Unwinder::Unwinder(const ProcessSymbols& symbols, pid_t pid) : symbols_(&symbols), pid_(pid) {}

Unwinder::~Unwinder() = default;

void Unwinder::clear_cache() {
  rows_.clear();
  objects_.clear();
}

UnwindResult Unwinder::unwind(ProcessMemory& memory, const user_regs_struct& regs, size_t max_frames) {
  Walker walker(*this, memory, max_frames);
  return walker.run(from_user_regs(regs));
}

const Unwinder::CfiRow* Unwinder::find_row(ProcessMemory& memory, uint64_t pc) {
  if (auto it = rows_.find(pc); it != rows_.end()) return it->second.get();
  if (rows_.size() >= kRowCacheLimit) rows_.clear();

  std::unique_ptr<CfiRow> row;
  if (ObjectCfi* object = object_cfi(memory, pc)) {
    Dwarf_Addr link_pc = pc - object->bias;
    for (const auto& source : object->sources) {
      for (FdeList* list : {&source->eh_frame, &source->debug_frame}) {
        if (!list->fdes) continue;
        Dwarf_Fde fde = nullptr;
        Dwarf_Addr low = 0, high = 0;
        Dwarf_Error error = nullptr;
        int rc = dwarf_get_fde_at_pc(list->fdes, link_pc, &fde, &low, &high, &error);
        if (rc == DW_DLV_ERROR) {
          spdlog::debug("FDE lookup at {} in {}: {}", hex(link_pc), source->path, take_error(source->dbg, error));
        }
        if (rc != DW_DLV_OK) continue;
        auto candidate = std::make_unique<CfiRow>();
        std::string why;
        if (build_row(source->dbg, fde, link_pc, *candidate, why)) {
          row = std::move(candidate);
        } else {
          spdlog::debug("CFI at {} in {}: {}", hex(pc), source->path, why);
        }
        break;
      }
      if (row) break;
    }
  }
  const CfiRow* result = row.get();
  rows_.emplace(pc, std::move(row));
  return result;
}

namespace {

/// Opens the file of `object` as the target maps it (open_mapped_file: /proc/PID/root, the
/// path itself, /proc/PID/map_files, /proc/PID/exe); a file counts only if its build-id (or,
/// without one, its inode) is the mapped one. fd = -1 if none could be opened.
MappedFile open_object_file(const LoadedObject& object, const std::vector<MappedRegion>& maps, pid_t pid) {
  auto region = std::find_if(maps.begin(), maps.end(), [&](const MappedRegion& r) { return r.path == object.path; });
  if (region == maps.end()) return MappedFile{};  // not mapped (objects come from these maps)
  SameBuildCheck same_build;
  if (!object.build_id_hex.empty()) {
    same_build = [&object](const std::string& path) {
      try {
        return read_build_id(path) == object.build_id_hex;
      } catch (const std::exception&) {
        return false;
      }
    };
  }
  MappedFile opened = open_mapped_file(pid, *region, object.is_main_executable, same_build);
  // Without a build-id only the inode can tell, and overlayfs may report another one: such a
  // file is used if nothing better turns up (as ProcessSymbols does), with a warning.
  if (opened.unverified) {
    spdlog::warn("{} on disk may not be the file the process mapped (different inode, no build-id); "
                 "unwinding with its CFI anyway",
                 object.path);
  }
  return opened;
}

/// The vdso is not a file: copy its image out of the target into a memfd libdwarf can read.
int vdso_image_fd(ProcessMemory& memory, const MappedRegion& region, uint64_t& bias, std::string& why) {
  std::vector<uint8_t> image(region.end - region.start);
  if (memory.read_bytes_fallible(RemoteAddr(region.start), image.data(), image.size()) != image.size()) {
    why = "cannot read the vdso";
    return -1;
  }
  Elf64_Ehdr header;
  if (image.size() < sizeof header || std::memcmp(image.data(), ELFMAG, SELFMAG) != 0) {
    why = "the vdso is not an ELF image";
    return -1;
  }
  std::memcpy(&header, image.data(), sizeof header);
  bias = region.start;
  for (unsigned i = 0; i < header.e_phnum; ++i) {
    Elf64_Phdr phdr;
    uint64_t at = header.e_phoff + uint64_t{i} * header.e_phentsize;
    if (at + sizeof phdr > image.size()) break;
    std::memcpy(&phdr, image.data() + at, sizeof phdr);
    if (phdr.p_type == PT_LOAD) {
      bias = region.start + (phdr.p_offset & ~(kPageSize - 1)) - (phdr.p_vaddr & ~(kPageSize - 1));
      break;
    }
  }
  int fd = ::memfd_create("polus-vdso", MFD_CLOEXEC);
  if (fd < 0) {
    why = std::string("memfd_create failed: ") + std::strerror(errno);
    return -1;
  }
  if (::write(fd, image.data(), image.size()) != static_cast<ssize_t>(image.size())) {
    why = "cannot copy the vdso into a memfd";
    ::close(fd);
    return -1;
  }
  return fd;
}

}  // namespace

Unwinder::ObjectCfi* Unwinder::object_cfi(ProcessMemory& memory, uint64_t pc) {
  const LoadedObject* object = symbols_->object_containing(RemoteAddr(pc));
  const MappedRegion* vdso = nullptr;
  std::string key;
  if (object) {
    key = object->path;
  } else {
    for (const MappedRegion& region : symbols_->maps()) {
      if (region.contains(pc) && region.path == "[vdso]") vdso = &region;
    }
    if (!vdso) return nullptr;
    key = "[vdso]";
  }
  if (auto it = objects_.find(key); it != objects_.end()) return it->second.get();

  auto cfi = std::make_unique<ObjectCfi>();
  cfi->what = key;
  std::string why;
  if (object) {
    cfi->bias = object->load_bias;
    MappedFile opened = open_object_file(*object, symbols_->maps(), pid_);
    if (opened.fd < 0) {
      why = "cannot open " + object->path + " (or it is not the build the process mapped)";
    } else if (auto source = open_cfi(opened.fd, opened.path, true, why)) {
      cfi->sources.push_back(std::move(source));
    }
    // .debug_frame from a separate debug file, for code the object's .eh_frame misses.
    if (!object->symbols_from.empty() && object->symbols_from != object->path) {
      int debug_fd = ::open(object->symbols_from.c_str(), O_RDONLY | O_CLOEXEC);
      std::string debug_why;
      if (debug_fd >= 0) {
        if (auto source = open_cfi(debug_fd, object->symbols_from, false, debug_why)) {
          cfi->sources.push_back(std::move(source));
        }
      }
    }
  } else {
    int fd = vdso_image_fd(memory, *vdso, cfi->bias, why);
    if (fd >= 0) {
      if (auto source = open_cfi(fd, "[vdso]", true, why)) cfi->sources.push_back(std::move(source));
    }
  }
  if (cfi->sources.empty()) {
    cfi->problem = why;
    spdlog::warn("no CFI for {}: {}; its frames will be found by scanning the stack", key, why);
  }
  ObjectCfi* result = cfi.get();
  objects_.emplace(key, std::move(cfi));
  return result;
}

}  // namespace polus
