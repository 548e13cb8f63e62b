#include "binary/inlined_calls.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <set>

#include <libdwarf/dwarf.h>
#include <libdwarf/libdwarf.h>
#include <spdlog/spdlog.h>

#include "binary/symbol_match.h"

namespace polus {

namespace {

/// One DWARF file open in libdwarf, closed with it.
class DwarfFile {
 public:
  explicit DwarfFile(const std::string& path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) return;
    Dwarf_Error error = nullptr;
    if (dwarf_init_b(fd_, DW_DLC_READ, DW_GROUPNUMBER_ANY, nullptr, nullptr, &dbg_, &error) != DW_DLV_OK) {
      if (error) dwarf_dealloc(nullptr, error, DW_DLA_ERROR);
      dbg_ = nullptr;
    }
  }
  ~DwarfFile() {
    if (dbg_) dwarf_finish(dbg_, nullptr);
    if (fd_ >= 0) ::close(fd_);
  }
  DwarfFile(const DwarfFile&) = delete;
  DwarfFile& operator=(const DwarfFile&) = delete;
  Dwarf_Debug get() const { return dbg_; }

 private:
  int fd_ = -1;
  Dwarf_Debug dbg_ = nullptr;
};

/// What one walk over every DIE collects.
struct Walk {
  Dwarf_Debug dbg = nullptr;
  uint64_t function_link = 0;       // the function's link-time address
  std::string linkage_name;         // its symbol name, to match abstract DIEs by name
  bool match_by_name = false;       // only for global symbols (a static name is per file)
  std::set<Dwarf_Off> origins;      // the DIEs that stand for the function
  struct Copy {
    Dwarf_Off origin = 0;
    Dwarf_Off caller = 0;           // the enclosing concrete subprogram
    uint64_t caller_low = 0;        // its link-time entry, 0 if none
    std::string caller_name;        // its DWARF name, for when it has no entry
    uint64_t low = 0;               // the copy's link-time start, 0 if unknown
  };
  std::vector<Copy> copies;
  size_t dies = 0;
};

constexpr size_t kMaxDies = 20'000'000;  // a bound for huge debug files: ~seconds of reading

std::optional<Dwarf_Off> reference(Dwarf_Debug dbg, Dwarf_Die die, Dwarf_Half name) {
  Dwarf_Attribute attr = nullptr;
  if (dwarf_attr(die, name, &attr, nullptr) != DW_DLV_OK) return std::nullopt;
  Dwarf_Off offset = 0;
  int rc = dwarf_global_formref(attr, &offset, nullptr);
  dwarf_dealloc(dbg, attr, DW_DLA_ATTR);
  return rc == DW_DLV_OK ? std::optional<Dwarf_Off>(offset) : std::nullopt;
}

std::string string_attribute(Dwarf_Debug dbg, Dwarf_Die die, Dwarf_Half name) {
  Dwarf_Attribute attr = nullptr;
  if (dwarf_attr(die, name, &attr, nullptr) != DW_DLV_OK) return "";
  char* text = nullptr;
  std::string result;
  if (dwarf_formstring(attr, &text, nullptr) == DW_DLV_OK && text) result = text;
  dwarf_dealloc(dbg, attr, DW_DLA_ATTR);
  return result;
}

bool has_attribute(Dwarf_Die die, Dwarf_Half name) {
  Dwarf_Bool present = 0;
  return dwarf_hasattr(die, name, &present, nullptr) == DW_DLV_OK && present;
}

uint64_t low_pc(Dwarf_Die die) {
  Dwarf_Addr low = 0;
  return dwarf_lowpc(die, &low, nullptr) == DW_DLV_OK ? low : 0;
}

/// The linkage name of a subprogram DIE, following DW_AT_specification / DW_AT_abstract_origin
/// (a definition outside its class, an abstract instance) a few steps.
std::string linkage_name_of(Dwarf_Debug dbg, Dwarf_Die die, std::string* plain_name = nullptr) {
  Dwarf_Die current = die;
  std::string result;
  for (int step = 0; step < 4 && current; ++step) {
    result = string_attribute(dbg, current, DW_AT_linkage_name);
    if (result.empty()) result = string_attribute(dbg, current, DW_AT_MIPS_linkage_name);
    if (plain_name && plain_name->empty()) *plain_name = string_attribute(dbg, current, DW_AT_name);
    std::optional<Dwarf_Off> next = reference(dbg, current, DW_AT_specification);
    if (!next) next = reference(dbg, current, DW_AT_abstract_origin);
    Dwarf_Die following = nullptr;
    bool ok = result.empty() && next && dwarf_offdie_b(dbg, *next, true, &following, nullptr) == DW_DLV_OK;
    if (current != die) dwarf_dealloc(dbg, current, DW_DLA_DIE);
    current = ok ? following : nullptr;
    if (!result.empty()) break;
  }
  if (current && current != die) dwarf_dealloc(dbg, current, DW_DLA_DIE);
  return result;
}

/// Visits `die` and its subtree; `caller` is the nearest enclosing concrete subprogram.
void visit(Walk& walk, Dwarf_Die die, Dwarf_Die caller) {
  if (++walk.dies > kMaxDies) return;
  Dwarf_Half tag = 0;
  dwarf_tag(die, &tag, nullptr);
  Dwarf_Off offset = 0;
  dwarf_dieoffset(die, &offset, nullptr);
  Dwarf_Die enclosing = caller;
  if (tag == DW_TAG_subprogram) {
    const uint64_t low = low_pc(die);
    if (low != 0) {
      enclosing = die;
      if (low == walk.function_link) {
        walk.origins.insert(reference(walk.dbg, die, DW_AT_abstract_origin).value_or(offset));
      }
    } else if (walk.match_by_name && has_attribute(die, DW_AT_inline)) {
      std::string name;
      std::string linkage = linkage_name_of(walk.dbg, die, &name);
      if (linkage == walk.linkage_name || (linkage.empty() && name == walk.linkage_name)) walk.origins.insert(offset);
    }
  } else if (tag == DW_TAG_inlined_subroutine && caller) {
    if (std::optional<Dwarf_Off> origin = reference(walk.dbg, die, DW_AT_abstract_origin)) {
      Walk::Copy copy;
      copy.origin = *origin;
      dwarf_dieoffset(caller, &copy.caller, nullptr);
      copy.caller_low = low_pc(caller);
      if (copy.caller_low == 0) linkage_name_of(walk.dbg, caller, &copy.caller_name);
      copy.low = low_pc(die);
      if (copy.low == 0) {
        Dwarf_Attribute attr = nullptr;
        Dwarf_Addr entry = 0;
        if (dwarf_attr(die, DW_AT_entry_pc, &attr, nullptr) == DW_DLV_OK) {
          if (dwarf_formaddr(attr, &entry, nullptr) == DW_DLV_OK) copy.low = entry;
          dwarf_dealloc(walk.dbg, attr, DW_DLA_ATTR);
        }
      }
      walk.copies.push_back(copy);
    }
  }
  Dwarf_Die child = nullptr;
  if (dwarf_child(die, &child, nullptr) != DW_DLV_OK) return;
  while (child) {
    visit(walk, child, enclosing);
    Dwarf_Die sibling = nullptr;
    int rc = dwarf_siblingof_b(walk.dbg, child, true, &sibling, nullptr);
    dwarf_dealloc(walk.dbg, child, DW_DLA_DIE);
    child = rc == DW_DLV_OK ? sibling : nullptr;
  }
}

}  // namespace

