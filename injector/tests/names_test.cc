// Names as people write them: C++ functions demangled (with or without parameter lists),
// template instances, a lambda, an anonymous namespace; objects by soname and by a symlink
// to the executable; debug files found by .gnu_debuglink. Against real processes, and a C++
// patch applied to a running C++ target.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <cstring>
#include <map>
#include <sstream>

#include "binary/debug_files.h"
#include "binary/symbol_names.h"
#include "binary/symbols.h"
#include "child_process.h"
#include "polus/engine.h"
#include "polus/error.h"
#include "polusctl_run.h"

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using polus::ErrorCode;
using polus::ProcessSymbols;
using polus::SymbolKind;

namespace {

polus::EngineOptions options() {
  polus::EngineOptions o;
  o.agent_path = POLUS_AGENT_PATH;
  o.timeout = 10s;
  return o;
}

/// A temporary directory, removed with the test.
class TempDir {
 public:
  TempDir() {
    char name[] = "/tmp/polus-names-test-XXXXXX";
    REQUIRE(mkdtemp(name) != nullptr);
    path_ = name;
    fs::permissions(path_, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                               fs::perms::others_read | fs::perms::others_exec);
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
  } catch (const polus::Error& error) {
    if (message) *message = error.what();
    return error.code();
  }
  FAIL("expected a polus::Error");
  return ErrorCode::kInternal;
}

uint64_t address_of(const ProcessSymbols& symbols, const std::string& name) {
  return symbols.resolve(name, SymbolKind::kFunction).address.address();
}

}  // namespace

TEST_CASE("written names are taken apart without swallowing C++ scopes", "[names]") {
  auto spec = [](const char* text) {
    polus::SymbolSpec s = polus::parse_symbol_spec(text);
    return s.object + "|" + s.file + "|" + s.name;
  };
  CHECK(spec("format_reply") == "||format_reply");
  CHECK(spec("greeter.c:format_reply") == "|greeter.c|format_reply");
  CHECK(spec("libfoo.so.1!name") == "libfoo.so.1||name");
  CHECK(spec("libfoo.so.1!dir/foo.c:name") == "libfoo.so.1|dir/foo.c|name");
  CHECK(spec("shop::Pricer::price(int) const") == "||shop::Pricer::price(int) const");
  CHECK(spec("pricer.cc:(anonymous namespace)::helper") == "|pricer.cc|(anonymous namespace)::helper");
  CHECK(spec("(anonymous namespace)::helper(int)") == "||(anonymous namespace)::helper(int)");
  CHECK(spec("libshop.so!shop::operator!=(shop::Pricer const&, shop::Pricer const&)") ==
        "libshop.so||shop::operator!=(shop::Pricer const&, shop::Pricer const&)");
  CHECK(spec("operator!(shop::Pricer const&)") == "||operator!(shop::Pricer const&)");
  CHECK(spec("memcpy@@GLIBC_2.14") == "||memcpy");

  CHECK(polus::canonical_cxx_name("price( int )  const") == "price(int)const");
  CHECK(polus::canonical_cxx_name("std::vector<std::vector<int> >") == "std::vector<std::vector<int>>");
  CHECK(polus::canonical_cxx_name("operator new(unsigned long)") == "operator new(unsigned long)");
  polus::CxxNameForms forms = polus::cxx_name_forms("int shop::max_of<int>(int, int)");
  CHECK(forms.signature == "shop::max_of<int>(int,int)");
  CHECK(forms.bare == "shop::max_of<int>");
  CHECK(forms.bare_untemplated == "shop::max_of");
  forms = polus::cxx_name_forms("shop::make_doubler()::{lambda(int)#1}::operator()(int)");
  CHECK(forms.bare == "shop::make_doubler()::{lambda(int)#1}::operator()");
  forms = polus::cxx_name_forms("shop::Pricer::operator int() const");
  CHECK(forms.bare == "shop::Pricer::operator int");
}

