// The patch reader against damaged input: the fuzz corpus replayed, a deterministic mutation
// loop over the valid seeds, hand-made corruptions the dynamic loader would assert on, and
// mutants applied with polusctl to a live greeter. read_patch_bytes may only accept a file
// or refuse it with kPatchMalformed; a refused file never reaches the target.
#include <catch2/catch.hpp>

#include <elf.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "greeter_process.h"
#include "polusctl_run.h"
#include "polus/error.h"
#include "update/patch_file.h"

using polus::Error;
using polus::ErrorCode;
using polus::testing::binary_path;
using polus::testing::GreeterProcess;

namespace {

using Bytes = std::vector<uint8_t>;

Bytes read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in);
  return Bytes(std::istreambuf_iterator<char>(in), {});
}

void write_file(const std::string& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out);
}

struct CorpusFile {
  std::string name;
  Bytes bytes;
};

/// The committed corpus, sorted by name: valid seeds, and crash-* files (inputs that once
/// broke the reader or the loader; all must be refused now).
std::vector<CorpusFile> corpus() {
  std::vector<CorpusFile> files;
  for (const auto& entry : std::filesystem::directory_iterator(POLUS_FUZZ_CORPUS_DIR)) {
    if (entry.is_regular_file()) files.push_back({entry.path().filename().string(), read_file(entry.path().string())});
  }
  std::sort(files.begin(), files.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  REQUIRE(files.size() >= 5);
  return files;
}

std::vector<CorpusFile> valid_seeds() {
  std::vector<CorpusFile> seeds;
  for (auto& file : corpus()) {
    if (file.name.rfind("crash-", 0) != 0) seeds.push_back(std::move(file));
  }
  return seeds;
}

enum class Outcome { kAccepted, kMalformed };

/// Reads `bytes`; fails the test for anything but success or kPatchMalformed.
Outcome read(const Bytes& bytes, const std::string& label, std::string* message = nullptr) {
  try {
    polus::read_patch_bytes(bytes, label);
    return Outcome::kAccepted;
  } catch (const Error& e) {
    INFO(label << ": " << e.what());
    REQUIRE(e.code() == ErrorCode::kPatchMalformed);
    REQUIRE_THAT(e.what(), Catch::Contains("is malformed: ") && Catch::Contains("ebuild it"));
    if (message) *message = e.what();
    return Outcome::kMalformed;
  } catch (const std::exception& e) {
    FAIL(label << ": not a polus::Error: " << e.what());
  }
  return Outcome::kMalformed;
}

/// splitmix64: the same sequence on every platform and standard library.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  uint64_t below(uint64_t n) { return next() % n; }

 private:
  uint64_t state_;
};

/// 1-16 random bytes set to random values (as the operator's experiment did).
Bytes flip(const Bytes& seed, Rng& rng) {
  Bytes out = seed;
  for (uint64_t n = 1 + rng.below(16); n > 0; --n) out[rng.below(out.size())] = static_cast<uint8_t>(rng.next());
  return out;
}

// ---- Finding things in a pristine seed, to damage them on purpose. ----------------------

