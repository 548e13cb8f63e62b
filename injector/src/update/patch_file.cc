#include "update/patch_file.h"

#include <elf.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <set>
#include <string_view>

#include "binary/elf_reader.h"
#include "common/format.h"
#include "polus/error.h"

namespace polus {

namespace {

constexpr uint64_t kPageSize = 4096;
constexpr uint64_t kMaxSegmentAlign = uint64_t{2} << 20;    // 2 MiB pages at most
constexpr uint64_t kMaxImageSpan = uint64_t{256} << 20;     // what the loader maps, bss included
constexpr uint64_t kMaxTlsBytes = uint64_t{1} << 20;
constexpr uint16_t kMaxProgramHeaders = 64;  // ld.so keeps them in a stack array
constexpr uint64_t kMaxSymbols = 1000000;
constexpr uint32_t kMaxEntries = 100000;
constexpr size_t kMaxString = 4096;

[[noreturn]] void malformed(const std::string& label, const std::string& why) {
  throw Error(ErrorCode::kPatchMalformed, "patch " + label + " is malformed: " + why +
                                              ". Rebuild it against patch-format/include/polus/patch.h");
}

/// An ELF-level fault: the loader would refuse the file, misread it or assert on it.
[[noreturn]] void damaged(const std::string& label, const std::string& why) {
  throw Error(ErrorCode::kPatchMalformed,
              "patch " + label + " is malformed: " + why +
                  "; the file is damaged (truncated or altered) or was not linked as a plain shared object: "
                  "rebuild it (gcc -shared -fPIC) and copy it again");
}

/// [offset, offset + length) lies inside [0, size), without overflow.
bool fits(uint64_t offset, uint64_t length, uint64_t size) { return offset <= size && length <= size - offset; }
/// [a, a + n) inside [base, base + limit), without overflow.
bool inside(uint64_t a, uint64_t n, uint64_t base, uint64_t limit) {
  return a >= base && fits(a - base, n, limit);
}
bool power_of_two(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }
uint64_t align_down(uint64_t v, uint64_t a) { return v & ~(a - 1); }
uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }

std::string segment_type_name(uint32_t type) {
  switch (type) {
    case PT_NULL: return "PT_NULL";
    case PT_LOAD: return "PT_LOAD";
    case PT_DYNAMIC: return "PT_DYNAMIC";
    case PT_INTERP: return "PT_INTERP";
    case PT_NOTE: return "PT_NOTE";
    case PT_SHLIB: return "PT_SHLIB";
    case PT_PHDR: return "PT_PHDR";
    case PT_TLS: return "PT_TLS";
    case PT_GNU_EH_FRAME: return "PT_GNU_EH_FRAME";
    case PT_GNU_STACK: return "PT_GNU_STACK";
    case PT_GNU_RELRO: return "PT_GNU_RELRO";
    case PT_GNU_PROPERTY: return "PT_GNU_PROPERTY";
    default: return hex(type);
  }
}

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

std::string sha256_hex(const std::vector<uint8_t>& bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), digest, &length, EVP_sha256(), nullptr) != 1 || length != 32) {
    throw Error(ErrorCode::kInternal, "libcrypto could not compute a SHA-256 (EVP_Digest failed); reinstall libssl3");
  }
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < length; ++i) {
    out += kDigits[digest[i] >> 4];
    out += kDigits[digest[i] & 15];
  }
  return out;
}

struct Segment {
  uint64_t vaddr = 0, memsz = 0, offset = 0, filesz = 0, align = 0;
  uint32_t flags = 0;
  bool executable() const { return flags & PF_X; }
  bool writable() const { return flags & PF_W; }
};

/// What a relocation leaves at its place once the loader has run.
struct Relocation {
  uint32_t type = 0;
  bool known = false;      // value below is the link-time address stored there
  uint64_t value = 0;
  std::string external;    // or: the symbol it takes from elsewhere ("" for TLS data)
};

/// The patch image as the dynamic loader sees it: the file's bytes, its loadable segments
/// at link-time addresses, the dynamic symbols and what every relocation stores.
class PatchImage {
 public:
  PatchImage(const std::vector<uint8_t>& bytes, const std::string& label) : bytes_(bytes), label_(label) {
    check_elf_header();
    check_section_headers();
    read_program_headers();
    read_dynamic();
    read_symbols();
    read_versions();
    read_relocations();
    check_init_fini();
    check_section_agreement();
    check_with_libelf();
  }

  // ---- Queries for the descriptor reader: link-time addresses, after relocation. -------

  /// Bytes at a link-time address that no relocation touches (zero past a segment's file
  /// bytes). A refusal names `what`.
  void read_data(uint64_t vaddr, void* out, uint64_t size, const std::string& what) const {
    if (!raw_read(vaddr, out, size)) malformed(label_, what + " lies outside the patch's loadable segments");
    if (relocation_overlapping(vaddr, size)) {
      malformed(label_, what + " at " + hex(vaddr) + " is overwritten by a dynamic relocation");
    }
  }

  /// An array of `count` T at `vaddr`, relocations allowed only at the pointer fields.
  template <typename T>
  std::vector<T> read_array(uint64_t vaddr, uint32_t count, const char* what,
                            std::initializer_list<size_t> pointer_fields) const {
    if (count > kMaxEntries) malformed(label_, std::string(what) + " count " + std::to_string(count) + " is absurd");
    if (count > 0 && vaddr == 0) {
      malformed(label_, std::string(what) + " has " + std::to_string(count) + " entries but no array");
    }
    std::vector<T> out(count);
    if (count > 0 && !raw_read(vaddr, out.data(), sizeof(T) * count)) {
      malformed(label_, std::string(what) + " array lies outside the patch's loadable segments");
    }
    uint64_t end = vaddr + sizeof(T) * count;
    for (auto it = relocations_.lower_bound(vaddr >= 7 ? vaddr - 7 : 0); it != relocations_.end() && it->first < end; ++it) {
      if (it->first + 8 <= vaddr) continue;
      uint64_t within = (it->first - vaddr) % sizeof(T);
      if (it->first < vaddr ||
          std::find(pointer_fields.begin(), pointer_fields.end(), within) == pointer_fields.end()) {
        malformed(label_, std::string(what) + " array: a dynamic relocation at " + hex(it->first) +
                              " overwrites a field that is not a pointer");
      }
    }
    return out;
  }