TEST_CASE("gcc's copies of a function are recognised by their suffix", "[names]") {
  auto kind = [](const char* name) {
    auto clone = polus::split_clone_name(name);
    REQUIRE(clone);
    return clone->kind;
  };
  CHECK(polus::split_clone_name("make_reply.constprop.0")->base == "make_reply");
  CHECK(kind("make_reply.constprop.0") == polus::CloneKind::kSpecialised);
  CHECK(kind("f.isra.0.constprop.1") == polus::CloneKind::kSpecialised);
  CHECK(kind("f.part.0") == polus::CloneKind::kPart);
  CHECK(kind("f.cold") == polus::CloneKind::kColdPart);
  CHECK(kind("_ZL3fooi.lto_priv.0") == polus::CloneKind::kSameFunction);
  CHECK(polus::split_clone_name("_ZL3fooi.isra.0")->base == "_ZL3fooi");
  CHECK_FALSE(polus::split_clone_name("plain"));
  CHECK_FALSE(polus::split_clone_name("a.b"));
  CHECK_FALSE(polus::split_clone_name("f.constprop"));  // the number is part of the suffix
}

TEST_CASE("C++ functions resolve by their demangled names, objects by soname and symlink", "[names][live]") {
  // Started through a symlink whose name differs from the file's, longer than /proc/PID/comm
  // keeps: only the symlink beside the executable says that this is "shop-server-...".
  TempDir dir;
  const fs::path real = dir.path() / "cxx_fixture";
  fs::copy_file(CXX_FIXTURE, real);
  const fs::path link = dir.path() / "shop-server-started-by-symlink";
  fs::create_symlink("cxx_fixture", link);
  polus::testing::ChildProcess target({link.string()});
  REQUIRE(target.read_line() == "READY");
  ProcessSymbols symbols = ProcessSymbols::load(target.pid());

  const uint64_t price = address_of(symbols, "_ZNK4shop6Pricer5priceEi");
  CHECK(address_of(symbols, "shop::Pricer::price(int) const") == price);
  CHECK(address_of(symbols, "shop::Pricer::price( int )const") == price);
  CHECK(address_of(symbols, "shop::Pricer::price") == price);
  CHECK(address_of(symbols, "shop-server-started-by-symlink!shop::Pricer::price") == price);
  CHECK(address_of(symbols, "cxx_fixture!shop::Pricer::price") == price);
  CHECK(symbols.resolve("shop::Pricer::price").qualified_name() == "shop::Pricer::price(int) const");

  // Overloads: the parameter list picks one; without it the name is ambiguous.
  CHECK(address_of(symbols, "shop::Pricer::discount(int) const") == address_of(symbols, "_ZNK4shop6Pricer8discountEi"));
  CHECK(address_of(symbols, "shop::Pricer::discount(int, int) const") ==
        address_of(symbols, "_ZNK4shop6Pricer8discountEii"));
  std::string message;
  CHECK(code_of([&] { symbols.resolve("shop::Pricer::discount"); }, &message) == ErrorCode::kSymbolAmbiguous);
  CHECK_THAT(message, Catch::Contains("shop::Pricer::discount(int) const") &&
                          Catch::Contains("shop::Pricer::discount(int, int) const") &&
                          Catch::Contains("parameter list"));

  // Template instances: with or without the return type and parameters; the template's
  // name alone is ambiguous between its two instances.
  const uint64_t max_int = address_of(symbols, "_ZN4shop6max_ofIiEET_S1_S1_");
  CHECK(address_of(symbols, "shop::max_of<int>") == max_int);
  CHECK(address_of(symbols, "shop::max_of<int>(int, int)") == max_int);
  CHECK(address_of(symbols, "int shop::max_of<int>(int, int)") == max_int);
  CHECK(address_of(symbols, "shop::max_of<long>") != max_int);
  CHECK(code_of([&] { symbols.resolve("shop::max_of"); }) == ErrorCode::kSymbolAmbiguous);

  // The lambda in the std::function, the anonymous namespace (with and without its file).
  CHECK(address_of(symbols, "shop::make_doubler()::{lambda(int)#1}::operator()(int)") ==
        address_of(symbols, "shop::make_doubler()::{lambda(int)#1}::operator()"));
  CHECK(address_of(symbols, "cxx_fixture.cc:(anonymous namespace)::helper") ==
        address_of(symbols, "(anonymous namespace)::helper(int)"));

  // The library by its soname, its file name, and the development symlink beside it.
  const polus::LoadedObject* library = symbols.find_object("libreach.so.1");
  REQUIRE(library != nullptr);
  CHECK(fs::path(library->path).filename() == "libreach.so.1.5.4");
  CHECK(library->soname == "libreach.so.1");
  const uint64_t reach = address_of(symbols, "libreach.so.1.5.4!reach_value");
  CHECK(address_of(symbols, "libreach.so.1!reach_value") == reach);
  CHECK(address_of(symbols, "libreach.so!reach_value") == reach);

  // A C++ name that is not there says how C++ names are written.
  CHECK(code_of([&] { symbols.resolve("shop::Pricer::no_such(int)", SymbolKind::kFunction); }, &message) ==
        ErrorCode::kSymbolNotFound);
  CHECK_THAT(message, Catch::Contains("c++filt") && !Catch::Contains("'libfoo.so!"));
  CHECK(code_of([&] { symbols.resolve("libnope.so.3!reach_value"); }, &message) == ErrorCode::kSymbolNotFound);
  CHECK_THAT(message, Catch::Contains("libreach.so.1.5.4 (libreach.so.1)"));
}

