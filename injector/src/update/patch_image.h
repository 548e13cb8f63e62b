// update/patch_image.h — the ELF image of a patch file, checked the way ld.so reads it (private).
//
// PatchImage validates a patch's bytes before anything is loaded: the ELF header, the program
// headers, the section headers, the dynamic section, the GNU/SysV hash tables, the symbol
// versions and the relocations, and keeps what the loader would leave in memory (link-time
// addresses, after relocation). describe() in patch_file.cc reads the patch descriptor
// through its queries. Every refusal throws Error(kPatchMalformed).
//
// The member definitions are split by what they check:
//   patch_image.cc          construction, queries, ELF header, program and section headers;
//   patch_image_dynamic.cc  dynamic section, symbols and hash tables, versions, relocations.
#pragma once

#include <elf.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/format.h"

namespace polus::patch_image {

constexpr uint32_t kMaxEntries = 100000;  // entries of one descriptor array, of DT_INIT_ARRAY
constexpr size_t kMaxString = 4096;       // bytes of one string the patch names

/// Throws Error(kPatchMalformed): the descriptor (or the file as a whole) is not what
/// patch-format/include/polus/patch.h describes.
[[noreturn]] void malformed(const std::string& label, const std::string& why);

/// An ELF-level fault: the loader would refuse the file, misread it or assert on it.
[[noreturn]] void damaged(const std::string& label, const std::string& why);

/// [offset, offset + length) lies inside [0, size), without overflow.
inline bool fits(uint64_t offset, uint64_t length, uint64_t size) { return offset <= size && length <= size - offset; }
/// [a, a + n) inside [base, base + limit), without overflow.
inline bool inside(uint64_t a, uint64_t n, uint64_t base, uint64_t limit) {
  return a >= base && fits(a - base, n, limit);
}
inline bool power_of_two(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }
inline uint64_t align_down(uint64_t v, uint64_t a) { return v & ~(a - 1); }
inline uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }

/// A PT_LOAD segment at its link-time address.
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
  /// Checks `bytes` (kept by reference: they must outlive the image) as ld.so would read
  /// them and throws Error(kPatchMalformed) naming `label` at the first fault.
  PatchImage(const std::vector<uint8_t>& bytes, const std::string& label);

  // ---- Queries for the descriptor reader: link-time addresses, after relocation. -------

  /// Bytes at a link-time address that no relocation touches (zero past a segment's file
  /// bytes). A refusal names `what`.
  void read_data(uint64_t vaddr, void* out, uint64_t size, const std::string& what) const;

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
  uint64_t pointer_at(uint64_t vaddr) const;

  /// The NUL-terminated string at `vaddr` ("" for 0), at most kMaxString bytes, untouched
  /// by relocations. A refusal names `what`.
  std::string string_at(uint64_t vaddr, const std::string& what) const;

  /// The exported definition of `name` (global or weak, not undefined), 0 if none.
  const Elf64_Sym* exported(std::string_view name) const;

  /// Inside the file bytes of an executable segment.
  bool is_executable(uint64_t vaddr) const;
  /// [vaddr, vaddr + size) inside the memory of one writable segment.
  bool is_writable(uint64_t vaddr, uint64_t size) const;
  /// The executable segments' extent: [text_start(), text_end()).
  uint64_t text_start() const { return text_start_; }
  uint64_t text_end() const { return text_end_; }
  /// Size of the defined dynamic symbol at `vaddr`, 0 if none.
  uint64_t symbol_size(uint64_t vaddr) const;
  /// The name refusals use for the file.
  const std::string& label() const { return label_; }

 private:
  [[noreturn]] void fail(const std::string& why) const { damaged(label_, why); }

  // ---- The file, headers and segments (patch_image.cc). -------------------------------

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

  void check_elf_header();
  void check_section_headers();
  void read_program_headers();
  const Segment* mapped_consistently(const Elf64_Phdr& p, const std::string& where) const;
  void check_notes(uint64_t offset, uint64_t size, uint64_t align, const std::string& where) const;
  void check_section_agreement() const;
  void same_strtab(const Elf64_Shdr& s, const std::string& where) const;
  void check_with_libelf() const;

  // ---- Link-time memory (patch_image.cc). ----------------------------------------------

  /// The PT_LOAD whose memory holds [vaddr, vaddr + size).
  const Segment* segment_of(uint64_t vaddr, uint64_t size) const;
  /// The PT_LOAD whose file bytes hold [vaddr, vaddr + size).
  const Segment* file_segment_of(uint64_t vaddr, uint64_t size) const;
  /// Memory as mapped, before relocation: file bytes, zero past a segment's file size.
  bool raw_read(uint64_t vaddr, void* out, uint64_t size) const;
  /// A loader table entry: it must lie in a segment's file bytes (the loader reads it).
  template <typename T>
  T table_at(uint64_t vaddr, const std::string& what) const {
    const Segment* seg = file_segment_of(vaddr, sizeof(T));
    if (!seg) fail(what + " at " + hex(vaddr) + " is not inside the file bytes of a loadable segment");
    T value;
    std::memcpy(&value, bytes_.data() + seg->offset + (vaddr - seg->vaddr), sizeof(T));
    return value;
  }
  /// A range the loader reads: inside a segment's file bytes, recorded with add_table.
  void table_range(uint64_t vaddr, uint64_t size, const std::string& what);
  /// Records [vaddr, vaddr + size) as read by the loader (no relocation may touch it).
  void add_table(uint64_t vaddr, uint64_t size);
  bool relocation_overlapping(uint64_t vaddr, uint64_t size) const;

  // ---- The dynamic section, symbols, versions, relocations (patch_image_dynamic.cc). --

  uint64_t dyn(int64_t tag) const {
    auto it = dyn_.find(tag);
    return it == dyn_.end() ? 0 : it->second;
  }
  bool has(int64_t tag) const { return dyn_.count(tag) != 0; }
  void read_dynamic();
  uint64_t file_offset(uint64_t vaddr) const;
  std::string dyn_string(uint64_t offset, const std::string& what) const;
  void read_symbols();
  uint64_t read_gnu_hash();
  uint64_t read_sysv_hash_header();
  void check_hash_lookups() const;
  void read_versions();
  void read_relocations();
  void add_relocation(const Elf64_Rela& r, bool plt, const std::string& where);
  void check_init_fini();

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

}  // namespace polus::patch_image