  /// A pointer field: the link-time address its relocation stores, or 0 for a null pointer.
  uint64_t pointer_at(uint64_t vaddr) const {
    auto it = relocations_.find(vaddr);
    if (it == relocations_.end()) {
      if (relocation_overlapping(vaddr, 8)) {
        malformed(label_, "a pointer at " + hex(vaddr) + " is overwritten in part by a dynamic relocation");
      }
      uint64_t raw = 0;
      if (!raw_read(vaddr, &raw, sizeof raw)) malformed(label_, "a pointer at " + hex(vaddr) + " lies outside the file");
      if (raw != 0) {
        malformed(label_, "a pointer at " + hex(vaddr) + " holds " + hex(raw) +
                              " but has no relocation, so it would not point into the loaded patch");
      }
      return 0;
    }
    if (!it->second.known) {
      if (it->second.external.empty()) malformed(label_, "a descriptor field at " + hex(vaddr) + " holds a TLS relocation");
      malformed(label_, "a descriptor field at " + hex(vaddr) + " points to '" + it->second.external +
                            "', which the patch does not define");
    }
    return it->second.value;
  }

  std::string string_at(uint64_t vaddr, const std::string& what) const {
    if (vaddr == 0) return "";
    std::string s;
    char c;
    while (s.size() < kMaxString) {
      if (!raw_read(vaddr + s.size(), &c, 1)) malformed(label_, what + " points outside the patch");
      if (relocation_overlapping(vaddr + s.size(), 1)) {
        malformed(label_, what + " at " + hex(vaddr) + " is overwritten by a dynamic relocation");
      }
      if (c == 0) return s;
      s.push_back(c);
    }
    malformed(label_, what + " is not NUL-terminated within 4096 bytes");
  }

  /// The exported definition of `name` (global or weak, not undefined), 0 if none.
  const Elf64_Sym* exported(std::string_view name) const {
    for (size_t i = 1; i < symbols_.size(); ++i) {
      const Elf64_Sym& sym = symbols_[i];
      int bind = ELF64_ST_BIND(sym.st_info);
      if (sym.st_shndx != SHN_UNDEF && (bind == STB_GLOBAL || bind == STB_WEAK) && names_[i] == name) return &sym;
    }
    return nullptr;
  }

  /// Inside the file bytes of an executable segment.
  bool is_executable(uint64_t vaddr) const {
    const Segment* seg = file_segment_of(vaddr, 1);
    return seg && seg->executable();
  }
  bool is_writable(uint64_t vaddr, uint64_t size) const {
    const Segment* seg = segment_of(vaddr, size);
    return seg && seg->writable();
  }
  uint64_t text_start() const { return text_start_; }
  uint64_t text_end() const { return text_end_; }
  /// Size of the defined dynamic symbol at `vaddr`, 0 if none.
  uint64_t symbol_size(uint64_t vaddr) const {
    auto it = sizes_.find(vaddr);
    return it == sizes_.end() ? 0 : it->second;
  }
  const std::string& label() const { return label_; }

 private:
  [[noreturn]] void fail(const std::string& why) const { damaged(label_, why); }

  // ---- The file. ---------------------------------------------------------------------

  template <typename T>
  T file_at(uint64_t offset, const std::string& what) const {
    if (!fits(offset, sizeof(T), bytes_.size())) {
      fail(what + " (at file offset " + hex(offset) + ") lies beyond the end of the file (" +
           std::to_string(bytes_.size()) + " bytes; truncated?)");
    }
    T value;
    std::memcpy(&value, bytes_.data() + offset, sizeof(T));
    return value;
  }

