#include "binary/disassembler.h"

#include "polus/error.h"

namespace polus {

Disassembler::Disassembler() {
  if (cs_open(CS_ARCH_X86, CS_MODE_64, &handle_) != CS_ERR_OK) {
    throw Error(ErrorCode::kInternal, "capstone cannot open an x86-64 disassembler");
  }
  cs_option(handle_, CS_OPT_DETAIL, CS_OPT_ON);
  insn_ = cs_malloc(handle_);
}

Disassembler::~Disassembler() {
  cs_free(insn_, 1);
  cs_close(&handle_);
}

}  // namespace polus