struct Elf {
  Bytes bytes;
  Elf64_Ehdr& ehdr() { return *reinterpret_cast<Elf64_Ehdr*>(bytes.data()); }
  Elf64_Phdr* phdr(uint32_t type) {
    for (int i = 0; i < ehdr().e_phnum; ++i) {
      auto* p = reinterpret_cast<Elf64_Phdr*>(bytes.data() + ehdr().e_phoff + i * sizeof(Elf64_Phdr));
      if (p->p_type == type) return p;
    }
    return nullptr;
  }
  Elf64_Shdr* section(uint32_t type) {
    for (int i = 0; i < ehdr().e_shnum; ++i) {
      auto* s = reinterpret_cast<Elf64_Shdr*>(bytes.data() + ehdr().e_shoff + i * sizeof(Elf64_Shdr));
      if (s->sh_type == type) return s;
    }
    return nullptr;
  }
  Elf64_Dyn* dynamic(int64_t tag) {
    Elf64_Phdr* d = phdr(PT_DYNAMIC);
    for (auto* e = reinterpret_cast<Elf64_Dyn*>(bytes.data() + d->p_offset); e->d_tag != DT_NULL; ++e) {
      if (e->d_tag == tag) return e;
    }
    return nullptr;
  }
  /// File offset of a link-time address (through the PT_LOADs).
  uint64_t offset_of(uint64_t vaddr) {
    for (int i = 0; i < ehdr().e_phnum; ++i) {
      auto* p = reinterpret_cast<Elf64_Phdr*>(bytes.data() + ehdr().e_phoff + i * sizeof(Elf64_Phdr));
      if (p->p_type == PT_LOAD && vaddr >= p->p_vaddr && vaddr < p->p_vaddr + p->p_filesz) return p->p_offset + vaddr - p->p_vaddr;
    }
    FAIL("no segment holds " << vaddr);
    return 0;
  }
  template <typename T>
  T* at_vaddr(uint64_t vaddr) {
    return reinterpret_cast<T*>(bytes.data() + offset_of(vaddr));
  }
};

Elf seed_elf(const std::string& name) {
  for (auto& file : valid_seeds()) {
    if (file.name == name) return Elf{std::move(file.bytes)};
  }
  FAIL("no seed " << name);
  return {};
}

std::string refusal(Elf& elf, const std::string& label) {
  std::string message;
  REQUIRE(read(elf.bytes, label, &message) == Outcome::kMalformed);
  return message;
}

// ---- polusctl against a live greeter. -----------------------------------------------------

using Run = polus::testing::PolusctlRun;

Run polusctl(const std::vector<std::string>& args) { return polus::testing::run_polusctl(args); }

/// File ranges of greeter-v0-v1.so that only the loader and the reader interpret: the ELF
/// header and program headers, .dynamic, the hash and version tables, and the type byte of
/// every relocation. Code, strings and the descriptor's data are left alone: damage there
/// makes a patch that is well-formed but does something else (a renamed function, a wrong
/// instruction), which no reader can tell from a real one.
std::vector<uint64_t> structure_offsets(Elf& elf) {
  std::vector<uint64_t> offsets;
  auto add = [&](uint64_t from, uint64_t size) {
    for (uint64_t o = from; o < from + size; ++o) offsets.push_back(o);
  };
  add(0, elf.ehdr().e_phoff + elf.ehdr().e_phnum * sizeof(Elf64_Phdr));
  for (uint32_t type : {SHT_DYNAMIC, SHT_GNU_HASH, SHT_GNU_versym, SHT_GNU_verneed}) {
    Elf64_Shdr* s = elf.section(type);
    REQUIRE(s != nullptr);
    add(s->sh_offset, s->sh_size);
  }
  for (int i = 0; i < elf.ehdr().e_shnum; ++i) {
    auto* s = reinterpret_cast<Elf64_Shdr*>(elf.bytes.data() + elf.ehdr().e_shoff + i * sizeof(Elf64_Shdr));
    if (s->sh_type != SHT_RELA) continue;
    for (uint64_t r = s->sh_offset; r < s->sh_offset + s->sh_size; r += sizeof(Elf64_Rela)) add(r + 8, 1);
  }
  return offsets;
}

}  // namespace

TEST_CASE("the fuzz corpus: seeds are accepted, crashers are refused as malformed", "[patch_file][fuzz]") {
  int seeds = 0, crashers = 0;
  for (const auto& file : corpus()) {
    INFO(file.name);
    Outcome outcome = read(file.bytes, file.name);
    if (file.name.rfind("crash-", 0) == 0) {
      CHECK(outcome == Outcome::kMalformed);
      ++crashers;
    } else {
      CHECK(outcome == Outcome::kAccepted);
      ++seeds;
    }
  }
  WARN("corpus: " << seeds << " valid seeds, " << crashers << " crashers");
}

