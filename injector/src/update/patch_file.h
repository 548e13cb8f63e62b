// update/patch_file.h — a patch .so read and validated from disk, before the target is touched.
//
// The descriptor is static data, so it is read straight from the file: its pointer fields
// are resolved through the file's dynamic relocations (R_X86_64_RELATIVE and
// R_X86_64_64 against the patch's own symbols), giving link-time addresses inside the
// patch. Once the patch is loaded in the target, link-time address + load bias is where
// each thing lives.
#pragma once

#include <cstdint>
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
  std::string path;         // absolute
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

/// Reads and validates a patch. Throws Error(kPatchMalformed) saying exactly what is wrong.
PatchDescription read_patch_file(const std::string& path);

}  // namespace polus
