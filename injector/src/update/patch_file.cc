// update/patch_file.cc — reading a patch file: its bytes, checked as an ELF image
// (update/patch_image.h), then its descriptor, into a PatchDescription.
#include "update/patch_file.h"

#include <elf.h>
#include <fcntl.h>
#include <limits.h>
#include <sodium.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include "common/format.h"
#include "polus/error.h"
#include "update/patch_image.h"

namespace polus {

namespace {

using patch_image::malformed;
using patch_image::PatchImage;

std::string sha256_hex(const std::vector<uint8_t>& bytes) {
  // libsodium (already there for signatures) rather than libcrypto: one library less for every
  // polusctl to load and relocate at start.
  static const bool ready = sodium_init() >= 0;
  unsigned char digest[crypto_hash_sha256_BYTES];
  if (!ready || crypto_hash_sha256(digest, bytes.data(), bytes.size()) != 0) {
    throw Error(ErrorCode::kInternal, "libsodium could not compute a SHA-256 (sodium_init failed); reinstall libsodium23");
  }
  const unsigned length = crypto_hash_sha256_BYTES;
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < length; ++i) {
    out += kDigits[digest[i] >> 4];
    out += kDigits[digest[i] & 15];
  }
  return out;
}

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
  // A patch may only run callbacks (fix a value in a pre-update callback): it has work to do
  // if it replaces a function, changes data, or has a callback that runs without either.
  const bool runs_callbacks = std::any_of(out.callbacks.begin(), out.callbacks.end(), [](const polus_callback& c) {
    return c.kind == POLUS_CB_PRE_UPDATE || c.kind == POLUS_CB_POST_UPDATE;
  });
  if (out.function_replacements().empty() && out.data.empty() && !runs_callbacks) {
    malformed(path, "it replaces no function, changes no data and has no pre- or post-update callback: "
                    "there is nothing to apply");
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
