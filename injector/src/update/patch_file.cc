#include "update/patch_file.h"

#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <memory>
#include <sstream>

#include "polus/error.h"
#include "common/format.h"

namespace polus {

namespace {

constexpr uint32_t kMaxEntries = 100000;


[[noreturn]] void malformed(const std::string& path, const std::string& why) {
  throw Error(ErrorCode::kPatchMalformed, "patch " + path + " is malformed: " + why +
                                              ". Rebuild it against patch-format/include/polus/patch.h");
}

/// The ELF file as link-time memory: loadable segments and resolved pointer relocations.
class PatchImage {
 public:
  explicit PatchImage(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) malformed(path, std::string("cannot open it: ") + std::strerror(errno));
    elf_version(EV_CURRENT);
    elf_ = elf_begin(fd_, ELF_C_READ, nullptr);
    if (!elf_ || elf_kind(elf_) != ELF_K_ELF) malformed(path, "it is not an ELF file");
    GElf_Ehdr ehdr;
    if (!gelf_getehdr(elf_, &ehdr)) malformed(path, "its ELF header is unreadable");
    if (ehdr.e_ident[EI_CLASS] != ELFCLASS64 || ehdr.e_machine != EM_X86_64) {
      malformed(path, "it is not an x86-64 ELF64 object");
    }
    if (ehdr.e_type != ET_DYN) malformed(path, "it is not a shared object (build it with -shared -fPIC)");
    read_segments();
    read_sections();
  }
  ~PatchImage() {
    if (elf_) elf_end(elf_);
    if (fd_ >= 0) ::close(fd_);
  }

  /// Bytes at a link-time address, from the file image (zero for .bss).
  bool read(uint64_t vaddr, void* out, size_t size) const {
    for (const auto& seg : segments_) {
      if (vaddr < seg.vaddr || vaddr + size > seg.vaddr + seg.memsz) continue;
      std::memset(out, 0, size);
      uint64_t in_file_end = seg.vaddr + seg.filesz;
      if (vaddr < in_file_end) {
        size_t take = std::min<uint64_t>(size, in_file_end - vaddr);
        if (::pread(fd_, out, take, static_cast<off_t>(seg.offset + (vaddr - seg.vaddr))) != static_cast<ssize_t>(take)) {
          return false;
        }
      }
      return true;
    }
    return false;
  }

  /// A pointer field: its relocated link-time value, or the raw word when not relocated.
  uint64_t pointer_at(uint64_t vaddr) const {
    if (auto it = relocated_.find(vaddr); it != relocated_.end()) return it->second;
    if (auto it = external_.find(vaddr); it != external_.end()) {
      malformed(path_, "a descriptor field at " + hex(vaddr) + " points to '" + it->second +
                           "', which the patch does not define");
    }
    uint64_t raw = 0;
    if (!read(vaddr, &raw, sizeof raw)) malformed(path_, "a pointer at " + hex(vaddr) + " lies outside the file");
    return raw;
  }

  std::string string_at(uint64_t vaddr, const char* what) const {
    if (vaddr == 0) return "";
    std::string s;
    char c;
    while (s.size() < 4096) {
      if (!read(vaddr + s.size(), &c, 1)) malformed(path_, std::string(what) + " points outside the patch");
      if (c == 0) return s;
      s.push_back(c);
    }
    malformed(path_, std::string(what) + " is not NUL-terminated within 4096 bytes");
  }

  uint64_t dynamic_symbol(const char* name) const {
    auto it = symbols_.find(name);
    return it == symbols_.end() ? 0 : it->second;
  }
  bool is_executable(uint64_t vaddr) const {
    for (const auto& seg : segments_) {
      if (seg.executable && vaddr >= seg.vaddr && vaddr < seg.vaddr + seg.memsz) return true;
    }
    return false;
  }
  bool is_writable(uint64_t vaddr, uint64_t size) const {
    for (const auto& seg : segments_) {
      if (seg.writable && vaddr >= seg.vaddr && vaddr + size <= seg.vaddr + seg.memsz) return true;
    }
    return false;
  }
  uint64_t text_start() const { return text_start_; }
  /// Size of the dynamic symbol at `vaddr`, 0 if none.
  uint64_t symbol_size(uint64_t vaddr) const {
    auto it = sizes_.find(vaddr);
    return it == sizes_.end() ? 0 : it->second;
  }
  uint64_t text_end() const { return text_end_; }

 private:
  struct Segment {
    uint64_t vaddr, memsz, offset, filesz;
    bool executable, writable;
  };