TEST_CASE("a C++ patch naming functions as people write them is applied and rolled back", "[names][live]") {
  polus::testing::ChildProcess target({CXX_FIXTURE});
  REQUIRE(target.read_line() == "READY");
  const std::map<std::string, std::pair<std::string, std::string>> answers = {
      // command: before, after
      {"price 5", {"8", "50"}},          {"discount 100", {"99", "99"}},   {"discount2 200 10", {"180", "190"}},
      {"max 3 9", {"9", "1009"}},        {"maxl 3 9", {"9", "9"}},         {"double 7", {"14", "21"}},
      {"helper 1", {"101", "201"}},      {"lib 1", {"6", "7001"}},         {"tax 100 20", {"120", "120"}},
  };
  for (const auto& [command, expected] : answers) CHECK(target.ask(command) == expected.first);
  polus::apply_patch(target.pid(), CXX_NAMES_PATCH, options());
  for (const auto& [command, expected] : answers) {
    INFO(command);
    if (command.rfind("tax", 0) == 0) continue;  // checked below
    CHECK(target.ask(command) == expected.second);
  }
  CHECK(target.ask("tax 100 20") == "120");  // the patch's tax_v1 gives 120 too: cents + percent

  // status shows every name whole, in aligned columns.
  polus::testing::PolusctlRun status = polus::testing::run_polusctl({"status", std::to_string(target.pid())});
  INFO(status.out);
  CHECK(status.status == 0);
  const std::string long_name =
      "shop::regional_pricing_with_a_rather_long_namespace_name::RegionalPricer::price_with_regional_tax(int, int) const";
  CHECK_THAT(status.out, Catch::Contains(long_name) && Catch::Contains("shop::Pricer::price(int) const") &&
                             Catch::Contains(" price_v1 "));
  std::vector<size_t> arrows;
  std::istringstream lines(status.out);
  for (std::string line; std::getline(lines, line);) {
    if (auto arrow = line.find(" -> "); arrow != std::string::npos) arrows.push_back(arrow);
  }
  REQUIRE(arrows.size() == 7);
  for (size_t arrow : arrows) CHECK(arrow == arrows.front());

  polus::rollback_patch(target.pid(), options());
  for (const auto& [command, expected] : answers) CHECK(target.ask(command) == expected.first);
}