TEST_CASE("read_patch_file keeps the bytes it validated and their SHA-256", "[patch_file]") {
  const std::string path = polus::testing::patch_path("greeter-v0-v1.so");
  polus::PatchDescription patch = polus::read_patch_file(path);
  Bytes on_disk = read_file(path);
  REQUIRE(patch.bytes);
  CHECK(*patch.bytes == on_disk);
  std::string sha;
  {
    FILE* pipe = popen(("sha256sum " + path).c_str(), "r");
    REQUIRE(pipe);
    char line[256] = {};
    REQUIRE(fgets(line, sizeof line, pipe));
    pclose(pipe);
    sha = std::string(line).substr(0, 64);
  }
  CHECK(patch.content_sha256 == sha);
  CHECK(polus::read_patch_bytes(on_disk, "x").content_sha256 == sha);
  CHECK(patch.path == std::filesystem::canonical(path).string());

  SECTION("what is not a regular patch file is refused, not an internal error") {
    for (const char* bad : {"/dev/null", "/proc/self/status", "/", "/no/such/patch.so"}) {
      INFO(bad);
      try {
        polus::read_patch_file(bad);
        FAIL("accepted");
      } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::kPatchMalformed);
      }
    }
    CHECK(read(Bytes{}, "empty") == Outcome::kMalformed);
    CHECK(read(Bytes(polus::kMaxPatchFileBytes + 1, 0), "huge") == Outcome::kMalformed);
  }
}

