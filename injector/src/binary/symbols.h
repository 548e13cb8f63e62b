// binary/symbols.h — functions and globals of a running process, by name.
//
// Every ELF object mapped in the target (the main executable and each shared object) is
// read from disk with libelf: .symtab when present (file-static symbols included, each tied
// to its source file through the preceding STT_FILE entry), otherwise .dynsym; addresses
// get the object's load bias (PIE and shared objects). A stripped object whose symbols live
// in a separate debug file is handled as gdb does (binary/debug_files.h): by build-id under
// /usr/lib/debug/.build-id/, then by its .gnu_debuglink (beside it, in .debug/ beside it,
// under /usr/lib/debug), or given explicitly. Names are matched as people write them, C++
// included (binary/symbol_match.h); objects by file name, soname or a symlink to them.
//
// Loading reads only each object's headers (build-id, load segments); an object's symbol
// table is read the first time something asks for it. Most operations need the executable's
// symbols and a few libc exports, not libc's ~8 k debug symbols: reading those on every
// polusctl call cost more than the rest of an apply.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "binary/symbol_names.h"
#include "polus/options.h"
#include "process/process_maps.h"
#include "process/remote_ptr.h"

namespace polus {

enum class SymbolKind { kFunction, kData, kAny };

/// A symbol of the target, already relocated to its address in the running process.
struct Symbol {
  std::string name;
  std::string source_file;   // from the STT_FILE entry before a local symbol; "" for globals
  std::string object_path;   // the ELF object that defines it: set on the symbols resolve(),
                             // symbol_containing() and exported_functions() return; empty in
                             // symbols_of() (the object's `path` says it)
  RemoteAddr address;
  uint64_t size = 0;
  bool is_function = false;
  bool is_global = false;    // STB_GLOBAL or STB_WEAK

  /// "file.c:name" for a file-static symbol, "name" otherwise (how status prints it); C++
  /// names demangled: "pricer.cc:(anonymous namespace)::round_cents(int)".
  std::string qualified_name() const;
};

/// One ELF object as mapped into the target.
struct LoadedObject {
  std::string path;          // as in /proc/PID/maps
  uint64_t load_bias = 0;    // runtime address = link-time vaddr + load_bias
  uint64_t text_start = 0;   // lowest executable mapping, runtime address
  uint64_t text_end = 0;     // end of the highest executable mapping
  uint64_t image_start = 0;  // the PT_LOAD segments at runtime addresses, .bss included (whose
  uint64_t image_end = 0;    // tail past the file is an anonymous mapping in /proc/PID/maps)
  std::string build_id_hex;  // lowercase hex of NT_GNU_BUILD_ID, "" if none
  std::string soname;        // DT_SONAME ("libfoo.so.1" for libfoo.so.1.5.4), "" if none
  std::string symbols_from;  // the file the symbol table came from (the object or a debug file)
  bool has_symtab = false;   // false: only .dynsym was available
  bool is_main_executable = false;
};

/// One ELF file read from disk as a whole (the agent, a patch, tests): symbols at link-time
/// addresses (bias 0).
struct ElfObjectFile : LoadedObject {
  std::vector<Symbol> symbols;
};

namespace elf {
class ElfFile;
}

/// The symbols of a whole process. Load once per operation; it reads files, not the target.
/// Not thread-safe: symbol tables are read lazily, from const methods.
class ProcessSymbols {
 public:
  /// Reads /proc/PID/maps and the headers of every mapped ELF object (through /proc/PID/root
  /// or map_files, so a target in another mount namespace or an upgraded binary still works).
  /// Throws Error on a vanished process.
  static ProcessSymbols load(pid_t pid, const SymbolOptions& options = {});

  ProcessSymbols(ProcessSymbols&&) noexcept;
  ProcessSymbols& operator=(ProcessSymbols&&) noexcept;
  ~ProcessSymbols();

  /// The functions and data objects of `object` (one of objects()) at runtime addresses,
  /// read from disk on first use. Empty (with a warning) if its file has become unreadable.
  const std::vector<Symbol>& symbols_of(const LoadedObject& object) const;

  /// The exported functions of `object` among `names` (default versions, as programs bind
  /// them). Reads only .dynsym, never a debug file: cheap even for libc.
  std::vector<Symbol> exported_functions(const LoadedObject& object, const std::vector<std::string_view>& names) const;

