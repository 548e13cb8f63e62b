// update/patch_image.cc — PatchImage: construction, the descriptor reader's queries, and the
// checks of the ELF header, the section headers and the program headers (the segments the
// loader maps). The dynamic section and what it points to: patch_image_dynamic.cc.
#include "update/patch_image.h"

#include <elf.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "binary/elf_reader.h"
#include "common/format.h"
#include "polus/error.h"

namespace polus::patch_image {

namespace {

constexpr uint64_t kPageSize = 4096;
constexpr uint64_t kMaxSegmentAlign = uint64_t{2} << 20;    // 2 MiB pages at most
constexpr uint64_t kMaxImageSpan = uint64_t{256} << 20;     // what the loader maps, bss included
constexpr uint64_t kMaxTlsBytes = uint64_t{1} << 20;
constexpr uint16_t kMaxProgramHeaders = 64;  // ld.so keeps them in a stack array

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

}  // namespace

void malformed(const std::string& label, const std::string& why) {
  throw Error(ErrorCode::kPatchMalformed, "patch " + label + " is malformed: " + why +
                                              ". Rebuild it against patch-format/include/polus/patch.h");
}

void damaged(const std::string& label, const std::string& why) {
  throw Error(ErrorCode::kPatchMalformed,
              "patch " + label + " is malformed: " + why +
                  "; the file is damaged (truncated or altered) or was not linked as a plain shared object: "
                  "rebuild it (gcc -shared -fPIC) and copy it again");
}

PatchImage::PatchImage(const std::vector<uint8_t>& bytes, const std::string& label) : bytes_(bytes), label_(label) {
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

// ---- Queries for the descriptor reader: link-time addresses, after relocation. ------------------

void PatchImage::read_data(uint64_t vaddr, void* out, uint64_t size, const std::string& what) const {
  if (!raw_read(vaddr, out, size)) malformed(label_, what + " lies outside the patch's loadable segments");
  if (relocation_overlapping(vaddr, size)) {
    malformed(label_, what + " at " + hex(vaddr) + " is overwritten by a dynamic relocation");
  }
}

uint64_t PatchImage::pointer_at(uint64_t vaddr) const {
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

std::string PatchImage::string_at(uint64_t vaddr, const std::string& what) const {
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

const Elf64_Sym* PatchImage::exported(std::string_view name) const {
  for (size_t i = 1; i < symbols_.size(); ++i) {
    const Elf64_Sym& sym = symbols_[i];
    int bind = ELF64_ST_BIND(sym.st_info);
    if (sym.st_shndx != SHN_UNDEF && (bind == STB_GLOBAL || bind == STB_WEAK) && names_[i] == name) return &sym;
  }
  return nullptr;
}

bool PatchImage::is_executable(uint64_t vaddr) const {
  const Segment* seg = file_segment_of(vaddr, 1);
  return seg && seg->executable();
}

bool PatchImage::is_writable(uint64_t vaddr, uint64_t size) const {
  const Segment* seg = segment_of(vaddr, size);
  return seg && seg->writable();
}

uint64_t PatchImage::symbol_size(uint64_t vaddr) const {
  auto it = sizes_.find(vaddr);
  return it == sizes_.end() ? 0 : it->second;
}

// ---- The file. ----------------------------------------------------------------------------------

void PatchImage::check_elf_header() {
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
void PatchImage::check_section_headers() {
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

// ---- Program headers. ---------------------------------------------------------------------------

void PatchImage::read_program_headers() {
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
const Segment* PatchImage::mapped_consistently(const Elf64_Phdr& p, const std::string& where) const {
  const Segment* seg = file_segment_of(p.p_vaddr, p.p_filesz);
  if (!seg) fail(where + " (" + hex(p.p_vaddr) + ", " + hex(p.p_filesz) + " bytes) is not inside the file bytes of a PT_LOAD");
  if (p.p_offset != seg->offset + (p.p_vaddr - seg->vaddr)) {
    fail(where + " says file offset " + hex(p.p_offset) + " but its PT_LOAD maps file offset " +
         hex(seg->offset + (p.p_vaddr - seg->vaddr)) + " there");
  }
  return seg;
}

void PatchImage::check_notes(uint64_t offset, uint64_t size, uint64_t align, const std::string& where) const {
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

// ---- Link-time memory. --------------------------------------------------------------------------

const Segment* PatchImage::segment_of(uint64_t vaddr, uint64_t size) const {
  for (const Segment& seg : segments_) {
    if (inside(vaddr, size, seg.vaddr, seg.memsz)) return &seg;
  }
  return nullptr;
}

const Segment* PatchImage::file_segment_of(uint64_t vaddr, uint64_t size) const {
  for (const Segment& seg : segments_) {
    if (inside(vaddr, size, seg.vaddr, seg.filesz)) return &seg;
  }
  return nullptr;
}

bool PatchImage::raw_read(uint64_t vaddr, void* out, uint64_t size) const {
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

void PatchImage::table_range(uint64_t vaddr, uint64_t size, const std::string& what) {
  if (!file_segment_of(vaddr, size)) {
    fail(what + " (" + hex(vaddr) + ", " + std::to_string(size) + " bytes) is not inside the file bytes of a loadable segment");
  }
  add_table(vaddr, size);
}

void PatchImage::add_table(uint64_t vaddr, uint64_t size) {
  if (size > 0) tables_.emplace_back(vaddr, size);
}

bool PatchImage::relocation_overlapping(uint64_t vaddr, uint64_t size) const {
  auto it = relocations_.lower_bound(vaddr >= 7 ? vaddr - 7 : 0);
  return it != relocations_.end() && it->first < vaddr + size && it->first + 8 > vaddr;
}

// ---- Section headers against the dynamic section, and libelf. -----------------------------------

/// Section headers that describe what the loader uses must agree with the dynamic section.
void PatchImage::check_section_agreement() const {
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

void PatchImage::same_strtab(const Elf64_Shdr& s, const std::string& where) const {
  if (s.sh_addr != strtab_ || s.sh_size != strsz_ || s.sh_offset != file_offset(strtab_)) {
    fail(where + "'s string table (.dynstr) disagrees with the dynamic section");
  }
}

/// The engine reads a loaded patch's headers and symbols with libelf (binary/elf_reader):
/// make sure that works on these bytes too.
void PatchImage::check_with_libelf() const {
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

}  // namespace polus::patch_image
