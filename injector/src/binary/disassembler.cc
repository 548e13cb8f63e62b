#include "binary/disassembler.h"

#include <dlfcn.h>

#include <mutex>
#include <string>

#include "polus/error.h"

namespace polus {

namespace {

// libcapstone, loaded the first time something is disassembled rather than linked: its tables
// carry some 77,000 relocations, which the dynamic loader would apply at every polusctl start
// (about a millisecond) even for commands that never disassemble.
struct Capstone {
  decltype(&::cs_open) open = nullptr;
  decltype(&::cs_option) option = nullptr;
  decltype(&::cs_malloc) malloc = nullptr;
  decltype(&::cs_free) free = nullptr;
  decltype(&::cs_close) close = nullptr;
  decltype(&::cs_disasm_iter) disasm_iter = nullptr;
  decltype(&::cs_insn_group) insn_group = nullptr;
  std::string error;  // why it could not be loaded, "" if it was
};

const Capstone& capstone() {
  static Capstone lib;
  static std::once_flag once;
  std::call_once(once, [] {
    void* handle = ::dlopen("libcapstone.so.4", RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
      const char* why = ::dlerror();
      lib.error = why ? why : "dlopen failed";
      return;
    }
    auto get = [&](auto& slot, const char* name) {
      slot = reinterpret_cast<std::remove_reference_t<decltype(slot)>>(::dlsym(handle, name));
      if (!slot && lib.error.empty()) lib.error = std::string("libcapstone.so.4 has no ") + name;
    };
    get(lib.open, "cs_open");
    get(lib.option, "cs_option");
    get(lib.malloc, "cs_malloc");
    get(lib.free, "cs_free");
    get(lib.close, "cs_close");
    get(lib.disasm_iter, "cs_disasm_iter");
    get(lib.insn_group, "cs_insn_group");
  });
  if (!lib.error.empty()) {
    throw Error(ErrorCode::kInternal, "cannot load the capstone disassembler (" + lib.error +
                                          "); install Debian's libcapstone4 package");
  }
  return lib;
}

}  // namespace

Disassembler::Disassembler() {
  const Capstone& cs = capstone();
  if (cs.open(CS_ARCH_X86, CS_MODE_64, &handle_) != CS_ERR_OK) {
    throw Error(ErrorCode::kInternal, "capstone cannot open an x86-64 disassembler");
  }
  cs.option(handle_, CS_OPT_DETAIL, CS_OPT_ON);
  insn_ = cs.malloc(handle_);
}

Disassembler::~Disassembler() {
  const Capstone& cs = capstone();
  cs.free(insn_, 1);
  cs.close(&handle_);
}

bool Disassembler::next(const uint8_t** code, size_t* size, uint64_t* address) {
  return capstone().disasm_iter(handle_, code, size, address, insn_);
}

bool Disassembler::in_group(uint8_t group) const { return capstone().insn_group(handle_, insn_, group); }

}  // namespace polus