  void read_segments() {
    size_t count = 0;
    if (elf_getphdrnum(elf_, &count) != 0) malformed(path_, "its program headers are unreadable");
    text_start_ = UINT64_MAX;
    for (size_t i = 0; i < count; ++i) {
      GElf_Phdr phdr;
      if (!gelf_getphdr(elf_, static_cast<int>(i), &phdr) || phdr.p_type != PT_LOAD) continue;
      bool exec = phdr.p_flags & PF_X;
      segments_.push_back({phdr.p_vaddr, phdr.p_memsz, phdr.p_offset, phdr.p_filesz, exec, (phdr.p_flags & PF_W) != 0});
      if (exec) {
        text_start_ = std::min<uint64_t>(text_start_, phdr.p_vaddr);
        text_end_ = std::max<uint64_t>(text_end_, phdr.p_vaddr + phdr.p_memsz);
      }
    }
    if (segments_.empty()) malformed(path_, "it has no loadable segment (truncated?)");
  }

  void read_sections() {
    std::vector<std::string> dynsym_names;
    std::vector<GElf_Sym> dynsyms;
    Elf_Scn* scn = nullptr;
    // First the dynamic symbols (relocations refer to them by index).
    while ((scn = elf_nextscn(elf_, scn)) != nullptr) {
      GElf_Shdr shdr;
      if (!gelf_getshdr(scn, &shdr) || shdr.sh_type != SHT_DYNSYM) continue;
      Elf_Data* data = elf_getdata(scn, nullptr);
      if (!data || shdr.sh_entsize == 0) malformed(path_, "its .dynsym is unreadable (truncated?)");
      size_t n = shdr.sh_size / shdr.sh_entsize;
      for (size_t i = 0; i < n; ++i) {
        GElf_Sym sym;
        if (!gelf_getsym(data, static_cast<int>(i), &sym)) malformed(path_, "its .dynsym is unreadable");
        const char* name = elf_strptr(elf_, shdr.sh_link, sym.st_name);
        dynsyms.push_back(sym);
        dynsym_names.emplace_back(name ? name : "");
        if (name && sym.st_shndx != SHN_UNDEF) symbols_[name] = sym.st_value;
        if (sym.st_shndx != SHN_UNDEF && sym.st_size > 0) sizes_[sym.st_value] = sym.st_size;
      }
    }
    if (dynsyms.empty()) malformed(path_, "it has no dynamic symbol table (truncated or not a shared object?)");
    scn = nullptr;
    while ((scn = elf_nextscn(elf_, scn)) != nullptr) {
      GElf_Shdr shdr;
      if (!gelf_getshdr(scn, &shdr) || shdr.sh_type != SHT_RELA) continue;
      Elf_Data* data = elf_getdata(scn, nullptr);
      if (!data || shdr.sh_entsize == 0) continue;
      size_t n = shdr.sh_size / shdr.sh_entsize;
      for (size_t i = 0; i < n; ++i) {
        GElf_Rela rela;
        if (!gelf_getrela(data, static_cast<int>(i), &rela)) continue;
        uint32_t type = GELF_R_TYPE(rela.r_info);
        size_t sym = GELF_R_SYM(rela.r_info);
        if (type == R_X86_64_RELATIVE) {
          relocated_[rela.r_offset] = static_cast<uint64_t>(rela.r_addend);
        } else if (type == R_X86_64_64 && sym < dynsyms.size()) {
          if (dynsyms[sym].st_shndx != SHN_UNDEF) {
            relocated_[rela.r_offset] = dynsyms[sym].st_value + static_cast<uint64_t>(rela.r_addend);
          } else {
            external_[rela.r_offset] = dynsym_names[sym];
          }
        }
      }
    }
  }

  std::string path_;
  int fd_ = -1;
  Elf* elf_ = nullptr;
  std::vector<Segment> segments_;
  std::map<uint64_t, uint64_t> relocated_;
  std::map<uint64_t, std::string> external_;
  std::map<std::string, uint64_t> symbols_;
  std::map<uint64_t, uint64_t> sizes_;
  uint64_t text_start_ = 0, text_end_ = 0;
};

template <typename T>
std::vector<T> read_array(const PatchImage& image, const std::string& path, uint64_t vaddr, uint32_t count,
                          const char* what) {
  if (count > kMaxEntries) malformed(path, std::string(what) + " count " + std::to_string(count) + " is absurd");
  if (count > 0 && vaddr == 0) malformed(path, std::string(what) + " has " + std::to_string(count) + " entries but no array");
  std::vector<T> out(count);
  if (count > 0 && !image.read(vaddr, out.data(), sizeof(T) * count)) {
    malformed(path, std::string(what) + " array lies outside the patch's loadable segments");
  }
  return out;
}

}  // namespace

std::vector<std::pair<uint32_t, uint32_t>> PatchDescription::mappings_of(uint32_t kind) const {
  std::vector<std::pair<uint32_t, uint32_t>> pairs;
  for (const auto& m : mappings) {
    if (m.kind == kind) pairs.emplace_back(m.from, m.to);
  }
  return pairs;
}