  /// Resolves a name as a patch writes it:
  ///   "name"              — the main executable first, then shared objects in load order;
  ///                         a global wins over locals; several locals with one name and no
  ///                         global: Error(kSymbolAmbiguous) listing "file.c:name" candidates;
  ///                         C++ names mangled or as c++filt prints them, with or without the
  ///                         parameter list (symbol_match.h); overloads left: kSymbolAmbiguous;
  ///   "file.c:name"       — the file-static symbol of that source file (basename match ok);
  ///   "object!name"       — only in the object whose file name, path or soname is "object"
  ///                         ("libc.so.6"), or that a symlink "object" beside it points to
  ///                         ("redis-server" for /usr/bin/redis-check-rdb).
  /// A name gcc only kept as a renamed copy of the function (".lto_priv.0") resolves to it;
  /// one it only kept as specialised copies is kSymbolNotFound naming them.
  /// Throws Error(kSymbolNotFound) naming the symbol and where it looked.
  Symbol resolve(std::string_view spec, SymbolKind kind = SymbolKind::kAny) const;

  /// The copies gcc made of function `function` (a symbol resolve() returned) in its object:
  /// ".constprop.N", ".isra.N", ".part.N", ".cold" & co., each with what its suffix says.
  std::vector<std::pair<Symbol, CloneName>> clones_of(const Symbol& function) const;

  /// Where the functions of `object` start (runtime addresses, sorted), from its
  /// .eh_frame_hdr (binary/tail_calls.h); read on first use, empty if unavailable.
  const std::vector<uint64_t>& function_starts(const LoadedObject& object) const;

  /// The symbol whose [address, address+size) contains `address`, if any.
  std::optional<Symbol> symbol_containing(RemoteAddr address) const;

  /// The object one of whose mappings contains `address`, if any.
  const LoadedObject* object_containing(RemoteAddr address) const;

  /// The object whose file name (basename), full path or soname is `name_or_path`, or that a
  /// symlink of that name beside it (or that path) points to.
  const LoadedObject* find_object(std::string_view name_or_path) const;

  const LoadedObject& main_executable() const;
  const std::vector<LoadedObject>& objects() const { return objects_; }
  const std::vector<MappedRegion>& maps() const { return maps_; }

 private:
  ProcessSymbols();

  /// One symbol in an object's address-sorted index, which symbol_containing binary-searches.
  /// `max_end` is the largest end of this and every earlier entry: it bounds the backward
  /// scan for overlapping symbols.
  struct IndexEntry {
    uint64_t start = 0, end = 0, max_end = 0;
    uint32_t symbol = 0;
  };
  /// The symbol table of one object, read on first use.
  struct Table {
    std::unique_ptr<elf::ElfFile> object_file;  // kept open from load() until the table is read
    std::string debug_file;                     // "" if the symbols come from the object itself
    bool loaded = false;
    std::vector<Symbol> symbols;
    std::vector<IndexEntry> index;
    std::vector<SymbolNames> names;  // analyse_names(symbols), made on first use
    bool names_ready = false;
    std::vector<uint64_t> starts;  // function_starts(), read on first use
    bool starts_ready = false;
  };
  /// analyse_names() of table `t`, made now if it has not been.
  const std::vector<SymbolNames>& names_of(const Table& t) const;
  /// Whether `object` answers to `name` by its path, file name or soname.
  bool object_matches(const LoadedObject& object, std::string_view name) const;
  /// The objects answering to `name`: by path, file name or soname; failing those, through a
  /// symlink of that name beside them, or (the main executable) by its /proc/PID/comm.
  std::vector<const LoadedObject*> objects_named(std::string_view name) const;
  /// The table of objects_[i], read now if it has not been.
  const Table& table(size_t i) const;
  size_t index_of(const LoadedObject& object) const;

  pid_t pid_ = 0;
  std::vector<LoadedObject> objects_;
  std::vector<MappedRegion> maps_;
  mutable std::vector<Table> tables_;  // parallel to objects_
};

/// Reads one ELF file as a whole: symbols at link-time addresses (bias 0), build-id.
ElfObjectFile read_elf_object(const std::string& path);

/// The symbols (.symtab, else .dynsym) of an ELF image already in memory, at link-time
/// addresses; `label` names it in messages. Nothing is opened.
std::vector<Symbol> read_elf_symbols(const std::vector<uint8_t>& image, const std::string& label);

/// The build-id of an ELF file on disk, "" if it has none. Throws on unreadable files.
std::string read_build_id(const std::string& path);

}  // namespace polus
