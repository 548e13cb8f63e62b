// Tests of process_maps and symbols against synthetic maps and real fixture processes.
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <climits>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>

#include "polus/error.h"
#include "process/process_maps.h"
#include "binary/symbols.h"

namespace fs = std::filesystem;
using polus::Error;
using polus::ErrorCode;
using polus::ProcessSymbols;
using polus::RemoteAddr;
using polus::SymbolKind;

namespace {

/// A fixture process, started and killed with the test. It prints "name 0xADDRESS" lines
/// (the addresses as the process itself sees them), then "ready", then pauses.
class FixtureProcess {
 public:
  explicit FixtureProcess(const std::string& path) {
    int fds[2];
    REQUIRE(pipe2(fds, O_CLOEXEC) == 0);
    pid_ = fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      dup2(fds[1], STDOUT_FILENO);
      execl(path.c_str(), path.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    close(fds[1]);
    output_ = fdopen(fds[0], "r");
    REQUIRE(output_ != nullptr);
    read_addresses();
  }
  FixtureProcess(const FixtureProcess&) = delete;
  FixtureProcess& operator=(const FixtureProcess&) = delete;
  ~FixtureProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (output_) fclose(output_);
  }

  pid_t pid() const { return pid_; }
  uint64_t printed(const std::string& name) const {
    auto it = printed_.find(name);
    REQUIRE(it != printed_.end());
    return it->second;
  }

 private:
  void read_addresses() {
    char line[256];
    while (fgets(line, sizeof(line), output_)) {
      std::string text(line);
      if (text == "ready\n") return;
      size_t space = text.find(' ');
      if (space != std::string::npos) printed_[text.substr(0, space)] = strtoull(text.c_str() + space + 1, nullptr, 0);
    }
    FAIL("fixture exited before printing 'ready'");
  }