TEST_CASE("what ld.so asserts on is refused with a message that names it", "[patch_file][loader]") {
  // Each of these once killed the target inside dlopen ("Inconsistency detected by ld.so")
  // or faulted it, after the file had passed validation.
  SECTION("DT_RELAENT") {
    Elf elf = seed_elf("greeter-v0-v1.elf");
    elf.dynamic(DT_RELAENT)->d_un.d_val = 0;
    CHECK_THAT(refusal(elf, "relaent"), Catch::Contains("DT_RELAENT"));
  }
  SECTION("DT_PLTREL") {
    Elf elf = seed_elf("greeter-v0-v1.elf");
    elf.dynamic(DT_PLTREL)->d_un.d_val = DT_REL;
    CHECK_THAT(refusal(elf, "pltrel"), Catch::Contains("DT_PLTREL"));
  }
  SECTION("a relocation counted by DT_RELACOUNT that is not relative") {
    Elf elf = seed_elf("greeter-v0-v1.elf");
    auto* rela = elf.at_vaddr<Elf64_Rela>(elf.dynamic(DT_RELA)->d_un.d_ptr);
    rela[0].r_info = ELF64_R_INFO(0, R_X86_64_64);
    CHECK_THAT(refusal(elf, "relacount"), Catch::Contains("DT_RELACOUNT"));
  }
  SECTION("a GNU hash bloom filter whose size is not a power of two") {
    Elf elf = seed_elf("greeter-v0-v1.elf");
    elf.at_vaddr<uint32_t>(elf.dynamic(DT_GNU_HASH)->d_un.d_ptr)[2] = 3;
    CHECK_THAT(refusal(elf, "bloom"), Catch::Contains("bloom filter size 3"));
  }
  SECTION("a GNU hash table without buckets") {
    Elf elf = seed_elf("greeter-v0-v1.elf");
    elf.at_vaddr<uint32_t>(elf.dynamic(DT_GNU_HASH)->d_un.d_ptr)[0] = 0;
    CHECK_THAT(refusal(elf, "buckets"), Catch::Contains("no buckets"));
  }
  SECTION("a version requirement for a library that is not needed") {
    Elf elf = seed_elf("greeter-v0-v1.elf");
    auto* need = elf.at_vaddr<Elf64_Verneed>(elf.dynamic(DT_VERNEED)->d_un.d_ptr);
    need->vn_file += 1;  // "ibc.so.6"
    CHECK_THAT(refusal(elf, "vn_file"), Catch::Contains("not one of its DT_NEEDED"));
  }
  SECTION("a symbol version index that nothing defines") {
    Elf elf = seed_elf("greeter-v0-v1.elf");
    Elf64_Shdr* versym = elf.section(SHT_GNU_versym);
    reinterpret_cast<uint16_t*>(elf.bytes.data() + versym->sh_offset)[1] = 9;
    CHECK_THAT(refusal(elf, "versym"), Catch::Contains("version index 9"));
  }
  SECTION("a symbol index past the symbol table") {
    Elf elf = seed_elf("greeter-v0-v1.elf");
    auto* plt = elf.at_vaddr<Elf64_Rela>(elf.dynamic(DT_JMPREL)->d_un.d_ptr);
    plt[0].r_info = ELF64_R_INFO(4000, R_X86_64_JUMP_SLOT);
    CHECK_THAT(refusal(elf, "symindex"), Catch::Contains("refers to symbol 4000"));
  }
  SECTION("a relocation that writes into read-only code") {
    Elf elf = seed_elf("greeter-v0-v1.elf");
    auto* rela = elf.at_vaddr<Elf64_Rela>(elf.dynamic(DT_RELA)->d_un.d_ptr);
    rela[0].r_offset = elf.dynamic(DT_INIT)->d_un.d_ptr;
    CHECK_THAT(refusal(elf, "textrel"), Catch::Contains("not in a writable segment"));
  }
  SECTION("a segment that reaches past the end of the file") {
    Elf elf = seed_elf("greeter-v0-v1.elf");
    elf.bytes.resize(elf.bytes.size() - 4096 + 100);
    CHECK(read(elf.bytes, "truncated") == Outcome::kMalformed);
  }
  SECTION("a segment whose offset and address disagree modulo the page size") {
    Elf elf = seed_elf("greeter-v0-v1.elf");
    elf.phdr(PT_LOAD)->p_vaddr += 0x10;
    CHECK_THAT(refusal(elf, "congruence"), Catch::Contains("modulo its alignment"));
  }
  SECTION("an executable stack") {
    Elf elf = seed_elf("greeter-v0-v1.elf");
    elf.phdr(PT_GNU_STACK)->p_flags |= PF_X;
    CHECK_THAT(refusal(elf, "execstack"), Catch::Contains("executable stack"));
  }
  SECTION("a dynamic section without DT_NULL") {
    Elf elf = seed_elf("greeter-v0-v1.elf");
    Elf64_Phdr* dyn = elf.phdr(PT_DYNAMIC);
    for (Elf64_Dyn* e = reinterpret_cast<Elf64_Dyn*>(elf.bytes.data() + dyn->p_offset);
         e < reinterpret_cast<Elf64_Dyn*>(elf.bytes.data() + dyn->p_offset + dyn->p_filesz); ++e) {
      if (e->d_tag == DT_NULL) {
        e->d_tag = DT_NEEDED;  // may repeat
        e->d_un.d_val = 1;     // "libc.so.6"
      }
    }
    CHECK_THAT(refusal(elf, "unterminated"), Catch::Contains("DT_NULL"));
  }
  SECTION("flags that would keep the patch loaded for good") {
    Elf elf = seed_elf("greeter-v0-v1.elf");
    Elf64_Dyn* count = elf.dynamic(DT_RELACOUNT);  // optional: free to become DT_FLAGS_1
    count->d_tag = DT_FLAGS_1;
    count->d_un.d_val = DF_1_NODELETE;
    CHECK_THAT(refusal(elf, "nodelete"), Catch::Contains("DF_1_NODELETE"));
  }
}