  void check_elf_header() {
    const size_t size = bytes_.size();
    if (size < SELFMAG || std::memcmp(bytes_.data(), ELFMAG, SELFMAG) != 0) fail("it is not an ELF file (no ELF magic number)");
    if (size < sizeof(Elf64_Ehdr)) {
      fail("it is truncated: " + std::to_string(size) + " bytes, shorter than an ELF header");
    }
    std::memcpy(&ehdr_, bytes_.data(), sizeof ehdr_);
    const unsigned char* id = ehdr_.e_ident;
    if (id[EI_CLASS] != ELFCLASS64) fail("it is not a 64-bit ELF file (EI_CLASS " + std::to_string(id[EI_CLASS]) + ")");
    if (id[EI_DATA] != ELFDATA2LSB) fail("it is not a little-endian ELF file (EI_DATA " + std::to_string(id[EI_DATA]) + ")");
    if (id[EI_VERSION] != EV_CURRENT) fail("its ELF identification version is " + std::to_string(id[EI_VERSION]) + ", not 1");
    if (id[EI_OSABI] != ELFOSABI_SYSV && id[EI_OSABI] != ELFOSABI_GNU) {
      fail("its OS ABI is " + std::to_string(id[EI_OSABI]) + ", neither System V nor GNU");
    }
    if (id[EI_ABIVERSION] != 0) fail("its ABI version is " + std::to_string(id[EI_ABIVERSION]) + ", not 0");
    for (int i = EI_PAD; i < EI_NIDENT; ++i) {
      if (id[i] != 0) fail("the padding of its ELF identification is not zero (byte " + std::to_string(i) + ")");
    }
    if (ehdr_.e_type != ET_DYN) {
      fail("it is not a shared object (ELF type " + std::to_string(ehdr_.e_type) + "; build it with -shared -fPIC)");
    }
    if (ehdr_.e_machine != EM_X86_64) fail("it is not an x86-64 object (machine " + std::to_string(ehdr_.e_machine) + ")");
    if (ehdr_.e_version != EV_CURRENT) fail("its ELF version is " + std::to_string(ehdr_.e_version) + ", not 1");
    if (ehdr_.e_flags != 0) fail("its ELF header flags are " + hex(ehdr_.e_flags) + "; x86-64 defines none");
    if (ehdr_.e_ehsize != sizeof(Elf64_Ehdr)) fail("its ELF header size is " + std::to_string(ehdr_.e_ehsize) + ", not 64");
    if (ehdr_.e_phentsize != sizeof(Elf64_Phdr)) {
      fail("its program header entry size is " + std::to_string(ehdr_.e_phentsize) + ", not 56");
    }
    if (ehdr_.e_phnum == 0) fail("it has no program headers");
    if (ehdr_.e_phnum > kMaxProgramHeaders) {
      fail("it has " + std::to_string(ehdr_.e_phnum) + " program headers; more than " +
           std::to_string(kMaxProgramHeaders) + " is not a shared object a linker makes");
    }
    if (ehdr_.e_phoff % 8 != 0 || !fits(ehdr_.e_phoff, uint64_t{ehdr_.e_phnum} * sizeof(Elf64_Phdr), size)) {
      fail("its program header table (offset " + hex(ehdr_.e_phoff) + ", " + std::to_string(ehdr_.e_phnum) +
           " entries) lies outside the file or is misaligned (truncated?)");
    }
  }

  /// The section header table: the engine's symbol reader (libelf) uses it for a patch once
  /// it is loaded, so it must be sound too, though the loader never reads it.
  void check_section_headers() {
    const size_t size = bytes_.size();
    if (ehdr_.e_shoff == 0) {
      if (ehdr_.e_shnum != 0 || ehdr_.e_shstrndx != SHN_UNDEF) fail("it counts section headers but has no section header table");
      return;
    }
    if (ehdr_.e_shentsize != sizeof(Elf64_Shdr)) {
      fail("its section header entry size is " + std::to_string(ehdr_.e_shentsize) + ", not 64");
    }
    if (ehdr_.e_shnum == 0 || ehdr_.e_shnum >= SHN_LORESERVE) {
      fail("its section count " + std::to_string(ehdr_.e_shnum) + " is not understood (extended numbering)");
    }
    if (ehdr_.e_shoff % 8 != 0 || !fits(ehdr_.e_shoff, uint64_t{ehdr_.e_shnum} * sizeof(Elf64_Shdr), size)) {
      fail("its section header table (offset " + hex(ehdr_.e_shoff) + ", " + std::to_string(ehdr_.e_shnum) +
           " entries) lies outside the file or is misaligned (truncated?)");
    }
    if (ehdr_.e_shstrndx >= ehdr_.e_shnum) fail("its section name table index " + std::to_string(ehdr_.e_shstrndx) + " is out of range");
    sections_.resize(ehdr_.e_shnum);
    for (size_t i = 0; i < sections_.size(); ++i) {
      std::memcpy(&sections_[i], bytes_.data() + ehdr_.e_shoff + i * sizeof(Elf64_Shdr), sizeof(Elf64_Shdr));
    }
    static const Elf64_Shdr kZero{};
    if (std::memcmp(&sections_[0], &kZero, sizeof kZero) != 0) fail("its section header 0 is not all zero");
    uint64_t names_size = 0;
    if (ehdr_.e_shstrndx != SHN_UNDEF) {
      const Elf64_Shdr& names = sections_[ehdr_.e_shstrndx];
      if (names.sh_type != SHT_STRTAB) fail("its section name table is not a string table");
      names_size = names.sh_size;
    }
    for (size_t i = 1; i < sections_.size(); ++i) {
      const Elf64_Shdr& s = sections_[i];
      const std::string where = "section header " + std::to_string(i);
      if (s.sh_type != SHT_NOBITS && s.sh_type != SHT_NULL && !fits(s.sh_offset, s.sh_size, size)) {
        fail(where + " (offset " + hex(s.sh_offset) + ", " + std::to_string(s.sh_size) +
             " bytes) lies beyond the end of the file (truncated?)");
      }
      if (s.sh_name != 0 && s.sh_name >= names_size) fail(where + " has a name outside the section name table");
      if (s.sh_link >= sections_.size()) fail(where + " links to section " + std::to_string(s.sh_link) + ", which does not exist");
      if (s.sh_addralign > 1 && !power_of_two(s.sh_addralign)) fail(where + " has an alignment that is not a power of two");
      if (s.sh_flags & SHF_COMPRESSED) fail(where + " is compressed, which Polus does not read");
      switch (s.sh_type) {
        case SHT_SYMTAB:
        case SHT_DYNSYM:
          if (s.sh_entsize != sizeof(Elf64_Sym) || s.sh_size % sizeof(Elf64_Sym) != 0) {
            fail(where + " is a symbol table whose size is not a whole number of 24-byte entries");
          }
          if (sections_[s.sh_link].sh_type != SHT_STRTAB) fail(where + " is a symbol table whose string table is not one");
          break;
        case SHT_RELA:
          if (s.sh_entsize != sizeof(Elf64_Rela) || s.sh_size % sizeof(Elf64_Rela) != 0) {
            fail(where + " is a relocation table whose size is not a whole number of 24-byte entries");
          }
          break;
        case SHT_DYNAMIC:
          if (s.sh_entsize != sizeof(Elf64_Dyn) || s.sh_size % sizeof(Elf64_Dyn) != 0) fail(where + " is a malformed dynamic section");
          break;
        case SHT_GNU_versym:
          if (s.sh_entsize != sizeof(Elf64_Half) || s.sh_size % sizeof(Elf64_Half) != 0) fail(where + " is a malformed version table");
          break;
        case SHT_STRTAB:
          if (s.sh_size == 0 || bytes_[s.sh_offset] != 0 || bytes_[s.sh_offset + s.sh_size - 1] != 0) {
            fail(where + " is a string table that does not start and end with NUL");
          }
          break;
        default:
          break;
      }
    }
  }