  pid_t pid_ = -1;
  FILE* output_ = nullptr;
  std::map<std::string, uint64_t> printed_;
};

/// A temporary directory, removed with the test.
class TempDir {
 public:
  TempDir() {
    char name[] = "/tmp/polus-symbols-test-XXXXXX";
    REQUIRE(mkdtemp(name) != nullptr);
    path_ = name;
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

ErrorCode code_of(const std::function<void()>& action, std::string* message = nullptr) {
  try {
    action();
  } catch (const Error& error) {
    if (message) *message = error.what();
    return error.code();
  }
  FAIL("expected a polus::Error");
  return ErrorCode::kInternal;
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace

// ---------------------------------------------------------------------------------------
// process_maps

TEST_CASE("parse_process_maps reads every field and keeps odd paths", "[maps]") {
  const std::string text =
      "55d0c0a00000-55d0c0a02000 r-xp 00001000 fd:01 1234                       /usr/bin/x\n"
      "55d0c0c00000-55d0c0c21000 rw-p 00000000 00:00 0                          [heap]\n"
      "7f0000000000-7f0000001000 rw-s 00000000 00:05 77                         /dev/shm/my file\n"
      "7f0000002000-7f0000003000 r--p 00002000 fd:01 99                         /opt/app/lib old.so (deleted)\n"
      "7f0000004000-7f0000005000 ---p 00000000 00:00 0 \n"
      "7ffff7fc1000-7ffff7fc3000 r-xp 00000000 00:00 0                          [vdso]\n";
  auto maps = polus::parse_process_maps(text);
  REQUIRE(maps.size() == 6);

  CHECK(maps[0].start == 0x55d0c0a00000);
  CHECK(maps[0].end == 0x55d0c0a02000);
  CHECK(maps[0].file_offset == 0x1000);
  CHECK(maps[0].readable);
  CHECK_FALSE(maps[0].writable);
  CHECK(maps[0].executable);
  CHECK_FALSE(maps[0].shared);
  CHECK(maps[0].inode == 1234);
  CHECK(maps[0].path == "/usr/bin/x");
  CHECK(maps[0].is_file());
  CHECK(maps[0].contains(0x55d0c0a01fff));
  CHECK_FALSE(maps[0].contains(0x55d0c0a02000));

  CHECK(maps[1].path == "[heap]");
  CHECK_FALSE(maps[1].is_file());
  CHECK(maps[2].shared);
  CHECK(maps[2].path == "/dev/shm/my file");
  CHECK(maps[3].path == "/opt/app/lib old.so");
  CHECK(maps[4].path.empty());
  CHECK_FALSE(maps[4].readable);
  CHECK(maps[5].path == "[vdso]");
}

TEST_CASE("parse_process_maps rejects garbage with an Error", "[maps]") {
  CHECK(code_of([] { polus::parse_process_maps("not a maps line\n"); }) == ErrorCode::kInternal);
  CHECK(code_of([] { polus::parse_process_maps("1000-zz r-xp 0 00:00 0\n"); }) == ErrorCode::kInternal);
  CHECK(polus::parse_process_maps("").empty());
}

TEST_CASE("read_process_maps of a missing process is kNoSuchProcess", "[maps]") {
  std::string message;
  CHECK(code_of([] { polus::read_process_maps(INT_MAX); }, &message) == ErrorCode::kNoSuchProcess);
  CHECK(contains(message, std::to_string(INT_MAX)));
  CHECK_FALSE(polus::read_process_maps(getpid()).empty());
}

namespace {
polus::MappedRegion region(uint64_t start, uint64_t end) {
  polus::MappedRegion r;
  r.start = start;
  r.end = end;
  return r;
}
}  // namespace

TEST_CASE("find_free_range_near picks the closest reachable gap with guard pages", "[maps]") {
  const uint64_t page = 4096;
  // Code at [0x500000, 0x510000); a mapping right below it and one 64 KiB above it.
  std::vector<polus::MappedRegion> maps = {region(0x400000, 0x500000), region(0x500000, 0x510000),
                                           region(0x520000, 0x530000)};
  auto address = polus::find_free_range_near(maps, 0x500000, 0x510000, 0x2000);
  REQUIRE(address);
  // The gap above the code starts at 0x510000; one guard page later is the closest spot.
  CHECK(*address == 0x510000 + page);
  CHECK(*address % page == 0);

  SECTION("a gap too small for size plus guards is skipped") {
    // [0x511000, 0x51f000) is usable; 0xe000 bytes fit exactly, 0xf000 do not.
    auto fits = polus::find_free_range_near(maps, 0x500000, 0x510000, 0xe000);
    REQUIRE(fits);
    CHECK(*fits == 0x511000);
    auto beyond = polus::find_free_range_near(maps, 0x500000, 0x510000, 0xf000);
    REQUIRE(beyond);
    CHECK(*beyond == 0x530000 + page);
  }

  SECTION("sizes round up to whole pages") {
    auto one = polus::find_free_range_near(maps, 0x500000, 0x510000, 1);
    REQUIRE(one);
    CHECK(*one == 0x511000);
  }

  SECTION("every byte stays within reach of every byte of the code") {
    const uint64_t reach = 0x100000;
    // Everything above the code is taken for 2 MiB, so only the low side can work.
    std::vector<polus::MappedRegion> crowded = {region(0x10000000, 0x10010000), region(0x10010000, 0x10200000)};
    auto low = polus::find_free_range_near(crowded, 0x10000000, 0x10010000, 0x3000, reach);
    REQUIRE(low);
    CHECK(*low + 0x3000 + page <= 0x10000000);
    CHECK(0x10010000 - *low <= reach);
    CHECK(*low == 0x10000000 - page - 0x3000);
  }

  SECTION("nothing in reach gives nullopt") {
    // A long code range fills the whole reach on both sides.
    std::vector<polus::MappedRegion> full = {region(0x10000, 0x7ffffffff000)};
    CHECK_FALSE(polus::find_free_range_near(full, 0x40000000, 0x40001000, 0x1000));
    std::vector<polus::MappedRegion> walled = {region(0x3f000000, 0x41000000)};
    CHECK_FALSE(polus::find_free_range_near(walled, 0x40000000, 0x40001000, 0x1000, 0x800000));
  }

  SECTION("the top of the user address space is not handed out") {
    std::vector<polus::MappedRegion> none;
    auto top = polus::find_free_range_near(none, 0x7ffffff00000, 0x7ffffff01000, 0x200000);
    REQUIRE(top);
    CHECK(*top + 0x200000 <= 0x7ffffffff000);
    auto bottom = polus::find_free_range_near(none, 0x20000, 0x21000, 0x1000);
    REQUIRE(bottom);
    CHECK(*bottom >= 0x10000);
  }
}

// ---------------------------------------------------------------------------------------
// ELF files

TEST_CASE("read_elf_object reads .symtab with source files and the build-id", "[elf]") {
  polus::ElfObjectFile object = polus::read_elf_object(SYMBOLS_FIXTURE);
  CHECK(object.has_symtab);
  CHECK(object.load_bias == 0);
  CHECK(object.build_id_hex.size() == 40);
  CHECK(object.build_id_hex.find_first_not_of("0123456789abcdef") == std::string::npos);
  CHECK(object.build_id_hex == polus::read_build_id(SYMBOLS_FIXTURE));

  std::map<std::string, const polus::Symbol*> helpers;
  int globals = 0;
  for (const polus::Symbol& symbol : object.symbols) {
    if (symbol.name == "helper") helpers[symbol.source_file] = &symbol;
    if (symbol.name == "sym_a_function") {
      CHECK(symbol.is_global);
      CHECK(symbol.is_function);
      CHECK(symbol.source_file.empty());
      ++globals;
    }
    if (symbol.name == "sym_a_var") {
      CHECK_FALSE(symbol.is_function);
      ++globals;
    }
  }
  CHECK(globals == 2);
  REQUIRE(helpers.size() == 2);
  REQUIRE(helpers.count("sym_a.c"));
  REQUIRE(helpers.count("sym_b.c"));
  CHECK_FALSE(helpers["sym_a.c"]->is_global);
  CHECK(helpers["sym_a.c"]->qualified_name() == "sym_a.c:helper");
  CHECK(helpers["sym_a.c"]->address != helpers["sym_b.c"]->address);
}

TEST_CASE("the debug file carries the same build-id as the stripped binary", "[elf]") {
  polus::ElfObjectFile stripped = polus::read_elf_object(SYMBOLS_FIXTURE_STRIPPED);
  CHECK_FALSE(stripped.has_symtab);
  CHECK(polus::read_build_id(SYMBOLS_FIXTURE_DEBUG) == stripped.build_id_hex);
  CHECK(polus::read_elf_object(SYMBOLS_FIXTURE_DEBUG).has_symtab);
  CHECK(code_of([] { polus::read_elf_object("/nonexistent/file"); }) == ErrorCode::kInternal);
  CHECK(code_of([] { polus::read_build_id("/proc/self/status"); }) == ErrorCode::kInternal);
}

TEST_CASE("versioned .dynsym names: the default version is the plain name", "[elf]") {
  // glibc keeps a compatibility realpath@GLIBC_2.2.5 next to the default realpath@@GLIBC_2.3.
  polus::ElfObjectFile libc = polus::read_elf_object("/lib/x86_64-linux-gnu/libc.so.6");
  std::map<std::string, uint64_t> realpaths;
  for (const polus::Symbol& symbol : libc.symbols) {
    if (symbol.name.rfind("realpath", 0) == 0) realpaths[symbol.name] = symbol.address.address();
  }
  REQUIRE(realpaths.count("realpath"));
  REQUIRE(realpaths.count("realpath@GLIBC_2.2.5"));
  CHECK(realpaths["realpath"] != realpaths["realpath@GLIBC_2.2.5"]);
}

// ---------------------------------------------------------------------------------------
// Running processes

TEST_CASE("ProcessSymbols resolves a PIE with .symtab", "[process]") {
  FixtureProcess fixture(SYMBOLS_FIXTURE);
  ProcessSymbols symbols = ProcessSymbols::load(fixture.pid());

  const polus::LoadedObject& main = symbols.main_executable();
  CHECK(fs::equivalent(main.path, SYMBOLS_FIXTURE));
  CHECK(main.is_main_executable);
  CHECK(main.has_symtab);
  CHECK(main.load_bias != 0);  // PIE under ASLR
  CHECK(&symbols.objects().front() == &main);
  CHECK(main.text_start < main.text_end);

  SECTION("globals resolve to the addresses the process itself sees") {
    polus::Symbol function = symbols.resolve("sym_a_function", SymbolKind::kFunction);
    CHECK(function.address.address() == fixture.printed("sym_a_function"));
    CHECK(function.is_function);
    CHECK(function.object_path == main.path);
    CHECK(function.address.address() >= main.text_start);
    CHECK(function.address.address() < main.text_end);
    CHECK(symbols.resolve("sym_b_function").address.address() == fixture.printed("sym_b_function"));
    CHECK(symbols.resolve("sym_a_var", SymbolKind::kData).address.address() == fixture.printed("sym_a_var"));
    CHECK(symbols.resolve("symbols_fixture!sym_b_var").address.address() == fixture.printed("sym_b_var"));
  }

  SECTION("the kind filter applies") {
    std::string message;
    CHECK(code_of([&] { symbols.resolve("sym_a_var", SymbolKind::kFunction); }, &message) ==
          ErrorCode::kSymbolNotFound);
    CHECK(contains(message, "data object of that name exists"));
    CHECK(code_of([&] { symbols.resolve("sym_a_function", SymbolKind::kData); }) == ErrorCode::kSymbolNotFound);
  }

  SECTION("two file-static helpers are ambiguous unless qualified") {
    std::string message;
    CHECK(code_of([&] { symbols.resolve("helper"); }, &message) == ErrorCode::kSymbolAmbiguous);
    CHECK(contains(message, "sym_a.c:helper at 0x"));
    CHECK(contains(message, "sym_b.c:helper at 0x"));
    CHECK(contains(message, "file.c:helper"));

    polus::Symbol a = symbols.resolve("sym_a.c:helper", SymbolKind::kFunction);
    CHECK(a.address.address() == fixture.printed("sym_a_helper"));
    CHECK(a.source_file == "sym_a.c");
    CHECK(a.qualified_name() == "sym_a.c:helper");
    CHECK(symbols.resolve("symbols_fixture!sym_b.c:helper").address.address() == fixture.printed("sym_b_helper"));
    CHECK(code_of([&] { symbols.resolve("sym_c.c:helper"); }) == ErrorCode::kSymbolNotFound);
  }

  SECTION("libc's exports are found without reading its whole table, the same as through it") {
    const polus::LoadedObject* libc = symbols.find_object("libc.so.6");
    REQUIRE(libc != nullptr);
    auto by_name = [libc](std::vector<polus::Symbol> found) {
      std::map<std::string, uint64_t> out;
      for (const polus::Symbol& s : found) {
        CHECK(s.is_function);
        CHECK(s.size > 0);
        CHECK(s.object_path == libc->path);
        out[s.name] = s.address.address();
      }
      return out;
    };
    // Before libc's table is read: a .dynsym scan. "realpath" has an old compatibility version
    // too; only the default one may come back.
    auto scanned = by_name(symbols.exported_functions(*libc, {"malloc", "dlopen", "realpath", "no_such_function"}));
    CHECK(scanned.size() == 3);
    CHECK(scanned.count("no_such_function") == 0);
    CHECK(scanned["malloc"] == symbols.resolve("libc.so.6!malloc").address.address());
    CHECK(scanned["realpath"] == symbols.resolve("libc.so.6!realpath").address.address());
    CHECK(scanned["malloc"] >= libc->text_start);
    CHECK(scanned["malloc"] < libc->text_end);
    // After (resolve read it): answered from the table, identically.
    CHECK(by_name(symbols.exported_functions(*libc, {"malloc", "dlopen", "realpath", "no_such_function"})) == scanned);
    // The fixture process itself calls malloc at the address the scan found.
    CHECK(scanned["malloc"] == fixture.printed("malloc"));
  }

  SECTION("shared objects resolve, qualified or not") {
    const polus::LoadedObject* libc = symbols.find_object("libc.so.6");
    REQUIRE(libc != nullptr);
    CHECK(symbols.find_object(libc->path) == libc);
    polus::Symbol malloc_symbol = symbols.resolve("libc.so.6!malloc", SymbolKind::kFunction);
    CHECK(malloc_symbol.address.address() >= libc->text_start);
    CHECK(malloc_symbol.address.address() < libc->text_end);
    CHECK(malloc_symbol.object_path == libc->path);
    // Unqualified, the first object in search order that defines it wins (libc normally;
    // a sanitizer runtime or malloc replacement if one is loaded first).
    const polus::LoadedObject* first_definer = nullptr;
    for (const polus::LoadedObject& object : symbols.objects()) {
      for (const polus::Symbol& symbol : symbols.symbols_of(object)) {
        if (symbol.name == "malloc" && symbol.is_global) first_definer = &object;
      }
      if (first_definer) break;
    }
    REQUIRE(first_definer != nullptr);
    CHECK(symbols.resolve("malloc").object_path == first_definer->path);
    CHECK(symbols.object_containing(malloc_symbol.address) == libc);
  }

  SECTION("objects are searched in the dynamic loader's order") {
    // The fixture needs libm before libc; libc is mapped at a lower address (mmap grows
    // down), so address order would have it backwards.
    auto index_of = [&](const char* name) {
      const polus::LoadedObject* object = symbols.find_object(name);
      REQUIRE(object != nullptr);
      return object - symbols.objects().data();
    };
    CHECK(index_of("libm.so.6") < index_of("libc.so.6"));
  }

  SECTION("unknown names and objects are kSymbolNotFound with guidance") {
    std::string message;
    CHECK(code_of([&] { symbols.resolve("no_such_function", SymbolKind::kFunction); }, &message) ==
          ErrorCode::kSymbolNotFound);
    CHECK(contains(message, "'no_such_function' (function) not found in " + main.path));
    CHECK(contains(message, "libfoo.so.1!no_such_function"));
    CHECK(code_of([&] { symbols.resolve("libnope.so!malloc"); }, &message) == ErrorCode::kSymbolNotFound);
    CHECK(contains(message, "libnope.so"));
    CHECK(contains(message, "libc.so.6"));
    CHECK(code_of([&] { symbols.resolve("libc.so.6!sym_a_function"); }) == ErrorCode::kSymbolNotFound);
  }

  SECTION("addresses map back to symbols and objects") {
    uint64_t function = fixture.printed("sym_a_function");
    auto inside = symbols.symbol_containing(RemoteAddr(function + 1));
    REQUIRE(inside);
    CHECK(inside->name == "sym_a_function");
    auto helper = symbols.symbol_containing(RemoteAddr(fixture.printed("sym_b_helper")));
    REQUIRE(helper);
    CHECK(helper->qualified_name() == "sym_b.c:helper");
    CHECK(symbols.object_containing(RemoteAddr(function)) == &main);
    CHECK_FALSE(symbols.symbol_containing(RemoteAddr(0x1000)));
    // Deep in a large .bss: the anonymous mapping past the file's last page.
    auto bss = symbols.symbol_containing(RemoteAddr(fixture.printed("sym_big_bss") + 0x8000));
    REQUIRE(bss);
    CHECK(bss->name == "sym_big_bss");
    CHECK(symbols.object_containing(RemoteAddr(0x1000)) == nullptr);

    // A moved-to ProcessSymbols keeps working (the index holds no pointers).
    ProcessSymbols moved = std::move(symbols);
    auto again = moved.symbol_containing(RemoteAddr(function + 1));
    REQUIRE(again);
    CHECK(again->name == "sym_a_function");
  }
}

TEST_CASE("versioned libc symbols resolve to the default version, with or without libc's debug file",
          "[process]") {
  FixtureProcess fixture(SYMBOLS_FIXTURE);
  for (bool with_debug_roots : {false, true}) {
    polus::SymbolOptions options;
    if (!with_debug_roots) options.debug_roots.clear();
    ProcessSymbols symbols = ProcessSymbols::load(fixture.pid(), options);
    polus::Symbol current = symbols.resolve("libc.so.6!realpath", SymbolKind::kFunction);
    polus::Symbol compat = symbols.resolve("libc.so.6!realpath@GLIBC_2.2.5", SymbolKind::kFunction);
    CHECK(current.is_global);
    CHECK(current.address != compat.address);
    CHECK(symbols.resolve("libc.so.6!realpath@@GLIBC_2.3").address == current.address);
    CHECK(symbols.resolve("libc.so.6!pthread_cond_wait").is_global);
    CHECK(symbols.resolve("libc.so.6!memcpy").is_global);
  }
}

TEST_CASE("a stripped -rdynamic binary resolves its globals through .dynsym", "[process]") {
  FixtureProcess fixture(SYMBOLS_FIXTURE_RDYNAMIC);
  ProcessSymbols symbols = ProcessSymbols::load(fixture.pid());
  const polus::LoadedObject& main = symbols.main_executable();
  CHECK_FALSE(main.has_symtab);
  CHECK(symbols.resolve("sym_a_function").address.address() == fixture.printed("sym_a_function"));
  CHECK(symbols.resolve("sym_b_var", SymbolKind::kData).address.address() == fixture.printed("sym_b_var"));

  std::string message;
  CHECK(code_of([&] { symbols.resolve("sym_a.c:helper"); }, &message) == ErrorCode::kSymbolNotFound);
  CHECK(contains(message, "stripped"));
  CHECK(contains(message, "debug file"));
}

TEST_CASE("a stripped binary gets its symbols from a build-id debug file", "[process]") {
  TempDir root;
  const std::string build_id = polus::read_build_id(SYMBOLS_FIXTURE_STRIPPED);
  REQUIRE(build_id.size() > 2);
  fs::path debug_path = root.path() / ".build-id" / build_id.substr(0, 2) / (build_id.substr(2) + ".debug");
  fs::create_directories(debug_path.parent_path());
  fs::copy_file(SYMBOLS_FIXTURE_DEBUG, debug_path);

  FixtureProcess fixture(SYMBOLS_FIXTURE_STRIPPED);

  SECTION("without it, file-statics are invisible") {
    polus::SymbolOptions options;
    options.debug_roots = {(root.path() / "empty").string()};
    ProcessSymbols symbols = ProcessSymbols::load(fixture.pid(), options);
    CHECK_FALSE(symbols.main_executable().has_symtab);
    CHECK(code_of([&] { symbols.resolve("sym_a.c:helper"); }) == ErrorCode::kSymbolNotFound);
  }

  SECTION("found under a debug root by build-id") {
    polus::SymbolOptions options;
    options.debug_roots = {"/nonexistent-debug-root", root.path().string()};
    ProcessSymbols symbols = ProcessSymbols::load(fixture.pid(), options);
    const polus::LoadedObject& main = symbols.main_executable();
    CHECK(main.has_symtab);
    CHECK(main.symbols_from == debug_path.string());
    CHECK(main.build_id_hex == build_id);
    CHECK(symbols.resolve("sym_a.c:helper").address.address() == fixture.printed("sym_a_helper"));
    CHECK(symbols.resolve("sym_b.c:helper").address.address() == fixture.printed("sym_b_helper"));
    CHECK(symbols.resolve("sym_a_function").address.address() == fixture.printed("sym_a_function"));
    CHECK(symbols.resolve("sym_a.c:helper").object_path == main.path);
  }

  SECTION("named explicitly") {
    polus::SymbolOptions options;
    options.debug_roots.clear();
    options.debug_files = {SYMBOLS_FIXTURE_DEBUG};
    ProcessSymbols symbols = ProcessSymbols::load(fixture.pid(), options);
    CHECK(symbols.main_executable().symbols_from == SYMBOLS_FIXTURE_DEBUG);
    CHECK(symbols.resolve("sym_b.c:helper").address.address() == fixture.printed("sym_b_helper"));
  }
}

TEST_CASE("a binary replaced or deleted on disk is read as the running build", "[process]") {
  // The usual live-patching situation: an upgrade installed a new build over the running one.
  TempDir dir;
  fs::path app = dir.path() / "app";
  fs::copy_file(SYMBOLS_FIXTURE, app);
  FixtureProcess fixture(app.string());

  SECTION("replaced") {
    fs::copy_file(SYMBOLS_FIXTURE_RDYNAMIC, dir.path() / "app.new");
    fs::rename(dir.path() / "app.new", app);
  }
  SECTION("deleted") { fs::remove(app); }

  ProcessSymbols symbols = ProcessSymbols::load(fixture.pid());
  const polus::LoadedObject& main = symbols.main_executable();
  CHECK(main.path == app.string());
  CHECK(main.has_symtab);  // the replacement has none: the running file was read
  CHECK(symbols.resolve("sym_a.c:helper").address.address() == fixture.printed("sym_a_helper"));
}

TEST_CASE("loading a nonexistent process is kNoSuchProcess", "[process]") {
  std::string message;
  CHECK(code_of([] { ProcessSymbols::load(INT_MAX); }, &message) == ErrorCode::kNoSuchProcess);
  CHECK(contains(message, "does not exist"));
}

// ---------------------------------------------------------------------------------------
// error.h

TEST_CASE("error codes have stable names and exit statuses", "[error]") {
  CHECK(std::string(polus::error_code_name(ErrorCode::kNoSuchProcess)) == "no-such-process");
  CHECK(std::string(polus::error_code_name(ErrorCode::kSymbolAmbiguous)) == "symbol-ambiguous");
  CHECK(std::string(polus::error_code_name(ErrorCode::kNothingToRollBack)) == "nothing-to-roll-back");
  CHECK(std::string(polus::error_code_name(ErrorCode::kInternal)) == "internal");
  CHECK(polus::error_exit_status(ErrorCode::kInternal) == 1);
  CHECK(polus::error_exit_status(ErrorCode::kNoSuchProcess) == 3);
  CHECK(polus::error_exit_status(ErrorCode::kSymbolNotFound) == 6);
  CHECK(polus::error_exit_status(ErrorCode::kTimeout) == 14);

  auto thrown = [](int errno_value) {
    try {
      polus::throw_errno("opening x", errno_value);
    } catch (const Error& error) {
      return std::make_pair(error.code(), std::string(error.what()));
    }
    return std::make_pair(ErrorCode::kInternal, std::string());
  };
  CHECK(thrown(ESRCH).first == ErrorCode::kNoSuchProcess);
  CHECK(thrown(EPERM).first == ErrorCode::kPermissionDenied);
  CHECK(thrown(EACCES).first == ErrorCode::kPermissionDenied);
  CHECK(thrown(ENOENT).first == ErrorCode::kInternal);
  CHECK(thrown(ENOENT).second == std::string("opening x: ") + strerror(ENOENT));
}
