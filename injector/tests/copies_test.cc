// Copies gcc made of a function (.constprop, .isra, .part) and inlining: a patch that cannot
// reach all the code it replaces is refused, naming what it misses, or applied with --force;
// a name gcc kept only as copies says what it found. Against clone_fixture, a real process.
#include <catch2/catch.hpp>

#include <algorithm>

#include "binary/inlined_calls.h"
#include "binary/symbols.h"
#include "child_process.h"
#include "polus/engine.h"
#include "polus/error.h"
#include "polusctl_run.h"

using namespace std::chrono_literals;
using polus::ErrorCode;
using polus::SymbolKind;

namespace {

polus::EngineOptions options() {
  polus::EngineOptions o;
  o.agent_path = POLUS_AGENT_PATH;
  o.timeout = 10s;
  return o;
}

std::string patch(const std::string& name) { return std::string(PROLOGUE_PATCH_DIR) + "/clone-" + name + ".so"; }

/// sum over i < x of i * mode: what compute(x, mode) and the copies answer before a patch.
int sum(int x, int mode) {
  int r = 0;
  for (int i = 0; i < x; i++) r += i * mode;
  return r;
}

}  // namespace

TEST_CASE("the fixture has the copies and the inlined calls the tests rely on", "[copies][live]") {
  polus::testing::ChildProcess target({CLONE_FIXTURE});
  REQUIRE(target.read_line() == "READY");
  polus::ProcessSymbols symbols = polus::ProcessSymbols::load(target.pid());
  polus::Symbol compute = symbols.resolve("compute", SymbolKind::kFunction);
  auto clones = symbols.clones_of(compute);
  REQUIRE(clones.size() == 1);
  CHECK(clones[0].first.name == "compute.constprop.0");
  CHECK(clones[0].second.kind == polus::CloneKind::kSpecialised);

  polus::Symbol twice = symbols.resolve("twice", SymbolKind::kFunction);
  polus::InliningReport report = polus::find_inlined_calls(symbols, symbols.main_executable(), twice);
  CHECK(report.has_dwarf);
  // use_twice inlines it, and main inlines use_twice (so its copy of twice with it).
  std::vector<std::string> callers;
  for (const polus::InlinedCall& call : report.callers) {
    callers.push_back(call.caller);
    CHECK(call.caller_address == symbols.resolve(call.caller).address.address());
  }
  std::sort(callers.begin(), callers.end());
  CHECK(callers == std::vector<std::string>{"main", "use_twice"});
  // compute is called, never inlined: nothing reported.
  CHECK(polus::find_inlined_calls(symbols, symbols.main_executable(), compute).callers.empty());
}

TEST_CASE("a name gcc kept only as copies says what it found", "[copies][live]") {
  polus::testing::ChildProcess target({CLONE_FIXTURE});
  REQUIRE(target.read_line() == "READY");
  polus::ProcessSymbols symbols = polus::ProcessSymbols::load(target.pid());
  for (const auto& [name, copy, what] : {std::tuple{"make_reply", "make_reply.constprop.0", "specialised"},
                                        std::tuple{"part_me", "part_me.part.0", "partial inlining"}}) {
    try {
      symbols.resolve(name, SymbolKind::kFunction);
      FAIL(name << " resolved");
    } catch (const polus::Error& e) {
      INFO(e.what());
      CHECK(e.code() == ErrorCode::kSymbolNotFound);
      CHECK_THAT(e.what(), Catch::Contains(copy) && Catch::Contains(what) && Catch::Contains("no symbol of its own"));
    }
  }
  // Through polusctl: the same words reach the operator, with the not-found exit status.
  polus::testing::PolusctlRun run = polus::testing::run_polusctl({"apply", std::to_string(target.pid()), patch("reply")});
  CHECK(run.status == 6);
  CHECK_THAT(run.err, Catch::Contains("make_reply.constprop.0"));
  CHECK(target.ask("reply 4") == std::to_string(sum(4, 7) - sum(4, 7)));
}

TEST_CASE("a patch that misses a copy of its function is refused, or applied with --force", "[copies][live]") {
  polus::testing::ChildProcess target({CLONE_FIXTURE});
  REQUIRE(target.read_line() == "READY");
  CHECK(target.ask("compute 4 5") == std::to_string(sum(4, 5)));
  CHECK(target.ask("compute3 4") == std::to_string(sum(4, 3)));
  try {
    polus::apply_patch(target.pid(), patch("compute"), options());
    FAIL("applied");
  } catch (const polus::Error& e) {
    INFO(e.what());
    CHECK(e.code() == ErrorCode::kUnsafeToPatch);
    CHECK_THAT(e.what(), Catch::Contains("compute.constprop.0") && Catch::Contains("--force") &&
                             Catch::Contains("target is unchanged"));
  }
  CHECK(polus::read_status(target.pid()).patches.empty());

  // --force: the calls through the entry change, those reaching the copy do not.
  polus::EngineOptions forced = options();
  forced.force = true;
  polus::apply_patch(target.pid(), patch("compute"), forced);
  CHECK(target.ask("compute 4 5") == "4005");
  CHECK(target.ask("compute3 4") == std::to_string(sum(4, 3)));
  polus::rollback_patch(target.pid(), options());

  // A patch that replaces the copy too (with a function of the copy's parameters) reaches both.
  polus::apply_patch(target.pid(), patch("compute-and-copy"), options());
  CHECK(target.ask("compute 4 5") == "4005");
  CHECK(target.ask("compute3 4") == "4003");
  polus::rollback_patch(target.pid(), options());
  CHECK(target.ask("compute3 4") == std::to_string(sum(4, 3)));
}

TEST_CASE("a patch of a function inlined into callers is refused naming them, or applied with --force",
          "[copies][live]") {
  polus::testing::ChildProcess target({CLONE_FIXTURE});
  REQUIRE(target.read_line() == "READY");
  CHECK(target.ask("twice 5") == "1011");
  CHECK(target.ask("twiceptr 5") == "11");
  // The dry run says so too, without touching the process.
  polus::testing::PolusctlRun checked = polus::testing::run_polusctl({"check", std::to_string(target.pid()), patch("twice")});
  CHECK(checked.status == 11);
  CHECK_THAT(checked.err, Catch::Contains("twice is inlined into 2 function(s)") && Catch::Contains("--force"));
  CHECK(polus::testing::run_polusctl({"check", std::to_string(target.pid()), patch("twice"), "--force"}).status == 0);
  polus::testing::PolusctlRun run = polus::testing::run_polusctl({"apply", std::to_string(target.pid()), patch("twice")});
  INFO(run.err);
  CHECK(run.status == 11);  // unsafe-to-patch
  CHECK_THAT(run.err, Catch::Contains("twice is inlined into 2 function(s)") && Catch::Contains("use_twice at 0x") &&
                          Catch::Contains("main at 0x") && Catch::Contains("--force"));
  CHECK(polus::read_status(target.pid()).patches.empty());

  run = polus::testing::run_polusctl({"apply", std::to_string(target.pid()), patch("twice"), "--force"});
  CHECK(run.status == 0);
  CHECK(target.ask("twiceptr 5") == "15");  // the out-of-line copy, reached through its entry
  CHECK(target.ask("twice 5") == "1011");   // use_twice's own copy: unchanged, as the refusal said
  polus::rollback_patch(target.pid(), options());
  CHECK(target.ask("twiceptr 5") == "11");
}