  // ---- Program headers. ----------------------------------------------------------------

  void read_program_headers() {
    std::vector<Elf64_Phdr> phdrs(ehdr_.e_phnum);
    std::memcpy(phdrs.data(), bytes_.data() + ehdr_.e_phoff, phdrs.size() * sizeof(Elf64_Phdr));
    // PT_LOAD first: every other segment is checked against them.
    for (size_t i = 0; i < phdrs.size(); ++i) {
      const Elf64_Phdr& p = phdrs[i];
      if (p.p_type != PT_LOAD) continue;
      const std::string where = "program header " + std::to_string(i) + " (PT_LOAD)";
      if ((p.p_flags & ~uint32_t{PF_R | PF_W | PF_X}) != 0) fail(where + " has unknown flags " + hex(p.p_flags));
      if (!(p.p_flags & PF_R)) fail(where + " is not readable");
      if ((p.p_flags & PF_W) && (p.p_flags & PF_X)) fail(where + " is both writable and executable");
      if (!power_of_two(p.p_align) || p.p_align < kPageSize || p.p_align > kMaxSegmentAlign) {
        fail(where + " has alignment " + hex(p.p_align) + "; the loader needs a power of two from 4 KiB to 2 MiB");
      }
      if ((p.p_vaddr - p.p_offset) % p.p_align != 0) {
        fail(where + " has address " + hex(p.p_vaddr) + " and file offset " + hex(p.p_offset) +
             " that differ modulo its alignment " + hex(p.p_align) + ", so the loader cannot map it");
      }
      if (p.p_memsz == 0) fail(where + " is empty");
      if (p.p_filesz > p.p_memsz) fail(where + " has more bytes in the file (" + hex(p.p_filesz) + ") than in memory (" + hex(p.p_memsz) + ")");
      if (!fits(p.p_offset, p.p_filesz, bytes_.size())) {
        fail(where + " (file offset " + hex(p.p_offset) + ", " + hex(p.p_filesz) + " bytes) reaches past the end of the file (" +
             std::to_string(bytes_.size()) + " bytes; truncated?)");
      }
      if (p.p_vaddr > UINT64_MAX - p.p_memsz - kMaxSegmentAlign) fail(where + " wraps around the address space");
      if (!segments_.empty()) {
        const Segment& prev = segments_.back();
        if (p.p_vaddr <= prev.vaddr) fail(where + " is not sorted by address after the previous PT_LOAD");
        if (align_down(p.p_vaddr, kPageSize) < align_up(prev.vaddr + prev.memsz, kPageSize)) {
          fail(where + " shares memory pages with the previous PT_LOAD");
        }
      }
      segments_.push_back({p.p_vaddr, p.p_memsz, p.p_offset, p.p_filesz, p.p_align, p.p_flags});
    }
    if (segments_.empty()) fail("it has no loadable segment (PT_LOAD)");
    uint64_t span = segments_.back().vaddr + segments_.back().memsz - align_down(segments_.front().vaddr, kPageSize);
    if (span > kMaxImageSpan) fail("its segments span " + std::to_string(span >> 20) + " MiB of memory; a patch needs far less");
    text_start_ = UINT64_MAX;
    for (const Segment& seg : segments_) {
      if (!seg.executable()) continue;
      text_start_ = std::min(text_start_, seg.vaddr);
      text_end_ = std::max(text_end_, seg.vaddr + seg.memsz);
    }
    if (text_start_ == UINT64_MAX) fail("it has no executable segment, so no code");
    image_start_ = segments_.front().vaddr;
    image_end_ = segments_.back().vaddr + segments_.back().memsz;

    int dynamic = 0, stack = 0, relro = 0, tls = 0, phdr = 0, property = 0, eh_frame = 0;
    for (size_t i = 0; i < phdrs.size(); ++i) {
      const Elf64_Phdr& p = phdrs[i];
      const std::string where = "program header " + std::to_string(i) + " (" + segment_type_name(p.p_type) + ")";
      if (p.p_type != PT_LOAD && (p.p_flags & ~uint32_t{PF_R | PF_W | PF_X}) != 0) fail(where + " has unknown flags " + hex(p.p_flags));
      switch (p.p_type) {
        case PT_LOAD:
          break;
        case PT_DYNAMIC: {
          if (++dynamic > 1) fail("it has more than one PT_DYNAMIC");
          if (p.p_filesz == 0 || p.p_filesz != p.p_memsz || p.p_filesz % sizeof(Elf64_Dyn) != 0) {
            fail(where + " has size " + hex(p.p_filesz) + " in the file and " + hex(p.p_memsz) + " in memory");
          }
          const Segment* seg = mapped_consistently(p, where);
          if ((p.p_flags & PF_W) && !seg->writable()) {
            fail(where + " is marked writable but lies in a read-only segment (the loader would write into it)");
          }
          dynamic_ = p.p_vaddr;
          dynamic_size_ = p.p_filesz;
          add_table(dynamic_, dynamic_size_);
          break;
        }
        case PT_GNU_STACK:
          if (++stack > 1) fail("it has more than one PT_GNU_STACK");
          if (p.p_flags & PF_X) fail("it asks for an executable stack (PT_GNU_STACK with PF_X); rebuild it without -z execstack");
          break;
        case PT_GNU_RELRO: {
          if (++relro > 1) fail("it has more than one PT_GNU_RELRO");
          // The loader makes [start, end) read-only, both rounded down to pages. GNU ld ends
          // the region on a page boundary inside its PT_LOAD, lld pads its memory size to
          // the page end; either way no page past the region's file bytes may be protected,
          // or the patch's own .data would become read-only.
          const Segment* seg = segment_of(p.p_vaddr, 1);
          if (p.p_memsz == 0 || !seg || !seg->writable()) fail(where + " is not inside a writable PT_LOAD");
          if (p.p_offset != seg->offset + (p.p_vaddr - seg->vaddr)) fail(where + " disagrees with its PT_LOAD about its file offset");
          if (p.p_filesz > p.p_memsz || p.p_memsz > kMaxImageSpan) fail(where + " has sizes " + hex(p.p_filesz) + "/" + hex(p.p_memsz));
          uint64_t end = p.p_vaddr + p.p_memsz;
          if (align_down(end, kPageSize) > align_up(p.p_vaddr + p.p_filesz, kPageSize) ||
              align_down(end, kPageSize) > align_up(seg->vaddr + seg->memsz, kPageSize)) {
            fail(where + " (" + hex(p.p_vaddr) + " to " + hex(end) + ") would make pages beyond it read-only");
          }
          break;
        }
        case PT_TLS:
          if (++tls > 1) fail("it has more than one PT_TLS");
          if (p.p_memsz > kMaxTlsBytes || p.p_filesz > p.p_memsz) fail(where + " has sizes " + hex(p.p_filesz) + "/" + hex(p.p_memsz));
          if (p.p_align > 1 && (!power_of_two(p.p_align) || p.p_align > kPageSize)) fail(where + " has alignment " + hex(p.p_align));
          if (p.p_filesz > 0) mapped_consistently(p, where);
          has_tls_ = p.p_memsz > 0;
          tls_size_ = p.p_memsz;
          break;
        case PT_PHDR:
          if (++phdr > 1) fail("it has more than one PT_PHDR");
          if (p.p_offset != ehdr_.e_phoff || p.p_filesz != p.p_memsz ||
              p.p_filesz != uint64_t{ehdr_.e_phnum} * sizeof(Elf64_Phdr)) {
            fail(where + " does not describe the program header table");
          }
          mapped_consistently(p, where);
          break;
        case PT_NOTE:
          if (!fits(p.p_offset, p.p_filesz, bytes_.size())) fail(where + " reaches past the end of the file (truncated?)");
          check_notes(p.p_offset, p.p_filesz, p.p_align == 8 ? 8 : 4, where);
          break;
        case PT_GNU_PROPERTY:
          if (++property > 1) fail("it has more than one PT_GNU_PROPERTY");
          if (p.p_align != 8) fail(where + " is not 8-byte aligned");
          mapped_consistently(p, where);
          check_notes(p.p_offset, p.p_filesz, 8, where);
          break;
        case PT_GNU_EH_FRAME: {
          if (++eh_frame > 1) fail("it has more than one PT_GNU_EH_FRAME");
          if (p.p_filesz < 4) fail(where + " is too small for an .eh_frame_hdr");
          mapped_consistently(p, where);
          if (bytes_[p.p_offset] != 1) fail(where + " has .eh_frame_hdr version " + std::to_string(bytes_[p.p_offset]) + ", not 1");
          break;
        }
        case PT_INTERP:
          fail("it has a PT_INTERP segment: it is an executable, not a shared object (build it with -shared)");
        default:
          fail(where + " has a segment type this Polus does not understand");
      }
    }
    if (dynamic == 0) fail("it has no dynamic section (PT_DYNAMIC); build it with -shared -fPIC");
    if (stack == 0) fail("it has no PT_GNU_STACK, so the loader would make the target's stacks executable");
  }

