// binary/elf_reader.h — one ELF file on disk, read with libelf: build-id, load segments, and the
// functions and data objects of its symbol tables. Internal to the engine; ProcessSymbols
// (polus/symbols.h) puts these files together into a process's view.
#pragma once

#include <libelf.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "binary/debug_files.h"
#include "binary/symbols.h"

namespace polus::elf {

/// An open file descriptor plus its libelf handle (the file mmapped read-only), released
/// together; or an image in memory (a private copy) read with elf_memory.
class ElfFile {
 public:
  /// Reads `image` from memory (nothing is opened; `label` names it in messages). Throws
  /// Error(kInternal) if it is not ELF.
  ElfFile(std::vector<char> image, const std::string& label);
  /// Takes ownership of `fd`. Throws Error(kInternal) if the file is not ELF.
  ElfFile(int fd, const std::string& path);
  /// Opens `path`. Throws Error if it cannot be opened or is not ELF.
  explicit ElfFile(const std::string& path);
  ElfFile(const ElfFile&) = delete;
  ElfFile& operator=(const ElfFile&) = delete;
  ~ElfFile();

  Elf* get() const { return elf_; }
  const std::string& path() const { return path_; }

 private:
  int fd_ = -1;
  std::string path_;
  std::vector<char> image_;  // the memory image, when read with elf_memory
  Elf* elf_ = nullptr;
};

/// A PT_LOAD segment's file offset and link-time address (what the load bias is computed from).
struct LoadSegment {
  uint64_t offset = 0;
  uint64_t vaddr = 0;
  uint64_t memsz = 0;
};

/// What an ELF file says about itself, without reading its symbol tables.
struct ElfHeaders {
  std::string build_id_hex;  // "" if none
  std::vector<LoadSegment> loads;
  uint64_t dynamic_vaddr = 0;  // PT_DYNAMIC, 0 if none (static executable)
  bool has_symtab = false;     // a .symtab with contents (not a debug file's NOBITS copy)
  std::string soname;          // DT_SONAME ("libfoo.so.1"), "" if none
  DebugLink debuglink;         // .gnu_debuglink: name and CRC-32 of its separate debug file
};

ElfHeaders read_headers(Elf* elf);

/// The functions and data objects of .symtab and .dynsym at link-time addresses, each
/// (name, address) once; a local symbol is tied to its source file (the STT_FILE before it).
std::vector<Symbol> read_symbols(Elf* elf);

/// Where the functions of the file start (link-time addresses, sorted, unique), from the
/// binary search table of .eh_frame_hdr (every function with CFI has an entry). Empty if the
/// file has none or its encoding is not the usual datarel|sdata4.
std::vector<uint64_t> read_function_starts(Elf* elf);

/// The exported functions among `names`: default-version .dynsym entries, link-time
/// addresses. A scan without building the whole table — cheap even for libc.
std::vector<Symbol> read_exported_functions(Elf* elf, const std::vector<std::string_view>& names);

}  // namespace polus::elf
