// polus/symbols.h — functions and globals of a running process, by name.
//
// Every ELF object mapped in the target (the main executable and each shared object) is
// read from disk with libelf: .symtab when present (file-static symbols included, each tied
// to its source file through the preceding STT_FILE entry), otherwise .dynsym; addresses
// get the object's load bias (PIE and shared objects). A stripped object whose symbols live
// in a separate debug file is handled the standard way: the file is found by build-id under
// /usr/lib/debug/.build-id/xx/rest.debug (or given explicitly).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "polus/process_maps.h"
#include "polus/remote_ptr.h"

namespace polus {

enum class SymbolKind { kFunction, kData, kAny };

/// A symbol of the target, already relocated to its address in the running process.
struct Symbol {
  std::string name;
  std::string source_file;   // from the STT_FILE entry before a local symbol; "" for globals
  std::string object_path;   // the ELF object that defines it
  RemoteAddr address;
  uint64_t size = 0;
  bool is_function = false;
  bool is_global = false;    // STB_GLOBAL or STB_WEAK

  /// "file.c:name" for a file-static symbol, "name" otherwise (how status prints it).
  std::string qualified_name() const;
};

/// One ELF object as mapped into the target.
struct LoadedObject {
  std::string path;          // as in /proc/PID/maps
  uint64_t load_bias = 0;    // runtime address = link-time vaddr + load_bias
  uint64_t text_start = 0;   // lowest executable mapping, runtime address
  uint64_t text_end = 0;     // end of the highest executable mapping
  std::string build_id_hex;  // lowercase hex of NT_GNU_BUILD_ID, "" if none
  std::string symbols_from;  // the file the symbol table came from (the object or a debug file)
  bool has_symtab = false;   // false: only .dynsym was available
  bool is_main_executable = false;
  std::vector<Symbol> symbols;
};

struct SymbolOptions {
  /// Debug files named explicitly (e.g. --debug-file), matched to objects by build-id.
  std::vector<std::string> debug_files;
  /// Roots searched for .build-id/xx/rest.debug; default {"/usr/lib/debug"}.
  std::vector<std::string> debug_roots = {"/usr/lib/debug"};
};

/// The symbols of a whole process. Load once per operation; it reads files, not the target.
class ProcessSymbols {
 public:
  /// Reads /proc/PID/maps and every mapped ELF object (through /proc/PID/root, so a target in
  /// another mount namespace still works). Throws Error on a vanished process.
  static ProcessSymbols load(pid_t pid, const SymbolOptions& options = {});

  /// Resolves a name as a patch writes it:
  ///   "name"              — the main executable first, then shared objects in load order;
  ///                         a global wins over locals; several locals with one name and no
  ///                         global: Error(kSymbolAmbiguous) listing "file.c:name" candidates;
  ///   "file.c:name"       — the file-static symbol of that source file (basename match ok);
  ///   "object!name"       — only in the object whose file name (e.g. "libc.so.6") matches.
  /// Throws Error(kSymbolNotFound) naming the symbol and where it looked.
  Symbol resolve(std::string_view spec, SymbolKind kind = SymbolKind::kAny) const;

  /// The symbol whose [address, address+size) contains `address`, if any.
  std::optional<Symbol> symbol_containing(RemoteAddr address) const;

  /// The object one of whose mappings contains `address`, if any.
  const LoadedObject* object_containing(RemoteAddr address) const;

  /// The object whose file name (basename) or full path equals `name_or_path`.
  const LoadedObject* find_object(std::string_view name_or_path) const;

  const LoadedObject& main_executable() const;
  const std::vector<LoadedObject>& objects() const { return objects_; }
  const std::vector<MappedRegion>& maps() const { return maps_; }

 private:
  /// One symbol in the address-sorted index symbol_containing binary-searches. Indices, not
  /// pointers, so a copied or moved ProcessSymbols stays valid. `max_end` is the largest end
  /// of this and every earlier entry: it bounds the backward scan for overlapping symbols.
  struct IndexEntry {
    uint64_t start = 0, end = 0, max_end = 0;
    uint32_t object = 0, symbol = 0;
  };
  void build_index();
  /// Whether `a` is a better answer than `b` for symbol_containing (innermost, then the
  /// most readable alias).
  bool better_containing(const IndexEntry& a, const IndexEntry& b) const;

  std::vector<LoadedObject> objects_;
  std::vector<MappedRegion> maps_;
  std::vector<IndexEntry> by_address_;
};

/// Reads one ELF file (exposed for tests): symbols at link-time addresses (bias 0), build-id.
LoadedObject read_elf_object(const std::string& path);

/// The build-id of an ELF file on disk, "" if it has none. Throws on unreadable files.
std::string read_build_id(const std::string& path);

}  // namespace polus
