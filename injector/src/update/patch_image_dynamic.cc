// update/patch_image_dynamic.cc — PatchImage's checks of the dynamic section and what it
// points to, as ld.so reads them: the dynamic tags and flags, the string and symbol tables,
// the GNU and SysV hash tables, the symbol versions, the relocations (and what each leaves
// in memory) and DT_INIT_ARRAY/DT_FINI_ARRAY.
#include "update/patch_image.h"

#include <elf.h>

#include <algorithm>
#include <cstring>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "common/format.h"

namespace polus::patch_image {

namespace {

constexpr uint64_t kMaxSymbols = 1000000;

uint32_t gnu_hash(std::string_view name) {
  uint32_t h = 5381;
  for (unsigned char c : name) h = h * 33 + c;
  return h;
}

uint32_t sysv_hash(std::string_view name) {
  uint32_t h = 0;
  for (unsigned char c : name) {
    h = (h << 4) + c;
    uint32_t g = h & 0xf0000000u;
    if (g) h ^= g >> 24;
    h &= ~g;
  }
  return h;
}

}  // namespace

// ---- The dynamic section. -----------------------------------------------------------------------

void PatchImage::read_dynamic() {
  bool terminated = false;
  for (uint64_t at = dynamic_; at < dynamic_ + dynamic_size_; at += sizeof(Elf64_Dyn)) {
    Elf64_Dyn d = table_at<Elf64_Dyn>(at, "a dynamic entry");
    if (d.d_tag == DT_NULL) {
      terminated = true;
      break;
    }
    const std::string tag = "dynamic tag " + hex(static_cast<uint64_t>(d.d_tag));
    switch (d.d_tag) {
      case DT_NEEDED:
        needed_offsets_.push_back(d.d_un.d_val);
        continue;
      case DT_PLTRELSZ: case DT_PLTGOT: case DT_HASH: case DT_STRTAB: case DT_SYMTAB: case DT_RELA:
      case DT_RELASZ: case DT_RELAENT: case DT_STRSZ: case DT_SYMENT: case DT_INIT: case DT_FINI:
      case DT_SONAME: case DT_RPATH: case DT_SYMBOLIC: case DT_PLTREL: case DT_JMPREL: case DT_BIND_NOW:
      case DT_INIT_ARRAY: case DT_FINI_ARRAY: case DT_INIT_ARRAYSZ: case DT_FINI_ARRAYSZ: case DT_RUNPATH:
      case DT_FLAGS: case DT_GNU_HASH: case DT_VERSYM: case DT_RELACOUNT: case DT_FLAGS_1: case DT_VERDEF:
      case DT_VERDEFNUM: case DT_VERNEED: case DT_VERNEEDNUM:
        break;
      case DT_TEXTREL:
        fail("it has text relocations (DT_TEXTREL): build it with -fPIC");
      case DT_REL: case DT_RELSZ: case DT_RELENT: case DT_RELCOUNT:
        fail("it has REL relocations (" + tag + "), which x86-64 does not use");
      case DT_RELR: case DT_RELRSZ: case DT_RELRENT:
        fail("it has packed relative relocations (DT_RELR), which Polus does not read; link it without -z pack-relative-relocs");
      case DT_PREINIT_ARRAY: case DT_PREINIT_ARRAYSZ:
        fail("it has a DT_PREINIT_ARRAY, which only executables may have");
      case DT_AUXILIARY: case DT_FILTER:
        fail("it is a filter library (DT_AUXILIARY/DT_FILTER), not a patch");
      case DT_AUDIT: case DT_DEPAUDIT:
        fail("it names audit libraries (DT_AUDIT/DT_DEPAUDIT)");
      default:
        fail("its " + tag + " is not one this Polus understands");
    }
    if (!dyn_.emplace(d.d_tag, d.d_un.d_val).second) fail("its " + tag + " appears twice");
  }
  if (!terminated) fail("its dynamic section has no DT_NULL terminator within PT_DYNAMIC");

  // The string table first: names in every other table point into it.
  if (!has(DT_STRTAB) || !has(DT_STRSZ)) fail("its dynamic section has no string table (DT_STRTAB/DT_STRSZ)");
  strtab_ = dyn(DT_STRTAB);
  strsz_ = dyn(DT_STRSZ);
  if (strsz_ == 0 || strsz_ > bytes_.size()) fail("its dynamic string table size " + std::to_string(strsz_) + " is impossible");
  table_range(strtab_, strsz_, "the dynamic string table");
  strings_ = std::string_view(reinterpret_cast<const char*>(bytes_.data()) + file_offset(strtab_), strsz_);
  if (strings_.front() != 0 || strings_.back() != 0) fail("its dynamic string table does not start and end with NUL");

  for (uint64_t offset : needed_offsets_) {
    std::string name = dyn_string(offset, "a DT_NEEDED entry");
    if (name.empty()) fail("a DT_NEEDED entry names no library");
    needed_.insert(name);
  }
  if (has(DT_SONAME) && dyn_string(dyn(DT_SONAME), "DT_SONAME").empty()) fail("its DT_SONAME is empty");
  if (has(DT_RPATH)) dyn_string(dyn(DT_RPATH), "DT_RPATH");
  if (has(DT_RUNPATH)) dyn_string(dyn(DT_RUNPATH), "DT_RUNPATH");

  if (!has(DT_SYMTAB)) fail("its dynamic section has no symbol table (DT_SYMTAB)");
  if (dyn(DT_SYMENT) != sizeof(Elf64_Sym)) fail("its DT_SYMENT is " + std::to_string(dyn(DT_SYMENT)) + ", not 24");
  if (!has(DT_GNU_HASH) && !has(DT_HASH)) fail("it has no symbol hash table (DT_GNU_HASH or DT_HASH)");

  if (has(DT_RELA) || has(DT_RELASZ) || has(DT_RELAENT)) {
    if (!has(DT_RELA) || !has(DT_RELASZ) || !has(DT_RELAENT)) fail("it has only some of DT_RELA, DT_RELASZ and DT_RELAENT");
    if (dyn(DT_RELAENT) != sizeof(Elf64_Rela)) fail("its DT_RELAENT is " + std::to_string(dyn(DT_RELAENT)) + ", not 24");
    if (dyn(DT_RELASZ) % sizeof(Elf64_Rela) != 0) fail("its DT_RELASZ is not a whole number of relocations");
  }
  if (has(DT_RELACOUNT) && !has(DT_RELA)) fail("it has DT_RELACOUNT without DT_RELA");
  if (has(DT_JMPREL) || has(DT_PLTRELSZ) || has(DT_PLTREL)) {
    if (!has(DT_JMPREL) || !has(DT_PLTRELSZ) || !has(DT_PLTREL)) fail("it has only some of DT_JMPREL, DT_PLTRELSZ and DT_PLTREL");
    if (dyn(DT_PLTREL) != DT_RELA) fail("its DT_PLTREL is " + std::to_string(dyn(DT_PLTREL)) + ", not DT_RELA");
    if (dyn(DT_PLTRELSZ) % sizeof(Elf64_Rela) != 0) fail("its DT_PLTRELSZ is not a whole number of relocations");
  }
  if (has(DT_PLTGOT) && !segment_of(dyn(DT_PLTGOT), 24)) fail("its DT_PLTGOT is not inside a loadable segment");
  for (auto [array, size, name] : {std::tuple{DT_INIT_ARRAY, DT_INIT_ARRAYSZ, "DT_INIT_ARRAY"},
                                   std::tuple{DT_FINI_ARRAY, DT_FINI_ARRAYSZ, "DT_FINI_ARRAY"}}) {
    if (has(array) != has(size)) fail(std::string("it has only one of ") + name + " and its size");
  }
  for (auto [tag, name] : {std::pair{DT_INIT, "DT_INIT"}, std::pair{DT_FINI, "DT_FINI"}}) {
    if (has(tag) && !is_executable(dyn(tag))) fail(std::string("its ") + name + " " + hex(dyn(tag)) + " is not in its code");
  }
  // Flags the loader acts on. Only these are understood; the others change how the object
  // is loaded or unloaded (never unloaded, global, first, ...), which a patch must not do.
  uint64_t flags = dyn(DT_FLAGS);
  if (flags & DF_TEXTREL) fail("it has text relocations (DF_TEXTREL): build it with -fPIC");
  if (flags & DF_STATIC_TLS) fail("it uses the static TLS model (DF_STATIC_TLS), which cannot be loaded later; build it with -fPIC");
  if (flags & ~uint64_t{DF_ORIGIN | DF_SYMBOLIC | DF_BIND_NOW}) fail("its DT_FLAGS " + hex(flags) + " has bits this Polus does not understand");
  uint64_t flags_1 = dyn(DT_FLAGS_1);
  if (flags_1 & DF_1_NODELETE) fail("it cannot be unloaded (DF_1_NODELETE), so it could never be rolled back; link it without -z nodelete");
  if (flags_1 & DF_1_PIE) fail("it is a position-independent executable, not a shared object");
  if (flags_1 & ~uint64_t{DF_1_NOW | DF_1_ORIGIN | DF_1_NODEFLIB}) {
    fail("its DT_FLAGS_1 " + hex(flags_1) + " asks the loader for something a patch must not do (global, first, no-open, ...)");
  }
}

uint64_t PatchImage::file_offset(uint64_t vaddr) const {
  const Segment* seg = file_segment_of(vaddr, 1);
  return seg->offset + (vaddr - seg->vaddr);
}

std::string PatchImage::dyn_string(uint64_t offset, const std::string& what) const {
  if (offset >= strsz_) fail(what + " has string offset " + hex(offset) + " outside the string table (" + std::to_string(strsz_) + " bytes)");
  size_t end = strings_.find('\0', offset);  // found: the table ends with NUL
  if (end - offset > kMaxString) fail(what + " is longer than " + std::to_string(kMaxString) + " bytes");
  return std::string(strings_.substr(offset, end - offset));
}

// ---- Symbols and their hash tables. -------------------------------------------------------------

void PatchImage::read_symbols() {
  uint64_t count = 0;
  if (has(DT_GNU_HASH)) count = read_gnu_hash();
  if (has(DT_HASH)) {
    uint64_t sysv = read_sysv_hash_header();
    if (has(DT_GNU_HASH) && sysv != count) {
      fail("its DT_HASH counts " + std::to_string(sysv) + " symbols but its DT_GNU_HASH " + std::to_string(count));
    }
    count = sysv;
  }
  if (count == 0) fail("its dynamic symbol table is empty");
  symtab_ = dyn(DT_SYMTAB);
  table_range(symtab_, count * sizeof(Elf64_Sym), "the dynamic symbol table");
  symbols_.resize(count);
  std::memcpy(symbols_.data(), bytes_.data() + file_offset(symtab_), count * sizeof(Elf64_Sym));
  static const Elf64_Sym kZero{};
  if (std::memcmp(&symbols_[0], &kZero, sizeof kZero) != 0) fail("its dynamic symbol 0 is not all zero");
  names_.resize(count);
  std::set<std::string_view> exported;
  for (size_t i = 1; i < count; ++i) {
    const Elf64_Sym& s = symbols_[i];
    const std::string where = "dynamic symbol " + std::to_string(i);
    names_[i] = dyn_string(s.st_name, where);
    const std::string named = where + " ('" + names_[i] + "')";
    int type = ELF64_ST_TYPE(s.st_info), bind = ELF64_ST_BIND(s.st_info);
    if (type == STT_GNU_IFUNC) fail(named + " is an indirect function (ifunc), which would run code while loading");
    if (type != STT_NOTYPE && type != STT_OBJECT && type != STT_FUNC && type != STT_SECTION && type != STT_TLS) {
      fail(named + " has symbol type " + std::to_string(type) + ", which this Polus does not understand");
    }
    if (bind == STB_GNU_UNIQUE) fail(named + " is a unique symbol (STB_GNU_UNIQUE), which keeps the patch from being unloaded; build it with -fno-gnu-unique");
    if (bind != STB_LOCAL && bind != STB_GLOBAL && bind != STB_WEAK) fail(named + " has binding " + std::to_string(bind));
    if (s.st_other & ~0x3) fail(named + " has unknown st_other bits " + hex(s.st_other));
    if (s.st_shndx == SHN_UNDEF) {
      if (bind == STB_LOCAL) fail(named + " is undefined but local");
      if (s.st_value != 0) fail(named + " is undefined but has a value");
      continue;
    }
    if (s.st_shndx == SHN_ABS) {
      if (s.st_value != 0 || (type != STT_OBJECT && type != STT_NOTYPE)) fail(named + " is an absolute symbol, which a patch does not have");
      continue;
    }
    if (s.st_shndx >= SHN_LORESERVE || (!sections_.empty() && s.st_shndx >= sections_.size())) {
      fail(named + " is defined in section " + std::to_string(s.st_shndx) + ", which does not exist");
    }
    if (type == STT_TLS) {
      if (!has_tls_ || !fits(s.st_value, s.st_size, tls_size_)) fail(named + " is a TLS symbol outside the patch's TLS block");
    } else if (type != STT_SECTION && !segment_of(s.st_value, std::max<uint64_t>(s.st_size, 1))) {
      fail(named + " (" + hex(s.st_value) + ", " + std::to_string(s.st_size) + " bytes) is not inside a loadable segment");
    } else if (type == STT_FUNC && !is_executable(s.st_value)) {
      fail(named + " is a function outside the patch's code");
    }
    if (bind != STB_LOCAL) {
      if (!exported.insert(names_[i]).second) fail("symbol '" + names_[i] + "' is defined twice");
      if (type != STT_SECTION && type != STT_TLS && s.st_size > 0) sizes_[s.st_value] = s.st_size;
    }
  }
  check_hash_lookups();
}

/// The GNU hash table; returns the symbol count it implies.
uint64_t PatchImage::read_gnu_hash() {
  const uint64_t at = dyn(DT_GNU_HASH);
  const std::string what = "the GNU hash table";
  gnu_nbuckets_ = table_at<uint32_t>(at, what);
  gnu_symoffset_ = table_at<uint32_t>(at + 4, what);
  gnu_bloom_size_ = table_at<uint32_t>(at + 8, what);
  gnu_shift_ = table_at<uint32_t>(at + 12, what);
  if (gnu_nbuckets_ == 0) fail(what + " has no buckets");
  if (!power_of_two(gnu_bloom_size_)) fail(what + "'s bloom filter size " + std::to_string(gnu_bloom_size_) + " is not a power of two");
  if (gnu_shift_ >= 32) fail(what + "'s bloom shift " + std::to_string(gnu_shift_) + " is not below 32");
  if (gnu_symoffset_ == 0 || gnu_symoffset_ > kMaxSymbols) fail(what + "'s first hashed symbol " + std::to_string(gnu_symoffset_) + " is impossible");
  gnu_bloom_ = at + 16;
  gnu_buckets_ = gnu_bloom_ + uint64_t{gnu_bloom_size_} * 8;
  gnu_chains_ = gnu_buckets_ + uint64_t{gnu_nbuckets_} * 4;
  table_range(gnu_bloom_, uint64_t{gnu_bloom_size_} * 8, what + "'s bloom filter");
  table_range(gnu_buckets_, uint64_t{gnu_nbuckets_} * 4, what + "'s buckets");
  uint64_t count = gnu_symoffset_;
  for (uint32_t b = 0; b < gnu_nbuckets_; ++b) {
    uint32_t first = table_at<uint32_t>(gnu_buckets_ + uint64_t{b} * 4, what);
    if (first == 0) continue;
    if (first < gnu_symoffset_) fail(what + "'s bucket " + std::to_string(b) + " starts below its first hashed symbol");
    uint64_t i = first;
    while (true) {
      if (i >= kMaxSymbols) fail(what + " has a chain that does not end");
      uint32_t h = table_at<uint32_t>(gnu_chains_ + (i - gnu_symoffset_) * 4, what + "'s chain");
      if (h & 1) break;
      ++i;
    }
    count = std::max(count, i + 1);
  }
  add_table(gnu_chains_, (count - gnu_symoffset_) * 4);
  if (count == gnu_symoffset_ && count > kMaxSymbols) fail(what + " counts too many symbols");
  return count;
}

uint64_t PatchImage::read_sysv_hash_header() {
  const uint64_t at = dyn(DT_HASH);
  const std::string what = "the SysV hash table";
  sysv_nbuckets_ = table_at<uint32_t>(at, what);
  uint32_t nchain = table_at<uint32_t>(at + 4, what);
  if (sysv_nbuckets_ == 0) fail(what + " has no buckets");
  if (nchain == 0 || nchain > kMaxSymbols) fail(what + " counts " + std::to_string(nchain) + " symbols");
  table_range(at, (2 + uint64_t{sysv_nbuckets_} + nchain) * 4, what);
  sysv_buckets_ = at + 8;
  sysv_chains_ = sysv_buckets_ + uint64_t{sysv_nbuckets_} * 4;
  return nchain;
}

/// Every exported definition is found where the loader's lookup searches for it, and every
/// chain ends: a damaged table would hide a symbol or send the loader's walk astray.
void PatchImage::check_hash_lookups() const {
  const uint64_t count = symbols_.size();
  auto exported = [&](size_t i) {
    const Elf64_Sym& s = symbols_[i];
    return s.st_shndx != SHN_UNDEF && ELF64_ST_BIND(s.st_info) != STB_LOCAL;
  };
  if (has(DT_GNU_HASH)) {
    const std::string what = "the GNU hash table";
    if (gnu_symoffset_ > count) fail(what + "'s first hashed symbol is beyond the symbol table");
    for (size_t i = 1; i < gnu_symoffset_; ++i) {
      if (exported(i) && ELF64_ST_TYPE(symbols_[i].st_info) != STT_TLS && symbols_[i].st_value != 0) {
        fail("dynamic symbol " + std::to_string(i) + " ('" + names_[i] + "') is exported but not in " + what);
      }
    }
    for (uint64_t i = gnu_symoffset_; i < count; ++i) {
      uint32_t h = gnu_hash(names_[i]);
      uint32_t bucket = table_at<uint32_t>(gnu_buckets_ + uint64_t{h % gnu_nbuckets_} * 4, what);
      uint32_t chain = table_at<uint32_t>(gnu_chains_ + (i - gnu_symoffset_) * 4, what);
      bool placed = bucket != 0 && bucket <= i && (chain | 1) == (h | 1);
      for (uint64_t j = bucket; placed && j < i; ++j) {
        if (table_at<uint32_t>(gnu_chains_ + (j - gnu_symoffset_) * 4, what) & 1) placed = false;  // chain ended before i
      }
      if (!placed) fail("dynamic symbol " + std::to_string(i) + " ('" + names_[i] + "') is not where " + what + " says it is");
      uint64_t word = table_at<uint64_t>(gnu_bloom_ + ((h / 64) % gnu_bloom_size_) * 8, what);
      uint64_t mask = (uint64_t{1} << (h % 64)) | (uint64_t{1} << ((h >> gnu_shift_) % 64));
      if ((word & mask) != mask) fail(what + "'s bloom filter hides dynamic symbol '" + names_[i] + "'");
    }
  }
  if (has(DT_HASH)) {
    const std::string what = "the SysV hash table";
    std::vector<bool> seen(count, false);
    for (uint32_t b = 0; b < sysv_nbuckets_; ++b) {
      uint64_t steps = 0;
      for (uint32_t i = table_at<uint32_t>(sysv_buckets_ + uint64_t{b} * 4, what); i != 0;
           i = table_at<uint32_t>(sysv_chains_ + uint64_t{i} * 4, what)) {
        if (i >= count || ++steps > count) fail(what + " has a chain that leaves the table or does not end");
        if (sysv_hash(names_[i]) % sysv_nbuckets_ != b) fail(what + " puts '" + names_[i] + "' in the wrong bucket");
        seen[i] = true;
      }
    }
    for (size_t i = 1; i < count; ++i) {
      if (exported(i) && !seen[i]) fail("dynamic symbol '" + names_[i] + "' is not in " + what);
    }
  }
}

// ---- Symbol versions. ---------------------------------------------------------------------------

void PatchImage::read_versions() {
  std::set<uint32_t> indices;
  auto add_index = [&](uint32_t index, const std::string& where) {
    if (index < 1 || index >= 0x7fff) fail(where + " has version index " + std::to_string(index));
    if (!indices.insert(index).second) fail(where + " reuses version index " + std::to_string(index));
  };
  if (has(DT_VERNEED) != has(DT_VERNEEDNUM)) fail("it has only one of DT_VERNEED and DT_VERNEEDNUM");
  if (has(DT_VERNEED)) {
    uint64_t count = dyn(DT_VERNEEDNUM);
    if (count == 0 || count > 1000) fail("its DT_VERNEEDNUM is " + std::to_string(count));
    uint64_t at = dyn(DT_VERNEED);
    for (uint64_t n = 0; n < count; ++n) {
      const std::string where = "version requirement " + std::to_string(n);
      auto need = table_at<Elf64_Verneed>(at, where);
      add_table(at, sizeof need);
      if (need.vn_version != 1) fail(where + " has version " + std::to_string(need.vn_version) + ", not 1");
      std::string file = dyn_string(need.vn_file, where);
      if (!needed_.count(file)) fail(where + " names '" + file + "', which is not one of its DT_NEEDED libraries");
      if (need.vn_cnt == 0 || need.vn_aux < sizeof need) fail(where + " has no versions");
      uint64_t aux_at = at + need.vn_aux;
      for (uint32_t k = 0; k < need.vn_cnt; ++k) {
        const std::string aux_where = where + ", entry " + std::to_string(k);
        auto aux = table_at<Elf64_Vernaux>(aux_at, aux_where);
        add_table(aux_at, sizeof aux);
        std::string name = dyn_string(aux.vna_name, aux_where);
        if (aux.vna_hash != sysv_hash(name)) fail(aux_where + " ('" + name + "') has a hash that does not match its name");
        if (aux.vna_flags & ~VER_FLG_WEAK) fail(aux_where + " has unknown flags " + hex(aux.vna_flags));
        if (aux.vna_other & 0x8000) fail(aux_where + " has a hidden version index");
        add_index(aux.vna_other, aux_where);
        if (aux.vna_other < 2) fail(aux_where + " has version index " + std::to_string(aux.vna_other));
        bool last = k + 1 == need.vn_cnt;
        if (last != (aux.vna_next == 0) || (!last && aux.vna_next < sizeof aux)) fail(aux_where + "'s link to the next entry disagrees with the count");
        aux_at += aux.vna_next;
      }
      bool last = n + 1 == count;
      if (last != (need.vn_next == 0) || (!last && need.vn_next < sizeof need)) fail(where + "'s link to the next disagrees with DT_VERNEEDNUM");
      at += need.vn_next;
    }
  }
  if (has(DT_VERDEF) != has(DT_VERDEFNUM)) fail("it has only one of DT_VERDEF and DT_VERDEFNUM");
  if (has(DT_VERDEF)) {
    uint64_t count = dyn(DT_VERDEFNUM);
    if (count == 0 || count > 1000) fail("its DT_VERDEFNUM is " + std::to_string(count));
    uint64_t at = dyn(DT_VERDEF);
    for (uint64_t n = 0; n < count; ++n) {
      const std::string where = "version definition " + std::to_string(n);
      auto def = table_at<Elf64_Verdef>(at, where);
      add_table(at, sizeof def);
      if (def.vd_version != 1) fail(where + " has version " + std::to_string(def.vd_version) + ", not 1");
      if (def.vd_flags & ~(VER_FLG_BASE | VER_FLG_WEAK)) fail(where + " has unknown flags " + hex(def.vd_flags));
      add_index(def.vd_ndx, where);
      if (def.vd_cnt == 0 || def.vd_aux < sizeof def) fail(where + " has no name");
      uint64_t aux_at = at + def.vd_aux;
      for (uint32_t k = 0; k < def.vd_cnt; ++k) {
        const std::string aux_where = where + ", name " + std::to_string(k);
        auto aux = table_at<Elf64_Verdaux>(aux_at, aux_where);
        add_table(aux_at, sizeof aux);
        std::string name = dyn_string(aux.vda_name, aux_where);
        if (k == 0 && def.vd_hash != sysv_hash(name)) fail(where + " ('" + name + "') has a hash that does not match its name");
        bool last = k + 1 == def.vd_cnt;
        if (last != (aux.vda_next == 0) || (!last && aux.vda_next < sizeof aux)) fail(aux_where + "'s link to the next disagrees with the count");
        aux_at += aux.vda_next;
      }
      bool last = n + 1 == count;
      if (last != (def.vd_next == 0) || (!last && def.vd_next < sizeof def)) fail(where + "'s link to the next disagrees with DT_VERDEFNUM");
      at += def.vd_next;
    }
  }
  if (has(DT_VERSYM)) {
    if (indices.empty()) fail("it has a symbol version table (DT_VERSYM) but defines and needs no versions");
    uint64_t at = dyn(DT_VERSYM);
    table_range(at, symbols_.size() * sizeof(Elf64_Half), "the symbol version table");
    for (size_t i = 0; i < symbols_.size(); ++i) {
      uint16_t v = table_at<uint16_t>(at + i * 2, "the symbol version table");
      uint16_t index = v & 0x7fff;
      if (index > 1 && !indices.count(index)) {
        fail("dynamic symbol " + std::to_string(i) + " ('" + names_[i] + "') has version index " + std::to_string(index) +
             ", which the patch neither defines nor needs");
      }
    }
  } else if (!indices.empty()) {
    fail("it has symbol versions but no symbol version table (DT_VERSYM)");
  }
}

// ---- Relocations. -------------------------------------------------------------------------------

void PatchImage::read_relocations() {
  uint64_t rela = dyn(DT_RELA), rela_size = dyn(DT_RELASZ);
  uint64_t jmprel = dyn(DT_JMPREL), jmprel_size = dyn(DT_PLTRELSZ);
  if (has(DT_RELA) && has(DT_JMPREL)) {
    // ld.so drops the PLT relocations from the end of DT_RELA when DT_RELASZ covers both.
    if (rela + rela_size == jmprel + jmprel_size && jmprel >= rela && rela_size >= jmprel_size) {
      rela_size -= jmprel_size;
    } else if (!(rela + rela_size <= jmprel || jmprel + jmprel_size <= rela)) {
      fail("its DT_RELA and DT_JMPREL relocation tables overlap");
    }
  }
  if (has(DT_RELA)) {
    table_range(rela, rela_size, "the relocation table (DT_RELA)");
    uint64_t count = rela_size / sizeof(Elf64_Rela);
    uint64_t relative = dyn(DT_RELACOUNT);
    if (relative > count) fail("its DT_RELACOUNT (" + std::to_string(relative) + ") exceeds its " + std::to_string(count) + " relocations");
    for (uint64_t i = 0; i < count; ++i) {
      auto r = table_at<Elf64_Rela>(rela + i * sizeof(Elf64_Rela), "a relocation");
      if (i < relative && ELF64_R_TYPE(r.r_info) != R_X86_64_RELATIVE) {
        fail("relocation " + std::to_string(i) + " is counted by DT_RELACOUNT as relative but has type " +
             std::to_string(ELF64_R_TYPE(r.r_info)));
      }
      add_relocation(r, false, "relocation " + std::to_string(i));
    }
  }
  if (has(DT_JMPREL)) {
    table_range(jmprel, jmprel_size, "the PLT relocation table (DT_JMPREL)");
    for (uint64_t i = 0; i < jmprel_size / sizeof(Elf64_Rela); ++i) {
      auto r = table_at<Elf64_Rela>(jmprel + i * sizeof(Elf64_Rela), "a PLT relocation");
      add_relocation(r, true, "PLT relocation " + std::to_string(i));
    }
  }
  // Nothing may rewrite what the loader reads (it reads some of it again after relocating).
  for (const auto& [vaddr, size] : tables_) {
    if (relocation_overlapping(vaddr, size)) fail("a relocation overwrites a loader table at " + hex(vaddr));
  }
}

void PatchImage::add_relocation(const Elf64_Rela& r, bool plt, const std::string& where) {
  uint32_t type = ELF64_R_TYPE(r.r_info);
  uint64_t sym = ELF64_R_SYM(r.r_info);
  if (sym >= symbols_.size()) {
    fail(where + " refers to symbol " + std::to_string(sym) + " of " + std::to_string(symbols_.size()));
  }
  // ld.so skips R_X86_64_NONE, but a linker leaves none in a patch: one here is a damaged
  // type, and the slot it should have filled (a GOT entry, a pointer) stays unrelocated.
  if (type == R_X86_64_NONE) fail(where + " has type R_X86_64_NONE: the slot at " + hex(r.r_offset) + " would stay unrelocated");
  const Elf64_Sym& s = symbols_[sym];
  const std::string& name = names_[sym];
  bool defined = s.st_shndx != SHN_UNDEF;
  int sym_type = ELF64_ST_TYPE(s.st_info);
  if (plt != (type == R_X86_64_JUMP_SLOT)) {
    fail(where + " has type " + std::to_string(type) + (plt ? " in the PLT relocation table" : ", a PLT type, outside the PLT table"));
  }
  Relocation out;
  out.type = type;
  switch (type) {
    case R_X86_64_RELATIVE:
      if (sym != 0) fail(where + " is relative but names a symbol");
      if (static_cast<uint64_t>(r.r_addend) < image_start_ || static_cast<uint64_t>(r.r_addend) > image_end_) {
        fail(where + " stores " + hex(static_cast<uint64_t>(r.r_addend)) + ", which is outside the patch");
      }
      out.known = true;
      out.value = static_cast<uint64_t>(r.r_addend);
      break;
    case R_X86_64_64:
    case R_X86_64_GLOB_DAT:
    case R_X86_64_JUMP_SLOT:
      if (sym == 0) fail(where + " needs a symbol but names none");
      if (sym_type == STT_TLS || sym_type == STT_SECTION) fail(where + " refers to " + (sym_type == STT_TLS ? "a TLS" : "a section") + " symbol");
      if (type != R_X86_64_64 && r.r_addend != 0) fail(where + " has an addend the loader ignores");
      if (defined && s.st_shndx != SHN_ABS) {
        out.known = true;
        out.value = s.st_value + static_cast<uint64_t>(r.r_addend);
      } else {
        out.external = name;
      }
      break;
    case R_X86_64_DTPMOD64:
    case R_X86_64_DTPOFF64:
    case R_X86_64_TPOFF64:
      if (sym == 0 ? !has_tls_ : sym_type != STT_TLS) fail(where + " is a TLS relocation without TLS data");
      break;
    default:
      fail(where + " has type " + std::to_string(type) + ", which the loader does not accept in a patch");
  }
  if (!is_writable(r.r_offset, 8)) {
    fail(where + " writes to " + hex(r.r_offset) + ", which is not in a writable segment");
  }
  if (relocation_overlapping(r.r_offset, 8)) fail(where + " writes over another relocation at " + hex(r.r_offset));
  relocations_.emplace(r.r_offset, std::move(out));
}

/// Constructors and destructors the loader calls: every entry relocated into the code.
void PatchImage::check_init_fini() {
  for (auto [array, size, name] : {std::tuple{DT_INIT_ARRAY, DT_INIT_ARRAYSZ, "DT_INIT_ARRAY"},
                                   std::tuple{DT_FINI_ARRAY, DT_FINI_ARRAYSZ, "DT_FINI_ARRAY"}}) {
    if (!has(array)) continue;
    uint64_t at = dyn(array), bytes = dyn(size);
    if (bytes % 8 != 0 || bytes / 8 > kMaxEntries) fail(std::string("its ") + name + " size " + std::to_string(bytes) + " is not understood");
    if (bytes > 0 && !segment_of(at, bytes)) fail(std::string("its ") + name + " is not inside a loadable segment");
    for (uint64_t entry = at; entry < at + bytes; entry += 8) {
      auto it = relocations_.find(entry);
      if (it == relocations_.end() || !it->second.known || !is_executable(it->second.value)) {
        fail(std::string("an entry of its ") + name + " at " + hex(entry) + " does not point to code in the patch");
      }
    }
  }
}

}  // namespace polus::patch_image