  /// A segment other than PT_LOAD whose bytes the loader reads from memory: inside one
  /// PT_LOAD's file bytes, at the file offset that PT_LOAD maps there.
  const Segment* mapped_consistently(const Elf64_Phdr& p, const std::string& where) const {
    const Segment* seg = file_segment_of(p.p_vaddr, p.p_filesz);
    if (!seg) fail(where + " (" + hex(p.p_vaddr) + ", " + hex(p.p_filesz) + " bytes) is not inside the file bytes of a PT_LOAD");
    if (p.p_offset != seg->offset + (p.p_vaddr - seg->vaddr)) {
      fail(where + " says file offset " + hex(p.p_offset) + " but its PT_LOAD maps file offset " +
           hex(seg->offset + (p.p_vaddr - seg->vaddr)) + " there");
    }
    return seg;
  }

  void check_notes(uint64_t offset, uint64_t size, uint64_t align, const std::string& where) const {
    uint64_t at = 0;
    while (at < size) {
      if (size - at < 12) fail(where + " ends inside a note header");
      uint32_t namesz, descsz;
      std::memcpy(&namesz, bytes_.data() + offset + at, 4);
      std::memcpy(&descsz, bytes_.data() + offset + at + 4, 4);
      uint64_t next = at + 12 + align_up(namesz, align);
      next = align_up(next, align) + align_up(descsz, align);
      if (next > size) fail(where + " has a note that reaches past its end");
      at = next;
    }
  }

  // ---- Link-time memory. ---------------------------------------------------------------

  /// The PT_LOAD whose memory holds [vaddr, vaddr + size).
  const Segment* segment_of(uint64_t vaddr, uint64_t size) const {
    for (const Segment& seg : segments_) {
      if (inside(vaddr, size, seg.vaddr, seg.memsz)) return &seg;
    }
    return nullptr;
  }
  /// The PT_LOAD whose file bytes hold [vaddr, vaddr + size).
  const Segment* file_segment_of(uint64_t vaddr, uint64_t size) const {
    for (const Segment& seg : segments_) {
      if (inside(vaddr, size, seg.vaddr, seg.filesz)) return &seg;
    }
    return nullptr;
  }

