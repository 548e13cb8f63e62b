// patch_reader_fuzz.cc — libFuzzer target for the patch reader (update/patch_file.cc).
//
// Every input must come out of read_patch_bytes either as a PatchDescription or as
// polus::Error with code kPatchMalformed. Any other exception, a crash, a hang or a
// sanitizer report is a bug. Built with clang (-fsanitize=fuzzer,address,undefined) when
// POLUS_FUZZ=ON; bench/fuzz.sh runs it on injector/tests/fuzz/corpus/.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <vector>

#include "polus/error.h"
#include "update/patch_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    polus::PatchDescription patch = polus::read_patch_bytes(std::vector<uint8_t>(data, data + size), "fuzz-input.so");
    if (!patch.bytes || patch.bytes->size() != size || patch.content_sha256.size() != 64) {
      std::fprintf(stderr, "accepted input described wrongly (bytes or SHA-256 missing)\n");
      std::abort();
    }
  } catch (const polus::Error& e) {
    if (e.code() != polus::ErrorCode::kPatchMalformed) {
      std::fprintf(stderr, "read_patch_bytes threw %s, not patch-malformed: %s\n", polus::error_code_name(e.code()), e.what());
      std::abort();
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "read_patch_bytes threw a non-Polus exception: %s\n", e.what());
    std::abort();
  } catch (...) {
    std::fprintf(stderr, "read_patch_bytes threw something that is not an exception\n");
    std::abort();
  }
  return 0;
}
