#include "binary/symbols.h"

#include <errno.h>
#include <fcntl.h>
#include <gelf.h>
#include <limits.h>
#include <link.h>
#include <unistd.h>

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <utility>

#include <spdlog/spdlog.h>

#include "binary/debug_files.h"
#include "binary/elf_reader.h"
#include "binary/symbol_match.h"
#include "common/format.h"
#include "polus/error.h"
#include "process/proc_files.h"

namespace polus {

namespace {

constexpr uint64_t kPageSize = 4096;

uint64_t page_down(uint64_t value) { return value & ~(kPageSize - 1); }

std::string strip_deleted(std::string path) {
  constexpr std::string_view kDeleted = " (deleted)";
  if (path.size() > kDeleted.size() && std::string_view(path).ends_with(kDeleted)) {
    path.resize(path.size() - kDeleted.size());
  }
  return path;
}

// ---------------------------------------------------------------------------------------
// Finding the file behind a mapping (open_mapped_file, process/proc_files.h, opens it).

bool has_elf_magic(int fd) {
  unsigned char magic[SELFMAG];
  return ::pread(fd, magic, SELFMAG, 0) == SELFMAG && std::memcmp(magic, ELFMAG, SELFMAG) == 0;
}

std::string main_executable_path(pid_t pid) {
  std::string link = "/proc/" + std::to_string(pid) + "/exe";
  char buffer[PATH_MAX + 1];
  ssize_t length = ::readlink(link.c_str(), buffer, PATH_MAX);
  if (length < 0) {
    if (errno == ENOENT || errno == ESRCH) {
      throw Error(ErrorCode::kNoSuchProcess, "process " + std::to_string(pid) + " does not exist");
    }
    throw_errno("cannot read " + link + " to find the main executable of process " + std::to_string(pid), errno);
  }
  return strip_deleted(std::string(buffer, static_cast<size_t>(length)));
}

/// The runtime address minus the link-time address. Normally the mapping of file offset 0
/// minus the lowest PT_LOAD address (page-aligned): 0 for a non-PIE executable. Otherwise
/// match the lowest mapping to the PT_LOAD segment covering its file offset.
std::optional<uint64_t> compute_load_bias(const std::vector<const MappedRegion*>& regions,
                                          const std::vector<elf::LoadSegment>& loads) {
  if (loads.empty() || regions.empty()) return std::nullopt;
  uint64_t lowest_vaddr = UINT64_MAX;
  for (const elf::LoadSegment& load : loads) lowest_vaddr = std::min(lowest_vaddr, load.vaddr);
  for (const MappedRegion* region : regions) {
    if (region->file_offset == 0) return region->start - page_down(lowest_vaddr);
  }
  const MappedRegion* first = regions.front();
  for (const elf::LoadSegment& load : loads) {
    if (page_down(load.offset) == first->file_offset) return first->start - page_down(load.vaddr);
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------
// Load order.

/// The dynamic-section addresses of the objects in the dynamic loader's link_map list, in
/// load order (the order symbol lookup uses), read from the target's memory through
/// /proc/PID/mem. Best effort: empty for static executables or when memory is unreadable.
std::vector<uint64_t> link_map_order(pid_t pid, uint64_t dynamic_address) {
  std::vector<uint64_t> order;
  if (dynamic_address == 0) return order;
  std::string path = "/proc/" + std::to_string(pid) + "/mem";
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    spdlog::debug("process {}: cannot open {}; shared objects go in address order", pid, path);
    return order;
  }
  auto read_at = [fd](uint64_t address, void* out, size_t size) {
    return ::pread(fd, out, size, static_cast<off_t>(address)) == static_cast<ssize_t>(size);
  };
  uint64_t r_debug_address = 0;
  Elf64_Dyn dyn;
  for (uint64_t at = dynamic_address; read_at(at, &dyn, sizeof(dyn)) && dyn.d_tag != DT_NULL; at += sizeof(dyn)) {
    if (dyn.d_tag == DT_DEBUG) r_debug_address = dyn.d_un.d_ptr;
    if (at - dynamic_address > 4096 * sizeof(dyn)) break;  // garbage, not a dynamic section
  }
  struct r_debug debug;
  if (r_debug_address != 0 && read_at(r_debug_address, &debug, sizeof(debug))) {
    auto entry = reinterpret_cast<uint64_t>(debug.r_map);
    struct link_map map;
    // The bound guards against a list corrupted or being changed by a concurrent dlopen.
    for (int i = 0; entry != 0 && i < 65536 && read_at(entry, &map, sizeof(map)); ++i) {
      order.push_back(reinterpret_cast<uint64_t>(map.l_ld));
      entry = reinterpret_cast<uint64_t>(map.l_next);
    }
  }
  ::close(fd);
  if (order.empty()) spdlog::debug("process {}: link_map unreadable; shared objects go in address order", pid);
  return order;
}

// ---------------------------------------------------------------------------------------
// Loading the objects of a process.

/// Every mapping of one file.
struct FileMappings {
  std::string path;
  std::vector<const MappedRegion*> regions;  // in address order
};

/// The mapped files in maps (address) order.
std::vector<FileMappings> group_file_mappings(const std::vector<MappedRegion>& maps) {
  std::vector<FileMappings> files;
  for (const MappedRegion& region : maps) {
    if (!region.is_file()) continue;
    auto it = std::find_if(files.begin(), files.end(), [&](const FileMappings& f) { return f.path == region.path; });
    if (it == files.end()) it = files.insert(files.end(), FileMappings{region.path, {}});
    it->regions.push_back(&region);
  }
  return files;
}

void set_text_range(LoadedObject& object, const std::vector<const MappedRegion*>& regions) {
  for (const MappedRegion* region : regions) {
    if (!region->executable) continue;
    if (object.text_start == 0 || region->start < object.text_start) object.text_start = region->start;
    object.text_end = std::max(object.text_end, region->end);
  }
}

/// One mapped ELF object: what load() learns from its headers, and the open file its
/// symbols will be read from.
struct MappedObject {
  LoadedObject object;
  uint64_t dynamic_vaddr = 0;  // link-time PT_DYNAMIC address, 0 if none
  std::unique_ptr<elf::ElfFile> file;
  std::string debug_file;
};

/// Reads one mapped file's headers and finds where its symbols live (a debug file if the file
/// itself is stripped). nullopt for files that are not ELF objects or cannot be read (logged);
/// throws if that file is the main executable, without which nothing can be resolved.
std::optional<MappedObject> load_object(pid_t pid, const FileMappings& file, bool is_main, DebugFiles& debug_files) {
  MappedFile opened = open_mapped_file(pid, *file.regions.front(), is_main);
  if (opened.unverified) {
    spdlog::warn("{} on disk is not the file process {} mapped (different inode); its symbols may "
                 "belong to another build. If the binary was upgraded, run Polus as root so it can "
                 "read the mapped file through /proc/{}/map_files",
                 file.path, pid, pid);
  }
  int fd = opened.fd;
  if (fd < 0) {
    if (is_main) {
      throw Error(ErrorCode::kPermissionDenied,
                  "cannot open the executable " + file.path + " of process " + std::to_string(pid) +
                      " (nor through /proc/" + std::to_string(pid) + "/exe): run Polus as the target's user or root");
    }
    if (file.path.rfind("/memfd:", 0) == 0) {
      // A memfd (a Polus patch is loaded from one) is reachable only through
      // /proc/PID/map_files, which needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE: expected
      // when not run as root. Stacks through its code are then found by scanning.
      spdlog::debug("cannot open {} mapped by process {} (not root); its symbols are unavailable", file.path, pid);
      return std::nullopt;
    }
    spdlog::warn("cannot open {} mapped by process {}; its symbols are unavailable", file.path, pid);
    return std::nullopt;
  }
  if (!has_elf_magic(fd)) {  // locale archives, caches, data files
    ::close(fd);
    return std::nullopt;
  }
  MappedObject mapped;
  elf::ElfHeaders headers;
  try {
    mapped.file = std::make_unique<elf::ElfFile>(fd, file.path);
    headers = elf::read_headers(mapped.file->get());
  } catch (const Error& error) {
    if (is_main) throw;
    spdlog::warn("skipping {}: {}", file.path, error.what());
    return std::nullopt;
  }
  std::optional<uint64_t> bias = compute_load_bias(file.regions, headers.loads);
  if (!bias) {
    if (is_main) {
      throw Error(ErrorCode::kInternal, "the mappings of " + file.path + " in process " + std::to_string(pid) +
                                            " match none of its PT_LOAD segments; cannot compute its load address");
    }
    spdlog::warn("skipping {}: its mappings in process {} match none of its PT_LOAD segments", file.path, pid);
    return std::nullopt;
  }

  LoadedObject& object = mapped.object;
  object.path = file.path;
  object.symbols_from = file.path;
  object.build_id_hex = headers.build_id_hex;
  object.soname = headers.soname;
  object.has_symtab = headers.has_symtab;
  object.load_bias = *bias;
  object.is_main_executable = is_main;
  for (const elf::LoadSegment& load : headers.loads) {
    uint64_t start = load.vaddr + *bias, end = start + load.memsz;
    if (object.image_start == 0 || start < object.image_start) object.image_start = start;
    object.image_end = std::max(object.image_end, end);
  }
  mapped.dynamic_vaddr = headers.dynamic_vaddr;
  set_text_range(object, file.regions);
  if (!object.has_symtab) {
    if (auto debug = debug_files.find(file.path, object.build_id_hex, headers.debuglink)) {
      mapped.debug_file = *debug;
      object.symbols_from = *debug;
      object.has_symtab = true;
    }
  }
  spdlog::debug("{}: bias {}, symbols from {}{}", file.path, hex(object.load_bias), object.symbols_from,
                object.has_symtab ? "" : " (.dynsym only)");
  return mapped;
}

/// Search order: the main executable, then the dynamic loader's order (`dynamic_order`, the
/// objects' dynamic-section addresses); objects not in its list (mapped some other way, or
/// when it could not be read) last, in address order.
std::vector<MappedObject> in_lookup_order(std::vector<MappedObject> objects, const std::vector<MappedRegion>& maps,
                                          const std::vector<uint64_t>& dynamic_order) {
  std::vector<size_t> order;
  auto add = [&](size_t index) {
    if (index < objects.size() && std::find(order.begin(), order.end(), index) == order.end()) order.push_back(index);
  };
  auto index_of_path = [&](const std::string& path) {
    auto it = std::find_if(objects.begin(), objects.end(), [&](const MappedObject& o) { return o.object.path == path; });
    return static_cast<size_t>(it - objects.begin());
  };
  for (size_t i = 0; i < objects.size(); ++i) {
    if (objects[i].object.is_main_executable) add(i);
  }
  for (uint64_t dynamic : dynamic_order) {
    auto region = std::find_if(maps.begin(), maps.end(), [&](const MappedRegion& r) { return r.contains(dynamic); });
    if (region != maps.end() && region->is_file()) add(index_of_path(region->path));
  }
  for (size_t i = 0; i < objects.size(); ++i) add(i);

  std::vector<MappedObject> ordered;
  ordered.reserve(objects.size());
  for (size_t index : order) ordered.push_back(std::move(objects[index]));
  return ordered;
}

// ---------------------------------------------------------------------------------------
// Resolution.

const char* kind_word(SymbolKind kind) {
  switch (kind) {
    case SymbolKind::kFunction: return "function";
    case SymbolKind::kData: return "data object";
    case SymbolKind::kAny: break;
  }
  return "symbol";
}

/// One symbol per distinct address: aliases (same address, several names) count once.
std::vector<const Symbol*> distinct_addresses(const std::vector<const Symbol*>& symbols) {
  std::vector<const Symbol*> result;
  for (const Symbol* symbol : symbols) {
    auto same = std::find_if(result.begin(), result.end(),
                             [&](const Symbol* kept) { return kept->address == symbol->address; });
    if (same == result.end()) result.push_back(symbol);
  }
  return result;
}

[[noreturn]] void throw_ambiguous(const SymbolSpec& spec, const LoadedObject& object,
                                  const std::vector<const Symbol*>& candidates, bool globals) {
  std::string message = "symbol '" + spec.name + "' is ambiguous in " + object.path + ": " +
                        std::to_string(candidates.size()) + " definitions (";
  bool cxx = false;
  for (size_t i = 0; i < candidates.size(); ++i) {
    if (i) message += ", ";
    message += candidates[i]->qualified_name() + " at " + hex(candidates[i]->address.address());
    cxx = cxx || !demangle(candidates[i]->name).empty();
  }
  message += ")";
  if (cxx) {
    message += "; write the one you mean as listed, with its parameter list (e.g. \"" +
               display_name(candidates[0]->name) + "\"), or its mangled name (" + candidates[0]->name + ")";
  } else if (globals) {
    message += "; Polus cannot tell which one the program uses, so it refuses to guess";
  } else {
    message += "; write the name as \"file.c:" + spec.name + "\" (e.g. \"" + candidates[0]->qualified_name() +
               "\") to pick one";
  }
  throw Error(ErrorCode::kSymbolAmbiguous, message);
}

/// The one symbol among `matches` (what a name designates in `object`), or nullptr if none.
/// A global wins over file-static symbols; several file-statics and no global is ambiguous.
const Symbol* pick_in_object(const LoadedObject& object, const std::vector<const Symbol*>& matches, const SymbolSpec& spec) {
  std::vector<const Symbol*> globals, locals;
  for (const Symbol* symbol : matches) (symbol->is_global ? globals : locals).push_back(symbol);
  std::vector<const Symbol*> distinct_globals = distinct_addresses(globals);
  if (distinct_globals.size() == 1) return distinct_globals[0];
  if (distinct_globals.size() > 1) throw_ambiguous(spec, object, distinct_globals, true);
  std::vector<const Symbol*> distinct_locals = distinct_addresses(locals);
  if (distinct_locals.size() == 1) return distinct_locals[0];
  if (distinct_locals.size() > 1) throw_ambiguous(spec, object, distinct_locals, false);
  return nullptr;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Public API.

std::string Symbol::qualified_name() const {
  if (is_global || source_file.empty()) return display_name(name);
  return source_file + ":" + display_name(name);
}

ElfObjectFile read_elf_object(const std::string& path) {
  elf::ElfFile file(path);
  elf::ElfHeaders headers = elf::read_headers(file.get());
  ElfObjectFile object;
  object.path = path;
  object.symbols_from = path;
  object.build_id_hex = headers.build_id_hex;
  object.soname = headers.soname;
  object.has_symtab = headers.has_symtab;
  object.symbols = elf::read_symbols(file.get());
  return object;
}

std::vector<Symbol> read_elf_symbols(const std::vector<uint8_t>& image, const std::string& label) {
  elf::ElfFile file(std::vector<char>(image.begin(), image.end()), label);
  return elf::read_symbols(file.get());
}

std::string read_build_id(const std::string& path) {
  elf::ElfFile file(path);
  return elf::read_headers(file.get()).build_id_hex;
}

ProcessSymbols::ProcessSymbols() = default;
ProcessSymbols::ProcessSymbols(ProcessSymbols&&) noexcept = default;
ProcessSymbols& ProcessSymbols::operator=(ProcessSymbols&&) noexcept = default;
ProcessSymbols::~ProcessSymbols() = default;

ProcessSymbols ProcessSymbols::load(pid_t pid, const SymbolOptions& options) {
  ProcessSymbols result;
  result.pid_ = pid;
  result.maps_ = read_process_maps(pid);
  const std::string exe_path = main_executable_path(pid);
  DebugFiles debug_files(options);

  std::vector<MappedObject> objects;
  uint64_t main_dynamic = 0;  // runtime address of the executable's dynamic section
  for (const FileMappings& file : group_file_mappings(result.maps_)) {
    const bool is_main = file.path == exe_path;
    std::optional<MappedObject> mapped = load_object(pid, file, is_main, debug_files);
    if (!mapped) continue;
    if (is_main && mapped->dynamic_vaddr) main_dynamic = mapped->dynamic_vaddr + mapped->object.load_bias;
    objects.push_back(std::move(*mapped));
  }
  debug_files.warn_unused(pid);

  if (std::none_of(objects.begin(), objects.end(), [](const MappedObject& o) { return o.object.is_main_executable; })) {
    throw Error(ErrorCode::kInternal, "the executable " + exe_path + " of process " + std::to_string(pid) +
                                          " is not among its mapped ELF files; is it a static or unusual binary?");
  }
  for (MappedObject& mapped : in_lookup_order(std::move(objects), result.maps_, link_map_order(pid, main_dynamic))) {
    result.objects_.push_back(std::move(mapped.object));
    Table& table = result.tables_.emplace_back();
    table.object_file = std::move(mapped.file);
    table.debug_file = std::move(mapped.debug_file);
  }
  return result;
}

size_t ProcessSymbols::index_of(const LoadedObject& object) const {
  if (!objects_.empty() && &object >= objects_.data() && &object < objects_.data() + objects_.size()) {
    return static_cast<size_t>(&object - objects_.data());
  }
  // A copy of one of ours: find it by path.
  auto it = std::find_if(objects_.begin(), objects_.end(), [&](const LoadedObject& o) { return o.path == object.path; });
  if (it == objects_.end()) {
    throw Error(ErrorCode::kInternal, "symbols asked for " + object.path + ", which is not an object of this process");
  }
  return static_cast<size_t>(it - objects_.begin());
}

namespace {

/// Whether `a` is a better answer than `b` for symbol_containing: innermost, then the name a
/// person would use for aliases of one range ("printf", not "_IO_printf").
bool better_containing(const Symbol& a, const Symbol& b) {
  uint64_t size_a = a.size, size_b = b.size;
  if (size_a != size_b) return size_a < size_b;
  if (a.address != b.address) return a.address.address() > b.address.address();
  if (a.is_global != b.is_global) return a.is_global;
  size_t underscores_a = a.name.find_first_not_of('_'), underscores_b = b.name.find_first_not_of('_');
  if (underscores_a != underscores_b) return underscores_a < underscores_b;
  return a.name.size() < b.name.size();
}

}  // namespace

const ProcessSymbols::Table& ProcessSymbols::table(size_t i) const {
  Table& table = tables_.at(i);
  if (table.loaded) return table;
  const LoadedObject& object = objects_[i];
  try {
    std::vector<Symbol> symbols;
    if (!table.debug_file.empty()) {
      symbols = elf::read_symbols(elf::ElfFile(table.debug_file).get());
    } else if (table.object_file) {
      symbols = elf::read_symbols(table.object_file->get());
    }
    for (Symbol& symbol : symbols) symbol.address = RemoteAddr(symbol.address.address() + object.load_bias);
    table.symbols = std::move(symbols);
  } catch (const Error& error) {
    if (object.is_main_executable) throw;
    spdlog::warn("symbols of {} are unavailable: {}", object.path, error.what());
  }
  table.loaded = true;
  table.object_file.reset();  // the file's mapping is no longer needed

  for (size_t s = 0; s < table.symbols.size(); ++s) {
    if (table.symbols[s].size == 0) continue;  // contains no address
    uint64_t start = table.symbols[s].address.address();
    table.index.push_back({start, start + table.symbols[s].size, 0, static_cast<uint32_t>(s)});
  }
  std::sort(table.index.begin(), table.index.end(),
            [](const IndexEntry& a, const IndexEntry& b) { return a.start < b.start; });
  uint64_t max_end = 0;
  for (IndexEntry& entry : table.index) {
    max_end = std::max(max_end, entry.end);
    entry.max_end = max_end;
  }
  spdlog::debug("{}: {} symbols read from {}", object.path, table.symbols.size(), object.symbols_from);
  return table;
}

const std::vector<Symbol>& ProcessSymbols::symbols_of(const LoadedObject& object) const {
  return table(index_of(object)).symbols;
}

std::vector<Symbol> ProcessSymbols::exported_functions(const LoadedObject& object,
                                                       const std::vector<std::string_view>& names) const {
  size_t i = index_of(object);
  std::vector<Symbol> found;
  if (tables_[i].loaded || !tables_[i].object_file) {
    for (const Symbol& symbol : table(i).symbols) {
      if (symbol.is_global && symbol.is_function && std::find(names.begin(), names.end(), symbol.name) != names.end()) {
        found.push_back(symbol);
      }
    }
  } else {
    found = elf::read_exported_functions(tables_[i].object_file->get(), names);
    for (Symbol& symbol : found) symbol.address = RemoteAddr(symbol.address.address() + object.load_bias);
  }
  for (Symbol& symbol : found) symbol.object_path = object.path;
  return found;
}

const std::vector<uint64_t>& ProcessSymbols::function_starts(const LoadedObject& object) const {
  Table& t = tables_.at(index_of(object));
  if (t.starts_ready) return t.starts;
  t.starts_ready = true;
  try {
    std::unique_ptr<elf::ElfFile> reopened;
    elf::ElfFile* file = t.object_file.get();
    if (!file) {
      auto region = std::find_if(maps_.begin(), maps_.end(), [&](const MappedRegion& r) { return r.path == object.path; });
      if (region == maps_.end()) return t.starts;
      MappedFile opened = open_mapped_file(pid_, *region, object.is_main_executable);
      if (opened.fd < 0) return t.starts;
      reopened = std::make_unique<elf::ElfFile>(opened.fd, object.path);
      file = reopened.get();
    }
    t.starts = elf::read_function_starts(file->get());
    for (uint64_t& start : t.starts) start += object.load_bias;
  } catch (const Error& error) {
    spdlog::debug("no function starts for {}: {}", object.path, error.what());
  }
  return t.starts;
}

std::optional<Symbol> ProcessSymbols::symbol_containing(RemoteAddr address) const {
  const LoadedObject* object = object_containing(address);
  if (!object) {  // not file-backed: maybe the anonymous tail of an object's .bss
    auto image = std::find_if(objects_.begin(), objects_.end(), [&](const LoadedObject& o) {
      return address.address() >= o.image_start && address.address() < o.image_end;
    });
    if (image == objects_.end()) return std::nullopt;
    object = &*image;
  }
  const Table& t = table(index_of(*object));
  uint64_t at = address.address();
  auto after = std::upper_bound(t.index.begin(), t.index.end(), at,
                                [](uint64_t value, const IndexEntry& entry) { return value < entry.start; });
  // Walk back over every symbol that could still reach `at`; keep the innermost (smallest).
  const Symbol* best = nullptr;
  for (auto it = after; it != t.index.begin();) {
    --it;
    if (it->max_end <= at) break;
    const Symbol& candidate = t.symbols[it->symbol];
    if (it->end > at && (!best || better_containing(candidate, *best))) best = &candidate;
  }
  if (!best) return std::nullopt;
  Symbol found = *best;
  found.object_path = object->path;
  return found;
}

const LoadedObject* ProcessSymbols::object_containing(RemoteAddr address) const {
  // /proc/PID/maps lists regions in address order, without overlaps.
  auto after = std::upper_bound(maps_.begin(), maps_.end(), address.address(),
                                [](uint64_t value, const MappedRegion& r) { return value < r.start; });
  if (after == maps_.begin()) return nullptr;
  auto region = std::prev(after);
  if (!region->contains(address.address()) || !region->is_file()) return nullptr;
  auto object = std::find_if(objects_.begin(), objects_.end(),
                             [&](const LoadedObject& o) { return o.path == region->path; });
  return object == objects_.end() ? nullptr : &*object;
}

bool ProcessSymbols::object_matches(const LoadedObject& object, std::string_view name) const {
  return object.path == name || basename_of(object.path) == name || (!object.soname.empty() && object.soname == name);
}

std::vector<const LoadedObject*> ProcessSymbols::objects_named(std::string_view name) const {
  std::vector<const LoadedObject*> found;
  for (const LoadedObject& object : objects_) {
    if (object_matches(object, name)) found.push_back(&object);
  }
  if (!found.empty() || name.empty()) return found;
  // A name the maps do not show: a symlink to an object ("redis-server" beside the
  // /usr/bin/redis-check-rdb it points to; "libfoo.so.1" for a library without a soname), or
  // the name the main executable was started by (/proc/PID/comm; the kernel keeps 15 bytes).
  auto same_file = [](const std::string& link, const std::string& path) {
    struct stat a, b;
    return ::stat(link.c_str(), &a) == 0 && ::stat(path.c_str(), &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
  };
  std::string comm;
  if (pid_ > 0 && name.size() < 16) {
    std::ifstream in("/proc/" + std::to_string(pid_) + "/comm");
    std::getline(in, comm);
  }
  for (const LoadedObject& object : objects_) {
    const std::string dir = object.path.substr(0, object.path.rfind('/') + 1);
    const std::string link = name.find('/') != std::string_view::npos ? std::string(name) : dir + std::string(name);
    if (same_file(link, object.path) || (object.is_main_executable && !comm.empty() && comm == name)) {
      found.push_back(&object);
    }
  }
  return found;
}

const LoadedObject* ProcessSymbols::find_object(std::string_view name_or_path) const {
  // A full path is exact; a basename could match several objects, the first in search order wins.
  for (const LoadedObject& object : objects_) {
    if (object.path == name_or_path) return &object;
  }
  std::vector<const LoadedObject*> named = objects_named(name_or_path);
  return named.empty() ? nullptr : named.front();
}

const std::vector<SymbolNames>& ProcessSymbols::names_of(const Table& t) const {
  if (!t.names_ready) {
    Table& table = const_cast<Table&>(t);  // the lazily made part of a table, as symbols_of's
    table.names = analyse_names(table.symbols);
    table.names_ready = true;
  }
  return t.names;
}

std::vector<std::pair<Symbol, CloneName>> ProcessSymbols::clones_of(const Symbol& function) const {
  std::vector<std::pair<Symbol, CloneName>> result;
  const LoadedObject* object = object_containing(function.address);
  if (!object) return result;
  const Table& t = table(index_of(*object));
  SymbolSpec spec{.object = "", .file = "", .name = function.name};
  NameQuery query(spec, SymbolKind::kFunction);
  for (auto& [symbol, clone] : query.clones(t.symbols, names_of(t))) {
    // A clone of a file-static function comes from the same source file.
    if (!function.is_global && !symbol->is_global && symbol->source_file != function.source_file) continue;
    Symbol copy = *symbol;
    copy.object_path = object->path;
    result.emplace_back(std::move(copy), clone);
  }
  return result;
}

const LoadedObject& ProcessSymbols::main_executable() const {
  for (const LoadedObject& object : objects_) {
    if (object.is_main_executable) return object;
  }
  throw Error(ErrorCode::kInternal, "no main executable was loaded (ProcessSymbols used before load?)");
}

Symbol ProcessSymbols::resolve(std::string_view text, SymbolKind kind) const {
  SymbolSpec spec = parse_symbol_spec(text);
  const std::string kind_text = kind_word(kind);
  if (spec.name.empty()) {
    throw Error(ErrorCode::kSymbolNotFound, "'" + std::string(text) + "' names no symbol; write it as \"name\", "
                                                "\"file.c:name\", \"object!name\" or \"object!file.c:name\"");
  }
  std::vector<const LoadedObject*> searched;
  if (spec.object.empty()) {
    for (const LoadedObject& object : objects_) searched.push_back(&object);
  } else {
    searched = objects_named(spec.object);
    if (searched.empty()) {
      std::string names;
      for (const LoadedObject& object : objects_) {
        names += (names.empty() ? "" : ", ") + basename_of(object.path);
        if (!object.soname.empty() && object.soname != basename_of(object.path)) names += " (" + object.soname + ")";
      }
      throw Error(ErrorCode::kSymbolNotFound, "no object named '" + spec.object + "' is mapped in the process (for " +
                                                  kind_text + " '" + std::string(text) + "'); its objects are: " + names);
    }
  }

  // Objects are stored main executable first, then in load order: the lookup order the
  // dynamic linker uses, so the first object with a match is the one the program binds to.
  NameQuery query(spec, kind);
  for (const LoadedObject* object : searched) {
    const Table& t = table(index_of(*object));
    std::vector<const Symbol*> matches = query.match(t.symbols, [&]() -> const std::vector<SymbolNames>& { return names_of(t); });
    if (const Symbol* symbol = pick_in_object(*object, matches, spec)) {
      Symbol found = *symbol;
      found.object_path = object->path;
      return found;
    }
  }

  // Not found as such: perhaps gcc kept the function only as copies of it.
  std::string clones_found, example;
  for (const LoadedObject* object : searched) {
    const Table& t = table(index_of(*object));
    auto clones = query.clones(t.symbols, names_of(t));
    std::vector<const Symbol*> renamed;  // the function itself under another name
    for (const auto& [symbol, clone] : clones) {
      if (clone.kind == CloneKind::kSameFunction) renamed.push_back(symbol);
    }
    if (const Symbol* symbol = pick_in_object(*object, renamed, spec)) {
      spdlog::info("'{}' is {} in {}", std::string(text), symbol->name, object->path);
      Symbol found = *symbol;
      found.object_path = object->path;
      return found;
    }
    for (const auto& [symbol, clone] : clones) {
      clones_found += (clones_found.empty() ? "" : "; ") + symbol->name + " at " + hex(symbol->address.address()) +
                      " in " + basename_of(object->path) + ", " + describe_clone(clone);
      if (example.empty() && clone.kind != CloneKind::kColdPart) example = symbol->name;
    }
  }
  if (!clones_found.empty()) {
    throw Error(ErrorCode::kSymbolNotFound,
                "the " + kind_text + " '" + std::string(text) + "' has no symbol of its own: gcc kept only copies of it (" +
                    clones_found + "). Replace a copy by naming it exactly" +
                    (example.empty() ? std::string() : " (\"" + example + "\")") +
                    " with a new function taking the copy's own parameters, or replace its callers instead; a target "
                    "built with -fno-ipa-cp -fno-ipa-sra -fno-partial-inlining has no such copies");
  }

  const LoadedObject& main = main_executable();
  std::string where = spec.object.empty()
                          ? main.path + " or its " + std::to_string(objects_.size() - 1) + " shared objects"
                          : "'" + spec.object + "'";
  std::string message = "symbol '" + std::string(text) + "'" +
                        (kind == SymbolKind::kAny ? "" : " (" + kind_text + ")") + " not found in " + where +
                        "; check the name" +
                        (spec.object.empty() ? ", or name its object as in \"libfoo.so.1!" + spec.name + "\"" : "");
  if (query.written_as_cxx()) {
    message += " (C++ names are matched as c++filt prints them, e.g. \"ns::Class::method(int) const\" or "
               "\"ns::Class::method\", or mangled)";
  }
  auto has_other_kind = [&] {  // a hint for the message: the name exists, as the other kind
    SymbolKind other = kind == SymbolKind::kFunction ? SymbolKind::kData : SymbolKind::kFunction;
    NameQuery other_query(spec, other);
    for (const LoadedObject* object : searched) {
      const Table& t = table(index_of(*object));
      if (!other_query.match(t.symbols, [&]() -> const std::vector<SymbolNames>& { return names_of(t); }).empty()) return true;
    }
    return false;
  };
  if (kind != SymbolKind::kAny && has_other_kind()) {
    message += std::string(" (a ") + (kind == SymbolKind::kFunction ? "data object" : "function") +
               " of that name exists)";
  }
  if (!main.has_symtab && (spec.object.empty() || object_matches(main, spec.object))) {
    message += ". Note: " + main.path + " is stripped (only .dynsym, its exported symbols, is available" +
               (main.build_id_hex.empty() ? "" : ", build-id " + main.build_id_hex) +
               "), so file-static functions and unexported globals are invisible: provide its debug file "
               "(--debug-file, under /usr/lib/debug/.build-id/, or named by its .gnu_debuglink beside it)";
  }
  throw Error(ErrorCode::kSymbolNotFound, message);
}

}  // namespace polus