TEST_CASE("mutants of the valid seeds are accepted or refused as malformed, nothing else", "[patch_file][fuzz]") {
  const std::vector<CorpusFile> seeds = valid_seeds();
  REQUIRE(seeds.size() >= 5);
  Rng rng(0x9017u);
  std::map<std::string, int> counts;
  const int iterations = 20000;
  auto started = std::chrono::steady_clock::now();
  for (int i = 0; i < iterations; ++i) {
    const CorpusFile& seed = seeds[rng.below(seeds.size())];
    Bytes mutant;
    std::string kind;
    uint64_t choice = rng.below(10);
    if (choice < 8) {
      kind = "flip";
      mutant = flip(seed.bytes, rng);
    } else if (choice == 8) {
      kind = "truncate";
      mutant.assign(seed.bytes.begin(), seed.bytes.begin() + static_cast<long>(rng.below(seed.bytes.size())));
    } else {
      kind = "splice";
      const CorpusFile& other = seeds[rng.below(seeds.size())];
      uint64_t cut = rng.below(std::min(seed.bytes.size(), other.bytes.size()));
      mutant.assign(seed.bytes.begin(), seed.bytes.begin() + static_cast<long>(cut));
      mutant.insert(mutant.end(), other.bytes.begin() + static_cast<long>(cut), other.bytes.end());
      if (rng.below(2)) mutant = flip(mutant, rng);
    }
    Outcome outcome = read(mutant, seed.name + " " + kind + " #" + std::to_string(i));
    counts[kind + (outcome == Outcome::kAccepted ? " accepted" : " refused")]++;
  }
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started).count();
  std::string summary;
  for (const auto& [what, n] : counts) summary += what + ": " + std::to_string(n) + "; ";
  WARN(iterations << " mutants in " << ms << " ms: " << summary);
}

TEST_CASE("damaged patches applied to a live greeter: refused (8) or applied (0), the greeter keeps serving",
          "[patch_file][live]") {
  Elf pristine = seed_elf("greeter-v0-v1.elf");
  const std::vector<uint64_t> positions = structure_offsets(pristine);
  char dir_template[] = "/tmp/polus-patch-file-test-XXXXXX";
  REQUIRE(mkdtemp(dir_template));
  const std::string dir = dir_template;

  auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 4);
  const std::string pid = std::to_string(server.pid());
  Rng rng(0xe2e);
  int applied = 0, refused = 0;
  for (int i = 0; i < 30; ++i) {
    Bytes mutant = pristine.bytes;
    for (uint64_t n = 1 + rng.below(4); n > 0; --n) mutant[positions[rng.below(positions.size())]] = static_cast<uint8_t>(rng.next());
    const std::string path = dir + "/mutant-" + std::to_string(i) + ".so";
    write_file(path, mutant);
    Run apply = polusctl({"apply", pid, path, "--timeout", "5000"});
    INFO("mutant " << i << ": status " << apply.status << ": " << apply.err);
    REQUIRE((apply.status == 0 || apply.status == 8));
    REQUIRE(server.alive());
    std::string reply = server.request("HELLO e2e");
    if (apply.status == 0) {
      ++applied;
      CHECK(polus::testing::reply_version(reply, "e2e") >= 0);
      Run rollback = polusctl({"rollback", pid});
      INFO(rollback.err);
      REQUIRE(rollback.status == 0);
    } else {
      ++refused;
      CHECK_THAT(apply.err, Catch::Contains("is malformed"));
    }
    REQUIRE(server.request("HELLO e2e") == polus::testing::expected_reply(0, "e2e"));
    ::unlink(path.c_str());
  }
  // And the target still takes a good patch.
  Run good = polusctl({"apply", pid, polus::testing::patch_path("greeter-v0-v1.so")});
  INFO(good.err);
  REQUIRE(good.status == 0);
  CHECK(server.request("HELLO e2e") == polus::testing::expected_reply(1, "e2e"));
  ::rmdir(dir.c_str());
  WARN("30 damaged patches: " << applied << " applied and rolled back, " << refused << " refused as malformed");
}
