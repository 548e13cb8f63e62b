#include "binary/elf_reader.h"

#include <fcntl.h>
#include <gelf.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>

#include "polus/error.h"

namespace polus::elf {

// ---------------------------------------------------------------------------------------
// The file.

ElfFile::ElfFile(int fd, const std::string& path) : fd_(fd), path_(path) {
  static const bool initialised = elf_version(EV_CURRENT) != EV_NONE;
  if (!initialised) {
    ::close(fd_);
    throw Error(ErrorCode::kInternal, "libelf is unusable (elf_version failed): reinstall libelf");
  }
  elf_ = elf_begin(fd_, ELF_C_READ_MMAP, nullptr);
  if (!elf_ || elf_kind(elf_) != ELF_K_ELF) {
    const char* why = elf_ ? "not an ELF file" : elf_errmsg(-1);
    if (elf_) elf_end(elf_);
    ::close(fd_);
    throw Error(ErrorCode::kInternal, "cannot read " + path + " as ELF: " + why);
  }
}

ElfFile::ElfFile(std::vector<char> image, const std::string& label) : path_(label), image_(std::move(image)) {
  static const bool initialised = elf_version(EV_CURRENT) != EV_NONE;
  if (!initialised) throw Error(ErrorCode::kInternal, "libelf is unusable (elf_version failed): reinstall libelf");
  elf_ = elf_memory(image_.data(), image_.size());
  if (!elf_ || elf_kind(elf_) != ELF_K_ELF) {
    const char* why = elf_ ? "not an ELF file" : elf_errmsg(-1);
    if (elf_) elf_end(elf_);
    throw Error(ErrorCode::kInternal, "cannot read " + label + " as ELF: " + why);
  }
}

namespace {
int open_or_throw(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_errno("cannot open " + path, errno);
  return fd;
}
}  // namespace

ElfFile::ElfFile(const std::string& path) : ElfFile(open_or_throw(path), path) {}

ElfFile::~ElfFile() {
  elf_end(elf_);
  if (fd_ >= 0) ::close(fd_);
}

// ---------------------------------------------------------------------------------------
// Headers.

namespace {

std::string build_id_from_notes(Elf_Data* data) {
  GElf_Nhdr header;
  size_t offset = 0, name_offset = 0, desc_offset = 0;
  while (data && (offset = gelf_getnote(data, offset, &header, &name_offset, &desc_offset)) > 0) {
    const char* base = static_cast<const char*>(data->d_buf);
    if (header.n_type == NT_GNU_BUILD_ID && header.n_namesz == 4 &&
        std::memcmp(base + name_offset, "GNU", 4) == 0) {
      static const char kDigits[] = "0123456789abcdef";
      std::string id;
      for (size_t i = 0; i < header.n_descsz; ++i) {
        auto byte = static_cast<unsigned char>(base[desc_offset + i]);
        id += kDigits[byte >> 4];
        id += kDigits[byte & 15];
      }
      return id;
    }
  }
  return "";
}

/// NT_GNU_BUILD_ID, from note sections first: a debug file made by objcopy --only-keep-debug
/// keeps its note sections but its PT_NOTE segments point at data that is no longer there.
std::string read_build_id_of(Elf* elf) {
  for (Elf_Scn* scn = elf_nextscn(elf, nullptr); scn; scn = elf_nextscn(elf, scn)) {
    GElf_Shdr shdr;
    if (!gelf_getshdr(scn, &shdr) || shdr.sh_type != SHT_NOTE) continue;
    std::string id = build_id_from_notes(elf_getdata(scn, nullptr));
    if (!id.empty()) return id;
  }
  size_t count = 0;
  if (elf_getphdrnum(elf, &count) != 0) return "";
  for (size_t i = 0; i < count; ++i) {
    GElf_Phdr phdr;
    if (!gelf_getphdr(elf, static_cast<int>(i), &phdr) || phdr.p_type != PT_NOTE) continue;
    std::string id = build_id_from_notes(elf_getdata_rawchunk(elf, phdr.p_offset, phdr.p_filesz, ELF_T_NHDR));
    if (!id.empty()) return id;
  }
  return "";
}

void read_program_headers(Elf* elf, ElfHeaders& headers) {
  size_t count = 0;
  if (elf_getphdrnum(elf, &count) != 0) return;
  for (size_t i = 0; i < count; ++i) {
    GElf_Phdr phdr;
    if (!gelf_getphdr(elf, static_cast<int>(i), &phdr)) continue;
    if (phdr.p_type == PT_LOAD) headers.loads.push_back({phdr.p_offset, phdr.p_vaddr, phdr.p_memsz});
    if (phdr.p_type == PT_DYNAMIC) headers.dynamic_vaddr = phdr.p_vaddr;
  }
}

/// The first section of the given type that has contents (a debug file's NOBITS copies don't).
Elf_Scn* find_section(Elf* elf, Elf64_Word type) {
  for (Elf_Scn* scn = elf_nextscn(elf, nullptr); scn; scn = elf_nextscn(elf, scn)) {
    GElf_Shdr shdr;
    if (gelf_getshdr(scn, &shdr) && shdr.sh_type == type && shdr.sh_entsize != 0) return scn;
  }
  return nullptr;
}

/// Symbol versions of a .dynsym: the version index of each entry (SHT_GNU_versym) and the
/// name of each version the object defines (SHT_GNU_verdef).
struct SymbolVersions {
  Elf_Data* versym = nullptr;
  std::map<unsigned, std::string> names;
};

SymbolVersions read_symbol_versions(Elf* elf) {
  SymbolVersions versions;
  if (Elf_Scn* scn = find_section(elf, SHT_GNU_versym)) versions.versym = elf_getdata(scn, nullptr);
  for (Elf_Scn* scn = elf_nextscn(elf, nullptr); scn; scn = elf_nextscn(elf, scn)) {
    GElf_Shdr shdr;
    if (!gelf_getshdr(scn, &shdr) || shdr.sh_type != SHT_GNU_verdef) continue;
    Elf_Data* data = elf_getdata(scn, nullptr);
    size_t offset = 0;
    for (size_t n = 0; data && n < shdr.sh_info; ++n) {
      GElf_Verdef def;
      GElf_Verdaux aux;
      if (!gelf_getverdef(data, static_cast<int>(offset), &def) ||
          !gelf_getverdaux(data, static_cast<int>(offset + def.vd_aux), &aux)) {
        break;
      }
      if (const char* name = elf_strptr(elf, shdr.sh_link, aux.vda_name)) versions.names[def.vd_ndx] = name;
      if (def.vd_next == 0) break;
      offset += def.vd_next;
    }
  }
  return versions;
}

/// The name a patch writes for a symbol. The default version of a versioned symbol is just
/// "name" (a .symtab spells it "name@@VERSION"); an older, non-default version stays
/// "name@VERSION" (as .symtab spells it, and as .dynsym marks it with the hidden bit), so
/// "realpath" means the one programs bind to today, not the compatibility one.
std::string symbol_name(const char* raw, size_t index, const SymbolVersions* versions) {
  std::string name = raw;
  if (size_t at = name.find("@@"); at != std::string::npos) name.resize(at);
  if (!versions || !versions->versym || name.find('@') != std::string::npos) return name;
  GElf_Versym version;
  if (gelf_getversym(versions->versym, static_cast<int>(index), &version) && (version & 0x8000)) {
    auto it = versions->names.find(version & 0x7fff);
    if (it != versions->names.end()) name += "@" + it->second;
  }
  return name;
}

/// Appends the functions and data objects of one symbol table to `out` (duplicates included:
/// drop_duplicate_symbols() removes them once every table is read).
void read_symbol_table(Elf* elf, Elf_Scn* scn, const SymbolVersions* versions, std::vector<Symbol>& out) {
  GElf_Shdr shdr;
  Elf_Data* data = elf_getdata(scn, nullptr);
  if (!gelf_getshdr(scn, &shdr) || !data || !data->d_buf) return;
  size_t count = shdr.sh_size / shdr.sh_entsize;
  out.reserve(out.size() + count);
  std::string current_file;  // the latest STT_FILE: the source of the locals that follow it
  for (size_t i = 0; i < count; ++i) {
    GElf_Sym sym;
    if (!gelf_getsym(data, static_cast<int>(i), &sym)) continue;
    const char* raw_name = elf_strptr(elf, shdr.sh_link, sym.st_name);
    int type = GELF_ST_TYPE(sym.st_info);
    int binding = GELF_ST_BIND(sym.st_info);
    if (type == STT_FILE) {
      current_file = raw_name ? raw_name : "";
      continue;
    }
    if (type != STT_FUNC && type != STT_OBJECT && type != STT_GNU_IFUNC) continue;  // STT_TLS too
    // Undefined symbols live elsewhere; absolute ones are not relocated by the load bias.
    if (sym.st_shndx == SHN_UNDEF || sym.st_shndx == SHN_ABS || sym.st_value == 0) continue;
    if (!raw_name || !*raw_name) continue;
    Symbol& symbol = out.emplace_back();
    symbol.name = symbol_name(raw_name, i, versions);
    symbol.is_global = binding == STB_GLOBAL || binding == STB_WEAK || binding == STB_GNU_UNIQUE;
    if (!symbol.is_global) symbol.source_file = current_file;
    symbol.address = RemoteAddr(sym.st_value);
    symbol.size = sym.st_size;
    symbol.is_function = type != STT_OBJECT;
  }
}

/// Keeps one entry per (name, address): the same symbol in .symtab and .dynsym, or a local
/// alias of a global that .symtab lists first. The first reading keeps its place; a global
/// reading wins over a local one. Sorting by address compares names only among aliases,
/// which keeps this fast for libc's ~8 k debug symbols, read on every polusctl call.
void drop_duplicate_symbols(std::vector<Symbol>& symbols) {
  // (address, index) pairs sort by value, so a run of one address keeps the reading order.
  std::vector<std::pair<uint64_t, uint32_t>> by_address(symbols.size());
  for (uint32_t i = 0; i < by_address.size(); ++i) by_address[i] = {symbols[i].address.address(), i};
  std::sort(by_address.begin(), by_address.end());
  std::vector<bool> dropped(symbols.size(), false);
  for (size_t run = 0; run < by_address.size();) {
    size_t end = run + 1;
    while (end < by_address.size() && by_address[end].first == by_address[run].first) ++end;
    // Aliases of one address (a handful usually; thousands after identical-code folding):
    // by name, keeping the reading order within a name.
    std::sort(by_address.begin() + static_cast<long>(run), by_address.begin() + static_cast<long>(end),
              [&](const auto& x, const auto& y) {
                int order = symbols[x.second].name.compare(symbols[y.second].name);
                return order != 0 ? order < 0 : x.second < y.second;
              });
    for (size_t a = run; a < end;) {
      Symbol& kept = symbols[by_address[a].second];
      size_t b = a + 1;
      for (; b < end && symbols[by_address[b].second].name == kept.name; ++b) {
        Symbol& other = symbols[by_address[b].second];
        if (other.is_global && !kept.is_global) kept = std::move(other);
        dropped[by_address[b].second] = true;
      }
      a = b;
    }
    run = end;
  }
  size_t out = 0;
  for (size_t i = 0; i < symbols.size(); ++i) {
    if (dropped[i]) continue;
    if (out != i) symbols[out] = std::move(symbols[i]);
    ++out;
  }
  symbols.resize(out);
}

/// DT_SONAME, from the dynamic section's own string table.
std::string read_soname(Elf* elf) {
  for (Elf_Scn* scn = elf_nextscn(elf, nullptr); scn; scn = elf_nextscn(elf, scn)) {
    GElf_Shdr shdr;
    if (!gelf_getshdr(scn, &shdr) || shdr.sh_type != SHT_DYNAMIC || shdr.sh_entsize == 0) continue;
    Elf_Data* data = elf_getdata(scn, nullptr);
    for (size_t i = 0; data && i < shdr.sh_size / shdr.sh_entsize; ++i) {
      GElf_Dyn dyn;
      if (!gelf_getdyn(data, static_cast<int>(i), &dyn) || dyn.d_tag == DT_NULL) break;
      if (dyn.d_tag != DT_SONAME) continue;
      const char* name = elf_strptr(elf, shdr.sh_link, dyn.d_un.d_val);
      return name ? name : "";
    }
  }
  return "";
}

/// .gnu_debuglink: a NUL-terminated file name, padding to 4 bytes, the CRC-32 (file byte order,
/// little-endian on x86-64).
DebugLink read_debuglink(Elf* elf) {
  size_t names = 0;
  if (elf_getshdrstrndx(elf, &names) != 0) return {};
  for (Elf_Scn* scn = elf_nextscn(elf, nullptr); scn; scn = elf_nextscn(elf, scn)) {
    GElf_Shdr shdr;
    if (!gelf_getshdr(scn, &shdr) || shdr.sh_type != SHT_PROGBITS) continue;
    const char* name = elf_strptr(elf, names, shdr.sh_name);
    if (!name || std::strcmp(name, ".gnu_debuglink") != 0) continue;
    Elf_Data* data = elf_getdata(scn, nullptr);
    if (!data || !data->d_buf) return {};
    const char* bytes = static_cast<const char*>(data->d_buf);
    size_t length = strnlen(bytes, data->d_size);
    size_t crc_at = (length + 4) & ~size_t{3};
    if (length == 0 || crc_at + 4 > data->d_size) return {};
    DebugLink link;
    link.name.assign(bytes, length);
    std::memcpy(&link.crc, bytes + crc_at, 4);
    return link;
  }
  return {};
}

}  // namespace

ElfHeaders read_headers(Elf* elf) {
  ElfHeaders headers;
  headers.build_id_hex = read_build_id_of(elf);
  read_program_headers(elf, headers);
  headers.has_symtab = find_section(elf, SHT_SYMTAB) != nullptr;
  headers.soname = read_soname(elf);
  headers.debuglink = read_debuglink(elf);
  return headers;
}

std::vector<Symbol> read_symbols(Elf* elf) {
  std::vector<Symbol> symbols;
  if (Elf_Scn* symtab = find_section(elf, SHT_SYMTAB)) read_symbol_table(elf, symtab, nullptr, symbols);
  // .dynsym is a subset of .symtab in practice; reading it too costs little and covers
  // objects whose .symtab was partially stripped.
  if (Elf_Scn* dynsym = find_section(elf, SHT_DYNSYM)) {
    SymbolVersions versions = read_symbol_versions(elf);
    read_symbol_table(elf, dynsym, &versions, symbols);
  }
  drop_duplicate_symbols(symbols);
  return symbols;
}

std::vector<uint64_t> read_function_starts(Elf* elf) {
  std::vector<uint64_t> starts;
  size_t names = 0;
  if (elf_getshdrstrndx(elf, &names) != 0) return starts;
  for (Elf_Scn* scn = elf_nextscn(elf, nullptr); scn; scn = elf_nextscn(elf, scn)) {
    GElf_Shdr shdr;
    if (!gelf_getshdr(scn, &shdr) || shdr.sh_type != SHT_PROGBITS) continue;
    const char* name = elf_strptr(elf, names, shdr.sh_name);
    if (!name || std::strcmp(name, ".eh_frame_hdr") != 0) continue;
    Elf_Data* data = elf_getdata(scn, nullptr);
    if (!data || !data->d_buf || data->d_size < 12) return starts;
    const auto* bytes = static_cast<const uint8_t*>(data->d_buf);
    // version, eh_frame_ptr_enc, fde_count_enc, table_enc; then eh_frame_ptr (4 bytes for
    // the sdata4/udata4 encodings gcc and lld use), fde_count, the table.
    constexpr uint8_t kUdata4 = 0x03, kDatarelSdata4 = 0x3b;
    if (bytes[0] != 1 || bytes[2] != kUdata4 || bytes[3] != kDatarelSdata4 || (bytes[1] & 0x0f) == 0x0c ||
        (bytes[1] & 0x0f) == 0x04) {
      return starts;
    }
    uint32_t count = 0;
    std::memcpy(&count, bytes + 8, 4);
    if (12 + static_cast<uint64_t>(count) * 8 > data->d_size) return starts;
    starts.reserve(count);
    for (uint32_t i = 0; i < count; ++i) {
      int32_t location = 0;
      std::memcpy(&location, bytes + 12 + static_cast<size_t>(i) * 8, 4);
      starts.push_back(shdr.sh_addr + static_cast<uint64_t>(static_cast<int64_t>(location)));
    }
    std::sort(starts.begin(), starts.end());
    starts.erase(std::unique(starts.begin(), starts.end()), starts.end());
    return starts;
  }
  return starts;
}

std::vector<Symbol> read_exported_functions(Elf* elf, const std::vector<std::string_view>& names) {
  std::vector<Symbol> found;
  Elf_Scn* dynsym = find_section(elf, SHT_DYNSYM);
  GElf_Shdr shdr;
  Elf_Data* data = dynsym ? elf_getdata(dynsym, nullptr) : nullptr;
  if (!data || !data->d_buf || !gelf_getshdr(dynsym, &shdr)) return found;
  Elf_Data* versym = nullptr;
  if (Elf_Scn* scn = find_section(elf, SHT_GNU_versym)) versym = elf_getdata(scn, nullptr);
  size_t count = shdr.sh_size / shdr.sh_entsize;
  for (size_t i = 0; i < count; ++i) {
    GElf_Sym sym;
    if (!gelf_getsym(data, static_cast<int>(i), &sym)) continue;
    int type = GELF_ST_TYPE(sym.st_info);
    if (type != STT_FUNC && type != STT_GNU_IFUNC) continue;
    if (sym.st_shndx == SHN_UNDEF || sym.st_shndx == SHN_ABS || sym.st_value == 0) continue;
    const char* raw_name = elf_strptr(elf, shdr.sh_link, sym.st_name);
    if (!raw_name || std::find(names.begin(), names.end(), std::string_view(raw_name)) == names.end()) continue;
    GElf_Versym version;
    if (versym && gelf_getversym(versym, static_cast<int>(i), &version) && (version & 0x8000)) {
      continue;  // a compatibility version, not the one programs bind to today
    }
    Symbol& symbol = found.emplace_back();
    symbol.name = raw_name;
    symbol.is_global = true;
    symbol.is_function = true;
    symbol.address = RemoteAddr(sym.st_value);
    symbol.size = sym.st_size;
  }
  return found;
}

}  // namespace polus::elf
