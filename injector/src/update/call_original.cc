#include "update/call_original.h"

#include <spdlog/spdlog.h>

#include "binary/relocate.h"
#include "common/format.h"
#include "polus/error.h"

namespace polus {

uint64_t replaced_version_entry(TargetContext& target, BorrowedThread& thread, const Symbol& function,
                                const PrologueAnalysis& analysis, const polus_redirect_record* stacked_on) {
  const std::string name = function.qualified_name();
  if (stacked_on) return stacked_on->new_function;  // the newest version before this patch
  if (analysis.branch_into_overwritten) {
    throw Error(ErrorCode::kUnsafeToPatch, "the original of '" + name + "' cannot be called from the patch: " +
                                               analysis.inactive_reason + ", which would land in the jump; replace "
                                               "the function whole, without calling the old one");
  }
  // The bytes as the target has them: the original, as nothing redirects the function now.
  std::vector<uint8_t> code(kMaxOriginalStubBytes);
  code.resize(target.memory().read_bytes_fallible(RemoteAddr(analysis.patch_site), code.data(), code.size()));
  auto make = [&](uint64_t at) { return build_original_stub(code, analysis.patch_site, analysis.has_endbr64, at, name); };
  // Within rel32 reach of the function: rip-relative operands and the jump back need it.
  auto reaches = [&](uint64_t slot) { return jump_reaches(slot, analysis.patch_site) && jump_reaches(analysis.patch_site, slot); };
  make(analysis.patch_site);  // what cannot be moved is refused here, wherever the stub goes
  const LoadedObject* object = target.symbols().object_containing(function.address);
  const uint64_t near_start = object ? object->text_start : analysis.patch_site;
  const uint64_t near_end = object ? object->text_end : analysis.patch_site + 1;
  uint64_t entry = target.arena().permanent_code(thread, function.address.address(), make, reaches, near_start, near_end);
  spdlog::debug("the original of {} runs from {}", name, hex(entry));
  return entry;
}

}  // namespace polus