  /// Memory as mapped, before relocation: file bytes, zero past a segment's file size.
  bool raw_read(uint64_t vaddr, void* out, uint64_t size) const {
    const Segment* seg = segment_of(vaddr, size);
    if (!seg) return false;
    std::memset(out, 0, size);
    uint64_t in_file_end = seg->vaddr + seg->filesz;
    if (vaddr < in_file_end) {
      uint64_t take = std::min(size, in_file_end - vaddr);
      std::memcpy(out, bytes_.data() + seg->offset + (vaddr - seg->vaddr), take);
    }
    return true;
  }

  /// A loader table entry: it must lie in a segment's file bytes (the loader reads it).
  template <typename T>
  T table_at(uint64_t vaddr, const std::string& what) const {
    const Segment* seg = file_segment_of(vaddr, sizeof(T));
    if (!seg) fail(what + " at " + hex(vaddr) + " is not inside the file bytes of a loadable segment");
    T value;
    std::memcpy(&value, bytes_.data() + seg->offset + (vaddr - seg->vaddr), sizeof(T));
    return value;
  }
  void table_range(uint64_t vaddr, uint64_t size, const std::string& what) {
    if (!file_segment_of(vaddr, size)) {
      fail(what + " (" + hex(vaddr) + ", " + std::to_string(size) + " bytes) is not inside the file bytes of a loadable segment");
    }
    add_table(vaddr, size);
  }
  void add_table(uint64_t vaddr, uint64_t size) {
    if (size > 0) tables_.emplace_back(vaddr, size);
  }

  bool relocation_overlapping(uint64_t vaddr, uint64_t size) const {
    auto it = relocations_.lower_bound(vaddr >= 7 ? vaddr - 7 : 0);
    return it != relocations_.end() && it->first < vaddr + size && it->first + 8 > vaddr;
  }

  // ---- The dynamic section. ------------------------------------------------------------

  uint64_t dyn(int64_t tag) const {
    auto it = dyn_.find(tag);
    return it == dyn_.end() ? 0 : it->second;
  }
  bool has(int64_t tag) const { return dyn_.count(tag) != 0; }