TEST_CASE("a stripped binary's debug file is found by its .gnu_debuglink, as gdb finds it", "[names][live]") {
  // symbols_fixture_linked: stripped, with a debuglink to "symbols_fixture.debug" and its CRC.
  // The build-id route is closed (an empty debug root), so only the debuglink can find it.
  TempDir dir;
  const fs::path app = dir.path() / "bin" / "app";
  fs::create_directories(app.parent_path());
  fs::copy_file(SYMBOLS_FIXTURE_LINKED, app);
  const fs::path empty_root = dir.path() / "empty-root";
  fs::create_directories(empty_root);

  auto helper_resolves = [&](const std::vector<std::string>& roots, const std::string& expected_file) {
    polus::testing::ChildProcess target({app.string()});
    uint64_t printed = 0;
    for (std::string line; (line = target.read_line()) != "ready";) {
      if (line.rfind("sym_a_helper ", 0) == 0) printed = std::stoull(line.substr(13), nullptr, 16);
    }
    polus::SymbolOptions options;
    options.debug_roots = roots;
    ProcessSymbols symbols = ProcessSymbols::load(target.pid(), options);
    INFO("debug file expected: " << expected_file);
    CHECK(symbols.main_executable().symbols_from == expected_file);
    if (expected_file == app.string()) {
      CHECK(code_of([&] { symbols.resolve("sym_a.c:helper"); }) == ErrorCode::kSymbolNotFound);
    } else {
      CHECK(symbols.resolve("sym_a.c:helper").address.address() == printed);
    }
  };

  SECTION("beside the binary") {
    fs::copy_file(SYMBOLS_FIXTURE_DEBUG, app.parent_path() / "symbols_fixture.debug");
    helper_resolves({empty_root.string()}, (app.parent_path() / "symbols_fixture.debug").string());
  }
  SECTION("in .debug/ beside the binary") {
    fs::create_directories(app.parent_path() / ".debug");
    fs::copy_file(SYMBOLS_FIXTURE_DEBUG, app.parent_path() / ".debug" / "symbols_fixture.debug");
    helper_resolves({empty_root.string()}, (app.parent_path() / ".debug" / "symbols_fixture.debug").string());
  }
  SECTION("under a debug root, at the binary's own directory") {
    const fs::path root = dir.path() / "usr-lib-debug";
    const fs::path debug = root / app.parent_path().relative_path() / "symbols_fixture.debug";
    fs::create_directories(debug.parent_path());
    fs::copy_file(SYMBOLS_FIXTURE_DEBUG, debug);
    helper_resolves({root.string()}, debug.string());
  }
  SECTION("a file of that name whose CRC differs is another build's, and is not used") {
    fs::copy_file(SYMBOLS_FIXTURE, app.parent_path() / "symbols_fixture.debug");  // has a .symtab, wrong CRC
    helper_resolves({empty_root.string()}, app.string());
  }
  SECTION("the CRC is the one objcopy recorded") {
    std::optional<uint32_t> crc = polus::file_crc32(SYMBOLS_FIXTURE_DEBUG);
    REQUIRE(crc);
    // The last 4 bytes of .gnu_debuglink: read them with objcopy's own tool chain's view.
    std::string command = "objcopy --dump-section .gnu_debuglink=" + (dir.path() / "link").string() + " " +
                          SYMBOLS_FIXTURE_LINKED;
    REQUIRE(std::system(command.c_str()) == 0);
    std::ifstream in(dir.path() / "link", std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    REQUIRE(bytes.size() >= 8);
    uint32_t recorded = 0;
    std::memcpy(&recorded, bytes.data() + bytes.size() - 4, 4);
    CHECK(recorded == *crc);
  }
}