std::vector<std::pair<uint32_t, uint32_t>> PatchDescription::function_replacements() const {
  return mappings_of(POLUS_MAP_FUNCTION);
}

PatchDescription read_patch_file(const std::string& given_path) {
  char resolved[PATH_MAX];
  if (!::realpath(given_path.c_str(), resolved)) {
    malformed(given_path, std::string("cannot find it: ") + std::strerror(errno));
  }
  const std::string path = resolved;
  PatchImage image(path);
  PatchDescription out;
  out.path = path;
  out.text_start = image.text_start();
  out.text_end = image.text_end();
  out.descriptor = image.dynamic_symbol(POLUS_PATCH_DESCRIPTOR_SYMBOL);
  if (out.descriptor == 0) {
    malformed(path, "it does not export '" POLUS_PATCH_DESCRIPTOR_SYMBOL "' (define it with POLUS_PATCH(...))");
  }
  polus_patch raw{};
  if (!image.read(out.descriptor, &raw, sizeof raw)) malformed(path, "its descriptor lies outside the file");
  if (raw.magic != POLUS_PATCH_MAGIC) malformed(path, "its descriptor has a wrong magic number");
  if (raw.format_version != POLUS_PATCH_FORMAT_VERSION) {
    malformed(path, "its format version is " + std::to_string(raw.format_version) + ", this Polus reads version " +
                        std::to_string(POLUS_PATCH_FORMAT_VERSION));
  }
  auto field = [&](const void* member) {
    return out.descriptor + static_cast<uint64_t>(static_cast<const char*>(member) - reinterpret_cast<const char*>(&raw));
  };
  out.name = image.string_at(image.pointer_at(field(&raw.name)), "the patch name");
  out.description = image.string_at(image.pointer_at(field(&raw.description)), "the description");
  if (out.name.empty()) malformed(path, "it has no name");
  if (out.name.size() >= 64) malformed(path, "its name is longer than 63 bytes");

  uint64_t functions_at = image.pointer_at(field(&raw.functions));
  auto functions = read_array<polus_function>(image, path, functions_at, raw.function_count, "functions");
  for (uint32_t i = 0; i < functions.size(); ++i) {
    uint64_t entry = functions_at + i * sizeof(polus_function);
    const std::string where = "functions[" + std::to_string(i) + "]";
    PatchFunction f;
    f.side = functions[i].side;
    f.name = image.string_at(image.pointer_at(entry + offsetof(polus_function, name)), (where + ".name").c_str());
    f.address = image.pointer_at(entry + offsetof(polus_function, address));
    f.resolved_slot = image.pointer_at(entry + offsetof(polus_function, resolved));
    if (f.side != POLUS_OLD && f.side != POLUS_NEW) malformed(path, where + " is neither POLUS_OLD nor POLUS_NEW");
    if (f.side == POLUS_OLD && f.name.empty()) malformed(path, where + " (old) names no target function");
    if (f.side == POLUS_NEW && !image.is_executable(f.address)) {
      malformed(path, where + " ('" + f.name + "') does not point to code in the patch");
    }
    if (f.side == POLUS_NEW) f.size = image.symbol_size(f.address);
    if (f.resolved_slot && !image.is_writable(f.resolved_slot, 8)) malformed(path, where + ".resolved is not writable data");
    out.functions.push_back(f);
  }

  uint64_t data_at = image.pointer_at(field(&raw.data));
  auto data = read_array<polus_data>(image, path, data_at, raw.data_count, "data");
  for (uint32_t i = 0; i < data.size(); ++i) {
    uint64_t entry = data_at + i * sizeof(polus_data);
    const std::string where = "data[" + std::to_string(i) + "]";
    PatchData d;
    d.side = data[i].side;
    d.size = data[i].size;
    d.flags = data[i].flags;
    d.name = image.string_at(image.pointer_at(entry + offsetof(polus_data, name)), (where + ".name").c_str());
    d.address = image.pointer_at(entry + offsetof(polus_data, address));
    d.resolved_slot = image.pointer_at(entry + offsetof(polus_data, resolved));
    d.post_sync = image.pointer_at(entry + offsetof(polus_data, post_sync));
    d.pre_sync = image.pointer_at(entry + offsetof(polus_data, pre_sync));
    if (d.side != POLUS_OLD && d.side != POLUS_NEW) malformed(path, where + " is neither POLUS_OLD nor POLUS_NEW");
    if (d.side == POLUS_OLD && d.name.empty()) malformed(path, where + " (old) names no target global");
    if (d.side == POLUS_NEW && (d.address == 0 || d.size == 0)) malformed(path, where + " (new) has no address or size");
    for (uint64_t fn : {d.post_sync, d.pre_sync}) {
      if (fn && !image.is_executable(fn)) malformed(path, where + " has a sync function outside the patch's code");
    }
    out.data.push_back(d);
  }

  out.mappings = read_array<polus_mapping>(image, path, image.pointer_at(field(&raw.mappings)), raw.mapping_count, "mappings");
  for (size_t i = 0; i < out.mappings.size(); ++i) {
    const polus_mapping& m = out.mappings[i];
    const std::string where = "mappings[" + std::to_string(i) + "]";
    auto fn_ok = [&](uint32_t idx, uint32_t side) { return idx < out.functions.size() && (side == 0 || out.functions[idx].side == side); };
    auto data_ok = [&](uint32_t idx, uint32_t side) { return idx < out.data.size() && (side == 0 || out.data[idx].side == side); };
    bool ok = false;
    switch (m.kind) {
      case POLUS_MAP_FUNCTION: ok = fn_ok(m.from, POLUS_OLD) && fn_ok(m.to, POLUS_NEW); break;
      case POLUS_MAP_DATA: ok = data_ok(m.from, POLUS_OLD) && data_ok(m.to, POLUS_NEW); break;
      case POLUS_MAP_F2D: ok = fn_ok(m.from, 0) && data_ok(m.to, 0); break;
      case POLUS_MAP_D2F: ok = data_ok(m.from, 0) && fn_ok(m.to, 0); break;
      default: malformed(path, where + " has unknown kind " + std::to_string(m.kind));
    }
    if (!ok) {
      malformed(path, where + " (" + std::to_string(m.from) + " -> " + std::to_string(m.to) +
                          ") refers to an entry that does not exist or is on the wrong side");
    }
  }
  for (const auto& [from, to] : out.function_replacements()) {
    int replaced = 0;
    for (const auto& [f2, t2] : out.function_replacements()) replaced += (f2 == from);
    if (replaced > 1) malformed(path, "old function '" + out.functions[from].name + "' is replaced twice");
    (void)to;
  }

  uint64_t callbacks_at = image.pointer_at(field(&raw.callbacks));
  out.callbacks = read_array<polus_callback>(image, path, callbacks_at, raw.callback_count, "callbacks");
  for (size_t i = 0; i < out.callbacks.size(); ++i) {
    uint64_t fn = image.pointer_at(callbacks_at + i * sizeof(polus_callback) + offsetof(polus_callback, fn));
    if (out.callbacks[i].kind < POLUS_CB_PRE_UPDATE || out.callbacks[i].kind > POLUS_CB_POST_UPDATE) {
      malformed(path, "callbacks[" + std::to_string(i) + "] has unknown kind " + std::to_string(out.callbacks[i].kind));
    }
    if (!image.is_executable(fn)) malformed(path, "callbacks[" + std::to_string(i) + "] does not point to code in the patch");
    out.callbacks[i].fn = reinterpret_cast<polus_callback_fn>(fn);
  }

  uint64_t imports_at = image.pointer_at(field(&raw.imports));
  auto imports = read_array<polus_import>(image, path, imports_at, raw.import_count, "imports");
  for (uint32_t i = 0; i < imports.size(); ++i) {
    uint64_t entry = imports_at + i * sizeof(polus_import);
    PatchImport imp;
    imp.name = image.string_at(image.pointer_at(entry + offsetof(polus_import, name)), "an import name");
    imp.slot = image.pointer_at(entry + offsetof(polus_import, slot));
    if (imp.name.empty()) malformed(path, "imports[" + std::to_string(i) + "] has no name");
    if (!image.is_writable(imp.slot, 8)) malformed(path, "imports[" + std::to_string(i) + "] ('" + imp.name + "') has no writable slot");
    out.imports.push_back(imp);
  }

  uint64_t ids_at = image.pointer_at(field(&raw.build_ids));
  auto ids = read_array<polus_build_id>(image, path, ids_at, raw.build_id_count, "build_ids");
  for (uint32_t i = 0; i < ids.size(); ++i) {
    uint64_t entry = ids_at + i * sizeof(polus_build_id);
    PatchBuildId id;
    id.object = image.string_at(image.pointer_at(entry + offsetof(polus_build_id, object)), "a build-id object");
    id.hex = image.string_at(image.pointer_at(entry + offsetof(polus_build_id, hex)), "a build-id");
    if (id.hex.empty() || id.hex.find_first_not_of("0123456789abcdef") != std::string::npos) {
      malformed(path, "build_ids[" + std::to_string(i) + "] is not lowercase hex");
    }
    out.build_ids.push_back(id);
  }
  if (out.function_replacements().empty() && out.data.empty()) {
    malformed(path, "it replaces no function and changes no data");
  }
  return out;
}

}  // namespace polus