  void read_dynamic() {
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

  uint64_t file_offset(uint64_t vaddr) const {
    const Segment* seg = file_segment_of(vaddr, 1);
    return seg->offset + (vaddr - seg->vaddr);
  }

  std::string dyn_string(uint64_t offset, const std::string& what) const {
    if (offset >= strsz_) fail(what + " has string offset " + hex(offset) + " outside the string table (" + std::to_string(strsz_) + " bytes)");
    size_t end = strings_.find('\0', offset);  // found: the table ends with NUL
    if (end - offset > kMaxString) fail(what + " is longer than " + std::to_string(kMaxString) + " bytes");
    return std::string(strings_.substr(offset, end - offset));
  }

  // ---- Symbols and their hash tables. ----------------------------------------------------

  void read_symbols() {
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
  uint64_t read_gnu_hash() {
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

  uint64_t read_sysv_hash_header() {
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
  void check_hash_lookups() const {
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

  // ---- Symbol versions. ------------------------------------------------------------------

  void read_versions() {
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

  // ---- Relocations. -----------------------------------------------------------------------

  void read_relocations() {
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

  void add_relocation(const Elf64_Rela& r, bool plt, const std::string& where) {
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
  void check_init_fini() {
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

  /// Section headers that describe what the loader uses must agree with the dynamic section.
  void check_section_agreement() const {
    for (size_t i = 1; i < sections_.size(); ++i) {
      const Elf64_Shdr& s = sections_[i];
      const std::string where = "section header " + std::to_string(i);
      auto same = [&](uint64_t vaddr, uint64_t size, const char* what) {
        if (s.sh_addr != vaddr || s.sh_size != size || !file_segment_of(vaddr, size) || (size > 0 && s.sh_offset != file_offset(vaddr))) {
          fail(where + " (" + what + ") disagrees with the dynamic section");
        }
      };
      switch (s.sh_type) {
        case SHT_DYNSYM:
          same(symtab_, symbols_.size() * sizeof(Elf64_Sym), ".dynsym");
          same_strtab(sections_[s.sh_link], where);
          break;
        case SHT_DYNAMIC:
          same(dynamic_, dynamic_size_, ".dynamic");
          break;
        case SHT_GNU_HASH:
          if (s.sh_addr != dyn(DT_GNU_HASH)) fail(where + " (.gnu.hash) disagrees with the dynamic section");
          break;
        case SHT_GNU_versym:
          same(dyn(DT_VERSYM), symbols_.size() * sizeof(Elf64_Half), ".gnu.version");
          break;
        default:
          break;
      }
    }
  }
  void same_strtab(const Elf64_Shdr& s, const std::string& where) const {
    if (s.sh_addr != strtab_ || s.sh_size != strsz_ || s.sh_offset != file_offset(strtab_)) {
      fail(where + "'s string table (.dynstr) disagrees with the dynamic section");
    }
  }

  /// The engine reads a loaded patch's headers and symbols with libelf (binary/elf_reader):
  /// make sure that works on these bytes too.
  void check_with_libelf() const {
    try {
      elf::ElfFile file(std::vector<char>(bytes_.begin(), bytes_.end()), label_);
      elf::ElfHeaders headers = elf::read_headers(file.get());
      if (headers.loads.size() != segments_.size()) fail("libelf sees other loadable segments than the loader would");
      elf::read_symbols(file.get());
    } catch (const Error& e) {
      if (e.code() == ErrorCode::kPatchMalformed) throw;
      fail(std::string("libelf cannot read it (") + e.what() + ")");
    }
  }

  const std::vector<uint8_t>& bytes_;
  std::string label_;
  Elf64_Ehdr ehdr_{};
  std::vector<Elf64_Shdr> sections_;
  std::vector<Segment> segments_;
  uint64_t image_start_ = 0, image_end_ = 0;
  uint64_t text_start_ = 0, text_end_ = 0;
  uint64_t dynamic_ = 0, dynamic_size_ = 0;
  bool has_tls_ = false;
  uint64_t tls_size_ = 0;
  std::map<int64_t, uint64_t> dyn_;
  std::vector<uint64_t> needed_offsets_;
  std::set<std::string> needed_;
  uint64_t strtab_ = 0, strsz_ = 0;
  std::string_view strings_;
  uint64_t symtab_ = 0;
  std::vector<Elf64_Sym> symbols_;
  std::vector<std::string> names_;
  uint32_t gnu_nbuckets_ = 0, gnu_symoffset_ = 0, gnu_bloom_size_ = 0, gnu_shift_ = 0;
  uint64_t gnu_bloom_ = 0, gnu_buckets_ = 0, gnu_chains_ = 0;
  uint32_t sysv_nbuckets_ = 0;
  uint64_t sysv_buckets_ = 0, sysv_chains_ = 0;
  std::vector<std::pair<uint64_t, uint64_t>> tables_;  // what the loader reads: (vaddr, size)
  std::map<uint64_t, Relocation> relocations_;           // by the address they write (8 bytes)
  std::map<uint64_t, uint64_t> sizes_;
};

PatchDescription describe(const PatchImage& image, const std::string& path) {
  PatchDescription out;
  out.path = path;
  out.text_start = image.text_start();
  out.text_end = image.text_end();
  const Elf64_Sym* descriptor = image.exported(POLUS_PATCH_DESCRIPTOR_SYMBOL);
  if (!descriptor || descriptor->st_value == 0) {
    malformed(path, "it does not export '" POLUS_PATCH_DESCRIPTOR_SYMBOL "' (define it with POLUS_PATCH(...))");
  }
  if (ELF64_ST_TYPE(descriptor->st_info) != STT_OBJECT || descriptor->st_size != sizeof(polus_patch)) {
    malformed(path, "its '" POLUS_PATCH_DESCRIPTOR_SYMBOL "' is not a struct polus_patch (" +
                        std::to_string(descriptor->st_size) + " bytes, type " +
                        std::to_string(ELF64_ST_TYPE(descriptor->st_info)) + ")");
  }
  out.descriptor = descriptor->st_value;
  polus_patch raw{};
  {
    std::vector<polus_patch> one = image.read_array<polus_patch>(
        out.descriptor, 1, "the descriptor",
        {offsetof(polus_patch, name), offsetof(polus_patch, description), offsetof(polus_patch, functions),
         offsetof(polus_patch, data), offsetof(polus_patch, mappings), offsetof(polus_patch, callbacks),
         offsetof(polus_patch, imports), offsetof(polus_patch, build_ids)});
    raw = one[0];
  }
  if (raw.magic != POLUS_PATCH_MAGIC) malformed(path, "its descriptor has a wrong magic number");
  if (raw.format_version != POLUS_PATCH_FORMAT_VERSION) {
    malformed(path, "its format version is " + std::to_string(raw.format_version) + ", this Polus reads version " +
                        std::to_string(POLUS_PATCH_FORMAT_VERSION));
  }
  auto field = [&](size_t offset) { return out.descriptor + offset; };
  out.name = image.string_at(image.pointer_at(field(offsetof(polus_patch, name))), "the patch name");
  out.description = image.string_at(image.pointer_at(field(offsetof(polus_patch, description))), "the description");
  if (out.name.empty()) malformed(path, "it has no name");
  if (out.name.size() >= 64) malformed(path, "its name is longer than 63 bytes");

  uint64_t functions_at = image.pointer_at(field(offsetof(polus_patch, functions)));
  auto functions = image.read_array<polus_function>(
      functions_at, raw.function_count, "functions",
      {offsetof(polus_function, name), offsetof(polus_function, address), offsetof(polus_function, resolved)});
  for (uint32_t i = 0; i < functions.size(); ++i) {
    uint64_t entry = functions_at + i * sizeof(polus_function);
    const std::string where = "functions[" + std::to_string(i) + "]";
    PatchFunction f;
    f.side = functions[i].side;
    f.name = image.string_at(image.pointer_at(entry + offsetof(polus_function, name)), where + ".name");
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

  uint64_t data_at = image.pointer_at(field(offsetof(polus_patch, data)));
  auto data = image.read_array<polus_data>(
      data_at, raw.data_count, "data",
      {offsetof(polus_data, name), offsetof(polus_data, address), offsetof(polus_data, resolved),
       offsetof(polus_data, post_sync), offsetof(polus_data, pre_sync)});
  for (uint32_t i = 0; i < data.size(); ++i) {
    uint64_t entry = data_at + i * sizeof(polus_data);
    const std::string where = "data[" + std::to_string(i) + "]";
    PatchData d;
    d.side = data[i].side;
    d.size = data[i].size;
    d.flags = data[i].flags;
    d.name = image.string_at(image.pointer_at(entry + offsetof(polus_data, name)), where + ".name");
    d.address = image.pointer_at(entry + offsetof(polus_data, address));
    d.resolved_slot = image.pointer_at(entry + offsetof(polus_data, resolved));
    d.post_sync = image.pointer_at(entry + offsetof(polus_data, post_sync));
    d.pre_sync = image.pointer_at(entry + offsetof(polus_data, pre_sync));
    if (d.side != POLUS_OLD && d.side != POLUS_NEW) malformed(path, where + " is neither POLUS_OLD nor POLUS_NEW");
    if (d.side == POLUS_OLD && d.name.empty()) malformed(path, where + " (old) names no target global");
    if (d.side == POLUS_NEW && (d.address == 0 || d.size == 0)) malformed(path, where + " (new) has no address or size");
    if (d.side == POLUS_NEW && !image.is_writable(d.address, d.size)) {
      malformed(path, where + " (new) is not " + std::to_string(d.size) + " bytes of writable data in the patch");
    }
    if (d.resolved_slot && !image.is_writable(d.resolved_slot, 8)) malformed(path, where + ".resolved is not writable data");
    for (uint64_t fn : {d.post_sync, d.pre_sync}) {
      if (fn && !image.is_executable(fn)) malformed(path, where + " has a sync function outside the patch's code");
    }
    out.data.push_back(d);
  }

  out.mappings = image.read_array<polus_mapping>(image.pointer_at(field(offsetof(polus_patch, mappings))),
                                                 raw.mapping_count, "mappings", {});
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
  std::set<uint32_t> replaced;
  for (const auto& [from, to] : out.function_replacements()) {
    if (!replaced.insert(from).second) malformed(path, "old function '" + out.functions[from].name + "' is replaced twice");
    (void)to;
  }

  uint64_t callbacks_at = image.pointer_at(field(offsetof(polus_patch, callbacks)));
  out.callbacks = image.read_array<polus_callback>(callbacks_at, raw.callback_count, "callbacks",
                                                   {offsetof(polus_callback, fn)});
  for (size_t i = 0; i < out.callbacks.size(); ++i) {
    uint64_t fn = image.pointer_at(callbacks_at + i * sizeof(polus_callback) + offsetof(polus_callback, fn));
    if (out.callbacks[i].kind < POLUS_CB_PRE_UPDATE || out.callbacks[i].kind > POLUS_CB_POST_UPDATE) {
      malformed(path, "callbacks[" + std::to_string(i) + "] has unknown kind " + std::to_string(out.callbacks[i].kind));
    }
    if (!image.is_executable(fn)) malformed(path, "callbacks[" + std::to_string(i) + "] does not point to code in the patch");
    out.callbacks[i].fn = reinterpret_cast<polus_callback_fn>(fn);
  }

  uint64_t imports_at = image.pointer_at(field(offsetof(polus_patch, imports)));
  auto imports = image.read_array<polus_import>(imports_at, raw.import_count, "imports",
                                                {offsetof(polus_import, name), offsetof(polus_import, slot)});
  for (uint32_t i = 0; i < imports.size(); ++i) {
    uint64_t entry = imports_at + i * sizeof(polus_import);
    PatchImport imp;
    imp.name = image.string_at(image.pointer_at(entry + offsetof(polus_import, name)), "an import name");
    imp.slot = image.pointer_at(entry + offsetof(polus_import, slot));
    if (imp.name.empty()) malformed(path, "imports[" + std::to_string(i) + "] has no name");
    if (!image.is_writable(imp.slot, 8)) malformed(path, "imports[" + std::to_string(i) + "] ('" + imp.name + "') has no writable slot");
    out.imports.push_back(imp);
  }

  uint64_t ids_at = image.pointer_at(field(offsetof(polus_patch, build_ids)));
  auto ids = image.read_array<polus_build_id>(ids_at, raw.build_id_count, "build_ids",
                                              {offsetof(polus_build_id, object), offsetof(polus_build_id, hex)});
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

PatchDescription read_patch_bytes(std::vector<uint8_t> bytes, const std::string& label) {
  if (bytes.size() > kMaxPatchFileBytes) {
    malformed(label, "it is " + std::to_string(bytes.size() >> 20) + " MiB; a patch may be at most " +
                         std::to_string(kMaxPatchFileBytes >> 20) + " MiB");
  }
  PatchDescription out;
  {
    PatchImage image(bytes, label);
    out = describe(image, label);
  }
  out.content_sha256 = sha256_hex(bytes);
  out.bytes = std::make_shared<const std::vector<uint8_t>>(std::move(bytes));
  return out;
}

PatchDescription read_patch_file(const std::string& given_path) {
  char resolved[PATH_MAX];
  if (!::realpath(given_path.c_str(), resolved)) {
    malformed(given_path, std::string("cannot find it: ") + std::strerror(errno));
  }
  const std::string path = resolved;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) malformed(path, std::string("cannot open it: ") + std::strerror(errno));
  std::vector<uint8_t> bytes;
  try {
    struct stat st {};
    if (::fstat(fd, &st) != 0) malformed(path, std::string("cannot stat it: ") + std::strerror(errno));
    if (!S_ISREG(st.st_mode)) malformed(path, "it is not a regular file");
    if (static_cast<uint64_t>(st.st_size) > kMaxPatchFileBytes) {
      malformed(path, "it is " + std::to_string(st.st_size >> 20) + " MiB; a patch may be at most " +
                          std::to_string(kMaxPatchFileBytes >> 20) + " MiB");
    }
    // One read of the whole file (a loop only for short reads), one byte more than its
    // size to notice a file that grows while it is read.
    bytes.resize(static_cast<size_t>(st.st_size) + 1);
    size_t got = 0;
    while (got < bytes.size()) {
      ssize_t n = ::read(fd, bytes.data() + got, bytes.size() - got);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) malformed(path, std::string("cannot read it: ") + std::strerror(errno));
      if (n == 0) break;
      got += static_cast<size_t>(n);
    }
    if (got != static_cast<size_t>(st.st_size)) malformed(path, "it changed size while it was read; copy it in place first, then apply it");
    bytes.resize(got);
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  return read_patch_bytes(std::move(bytes), path);
}

}  // namespace polus