InliningReport find_inlined_calls(const ProcessSymbols& symbols, const LoadedObject& object, const Symbol& function) {
  InliningReport report;
  const std::string& path = object.symbols_from.empty() ? object.path : object.symbols_from;
  DwarfFile file(path);
  if (!file.get()) return report;
  Walk walk;
  walk.dbg = file.get();
  walk.function_link = function.address.address() - object.load_bias;
  walk.linkage_name = function.name;
  walk.match_by_name = function.is_global;
  for (;;) {
    Dwarf_Unsigned next_header = 0;
    Dwarf_Half header_type = 0;
    int rc = dwarf_next_cu_header_d(walk.dbg, true, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                    nullptr, &next_header, &header_type, nullptr);
    if (rc != DW_DLV_OK) break;
    report.has_dwarf = true;
    Dwarf_Die cu = nullptr;
    if (dwarf_siblingof_b(walk.dbg, nullptr, true, &cu, nullptr) != DW_DLV_OK) continue;
    visit(walk, cu, nullptr);
    dwarf_dealloc(walk.dbg, cu, DW_DLA_DIE);
    if (walk.dies > kMaxDies) {
      spdlog::warn("{}: stopped reading its debug information after {} entries; inlined copies of {} beyond them "
                   "are not reported", path, kMaxDies, function.qualified_name());
      break;
    }
  }
  std::set<Dwarf_Off> callers_seen;
  for (const Walk::Copy& copy : walk.copies) {
    if (!walk.origins.count(copy.origin) || !callers_seen.insert(copy.caller).second) continue;
    if (copy.caller_low != 0 && copy.caller_low == walk.function_link) continue;  // inlined into itself
    InlinedCall call;
    call.caller_address = copy.caller_low ? copy.caller_low + object.load_bias : 0;
    call.copy_address = copy.low ? copy.low + object.load_bias : 0;
    if (call.caller_address) {
      if (auto symbol = symbols.symbol_containing(RemoteAddr(call.caller_address))) call.caller = symbol->qualified_name();
    }
    if (call.caller.empty()) call.caller = copy.caller_name.empty() ? "?" : display_name(copy.caller_name);
    report.callers.push_back(std::move(call));
  }
  return report;
}

}  // namespace polus
