// update/patch_file.h — a patch .so read once into memory and validated, before the target is
// touched.
//
// The file is read whole (one open, one read) and every check runs on those bytes, which
// PatchDescription keeps with their SHA-256: what is loaded into the target later is exactly
// what was validated. The checks follow what the dynamic loader relies on — ELF header,
// program headers, dynamic section, hash tables, symbol versions, relocations, init/fini
// arrays — read the way ld.so reads them (through the segments, never through section
// headers), with bounds checks and no trust in any offset, so a damaged file is refused with
// kPatchMalformed instead of tripping an assertion of ld.so inside the target.
//
// The descriptor is static data, so it is read straight from the bytes: its pointer fields
// are resolved through the file's dynamic relocations (R_X86_64_RELATIVE and
// R_X86_64_64 against the patch's own symbols), giving link-time addresses inside the
// patch. Once the patch is loaded in the target, link-time address + load bias is where
// each thing lives.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "polus/patch.h"

namespace polus {

struct PatchFunction {
  std::string name;
  uint32_t side = 0;          // POLUS_OLD / POLUS_NEW
  uint64_t address = 0;       // NEW: link-time address in the patch
  uint64_t size = 0;          // NEW: its symbol's size (0 if the patch has no symbol for it)
  uint64_t resolved_slot = 0; // link-time address of the slot to fill, 0 if none
};

struct PatchData {
  std::string name;
  uint32_t side = 0;
  uint64_t address = 0;
  uint64_t resolved_slot = 0;
  uint64_t size = 0;
  uint64_t post_sync = 0;
  uint64_t pre_sync = 0;
  uint32_t flags = 0;
};

struct PatchImport {
  std::string name;
  uint64_t slot = 0;
};

struct PatchBuildId {
  std::string object;  // "" = main executable
  std::string hex;
};

struct PatchDescription {
  std::string path;         // absolute (read_patch_file), or the label given to read_patch_bytes
  std::shared_ptr<const std::vector<uint8_t>> bytes;  // the whole file, as validated
  std::string content_sha256;  // lowercase hex SHA-256 of *bytes
  std::string name;
  std::string description;
  uint64_t descriptor = 0;  // link-time address of polus_patch_descriptor
  uint64_t text_start = 0, text_end = 0;  // link-time executable range
  std::vector<PatchFunction> functions;
  std::vector<PatchData> data;
  std::vector<polus_mapping> mappings;
  std::vector<polus_callback> callbacks;  // fn holds a link-time address
  std::vector<PatchImport> imports;
  std::vector<PatchBuildId> build_ids;

  /// Pairs (old function index, new function index) from the POLUS_MAP_FUNCTION mappings.
  std::vector<std::pair<uint32_t, uint32_t>> function_replacements() const;
  /// Pairs (from, to) of all mappings of one kind.
  std::vector<std::pair<uint32_t, uint32_t>> mappings_of(uint32_t kind) const;
};

/// The largest patch file read_patch_file accepts.
inline constexpr size_t kMaxPatchFileBytes = size_t{64} << 20;

/// Reads the file at `path` into memory (one open, one read) and validates it with
/// read_patch_bytes; `path` of the result is its absolute path. Throws
/// Error(kPatchMalformed) saying exactly what is wrong — also when the file cannot be read.
PatchDescription read_patch_file(const std::string& path);

/// Validates a patch image already in memory and describes it. `label` names it in messages
/// (and becomes `path`). Throws Error(kPatchMalformed) for anything wrong with the bytes,
/// and nothing else for any input (the fuzz target checks this).
PatchDescription read_patch_bytes(std::vector<uint8_t> bytes, const std::string& label);

}  // namespace polus
