// polus-mkpatch end to end: patches generated from the test servers' sources and fixes, applied
// with the real polusctl to running servers under load, checked for answers and lost data; a
// four-version history applied in turn and checked against freshly started processes of each
// version; and the changes the generator must refuse or leave to the patch's author.
#include <catch2/catch.hpp>
#include <spawn.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <thread>

#include "child_process.h"
#include "greeter_process.h"
#include "polusctl_run.h"

using namespace std::chrono_literals;
using polus::testing::binary_path;
using polus::testing::ChildProcess;
using polus::testing::run_polusctl;

namespace {

const std::string kSource = POLUS_SOURCE_DIR;
const std::string kServers = kSource + "/test-servers";
// The flags CMake builds the test servers with (test-servers/CMakeLists.txt): the generator
// rebuilds the sources the same way, and binds the patch to the CMake-built binary (--target).
const std::string kServerFlags = "-O2 -g -fomit-frame-pointer -pthread -fno-ipa-icf -fcf-protection=none";

struct Generated {
  int status = -1;
  std::string dir;
  std::string report;
  std::string patch(const std::string& name) const { return dir + "/" + name + ".so"; }
};

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

/// Runs polus-mkpatch with `args` plus --out WORK/<out>; its output goes to WORK/<out>.log.
Generated mkpatch(const std::string& out, std::vector<std::string> args) {
  Generated g;
  g.dir = std::string(MKPATCH_WORK_DIR) + "/" + out;
  std::filesystem::remove_all(g.dir);
  std::filesystem::create_directories(MKPATCH_WORK_DIR);
  args.insert(args.begin(), MKPATCH_PATH);
  args.push_back("--out");
  args.push_back(g.dir);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::string log = g.dir + ".log";
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  pid_t pid = -1;
  REQUIRE(posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ) == 0);
  posix_spawn_file_actions_destroy(&actions);
  int status = 0;
  waitpid(pid, &status, 0);
  g.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  g.report = slurp(g.dir + "/report.txt");
  if (g.status != 0) UNSCOPED_INFO("polus-mkpatch output:\n" << slurp(log) << "\nreport:\n" << g.report);
  return g;
}

/// "a=1 b=2" -> {a: 1, b: 2}
std::map<std::string, long> fields(const std::string& line) {
  std::map<std::string, long> out;
  std::istringstream in(line);
  for (std::string word; in >> word;) {
    auto eq = word.find('=');
    if (eq != std::string::npos) out[word.substr(0, eq)] = std::stol(word.substr(eq + 1));
  }
  return out;
}

/// The shape of an answer: its words with every number replaced by N.
std::string shape(const std::string& line) { return std::regex_replace(line, std::regex("-?[0-9]+"), "N"); }

std::map<std::string, long> counter_figures(ChildProcess& target, std::string* report_line = nullptr) {
  REQUIRE(target.ask("pause") == "PAUSED");
  std::string report = target.ask("report");
  auto figures = fields(report);
  for (auto& [k, v] : fields(target.ask("counts"))) figures[k] = v;
  REQUIRE(target.ask("resume") == "RESUMED");
  if (report_line) *report_line = report;
  return figures;
}

}  // namespace

TEST_CASE("the Fig. 2 counter's v0 -> v1 type change, generated from source, loses no increment", "[mkpatch][data]") {
  Generated g = mkpatch("counter", {"--old", kServers + "/fig2", "--fix", kServers + "/fixes/counter-v0-v1.diff",
                                    "--build", "cc " + kServerFlags + " -o counter-v0 counter.c",
                                    "--target", binary_path("counter-v0"), "--name", "counter-v1-generated"});
  REQUIRE(g.status == 0);
  CHECK(g.report.find("ab                                 -> ab_v1") != std::string::npos);
  CHECK(g.report.find("added     foo") != std::string::npos);  // its parameter's type changed
  std::string source = slurp(g.dir + "/patch.c");
  CHECK(source.find("dst->a.i = src->a.i;") != std::string::npos);  // synced both ways, by member name
  CHECK(source.find("struct A_v1 {") != std::string::npos);

  ChildProcess target({binary_path("counter-v0")});
  REQUIRE(target.read_line() == "READY");
  std::this_thread::sleep_for(100ms);  // eight threads deep in bar/foo
  auto applied = run_polusctl({"apply", std::to_string(target.pid()), g.patch("counter-v1-generated")});
  INFO(applied.out << applied.err);
  REQUIRE(applied.status == 0);
  std::this_thread::sleep_for(200ms);
  auto f = counter_figures(target);
  CHECK(f.at("version") == 1);
  CHECK(f.at("i") == f.at("calls"));  // every increment, old code's and new code's
  CHECK(f.at("j") == f.at("v1_calls"));
  CHECK(f.at("v0_calls") + f.at("v1_calls") == f.at("calls"));
  CHECK(f.at("v1_calls") > 0);
  CHECK(f.at("violations") == 0);

  auto back = run_polusctl({"rollback", std::to_string(target.pid())});
  INFO(back.out << back.err);
  REQUIRE(back.status == 0);
  std::this_thread::sleep_for(100ms);
  auto r = counter_figures(target);
  CHECK(r.at("version") == 0);
  CHECK(r.at("i") == r.at("calls"));  // the increments new code made came back to ab
  CHECK(r.at("violations") == 0);
}

TEST_CASE("the greeter's reply fix, generated from source, switches a loaded server with no failed request",
          "[mkpatch][greeter]") {
  Generated g = mkpatch("greeter-code", {"--old", kServers + "/greeter", "--fix", kServers + "/fixes/greeter-v0-v1.diff",
                                         "--build", "cc " + kServerFlags + " -DGREETER_VERSION=0 -o greeter-v0 greeter.c reply.c",
                                         "--target", binary_path("greeter-v0"), "--name", "greeter-v1-generated"});
  REQUIRE(g.status == 0);
  CHECK(g.report.find("replaced  format_reply") != std::string::npos);
  CHECK(g.report.find("Not verified") != std::string::npos);  // the CMake binary is not the rebuilt one: said so

  auto server = polus::testing::GreeterProcess::spawn(binary_path("greeter-v0"), 6);
  polus::testing::LoadGenerator load(server.port(), 3);
  load.start();
  REQUIRE(load.wait_for_replies(300));
  auto applied = run_polusctl({"apply", std::to_string(server.pid()), g.patch("greeter-v1-generated")});
  INFO(applied.out << applied.err);
  REQUIRE(applied.status == 0);
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (load.count_version(1) < 300 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(10ms);
  CHECK(server.request("HELLO bob") == polus::testing::expected_reply(1, "bob"));
  auto back = run_polusctl({"rollback", std::to_string(server.pid())});
  REQUIRE(back.status == 0);
  CHECK(server.request("HELLO bob") == polus::testing::expected_reply(0, "bob"));
  load.stop();
  CHECK(load.count_version(1) >= 300);
  CHECK(load.failures() == 0);
  CHECK(load.malformed() == 0);
}

TEST_CASE("the greeter's data change, generated from source, keeps the request count exact both ways",
          "[mkpatch][greeter][data]") {
  Generated g = mkpatch("greeter-data", {"--old", kServers + "/greeter", "--fix", kServers + "/fixes/greeter-data.diff",
                                         "--build", "cc " + kServerFlags + " -DGREETER_VERSION=0 -o greeter-v0 greeter.c reply.c",
                                         "--target", binary_path("greeter-v0"), "--name", "greeter-data-generated"});
  REQUIRE(g.status == 0);
  CHECK(g.report.find("requests_count                     -> requests_count_v1") != std::string::npos);
  // handle_line, whose STATS format changed, is inlined into serve_connection: the caller changed.
  CHECK(g.report.find("replaced  greeter.c:serve_connection") != std::string::npos);

  auto server = polus::testing::GreeterProcess::spawn(binary_path("greeter-v0"), 6);
  polus::testing::LoadGenerator load(server.port(), 3);
  load.start();
  REQUIRE(load.wait_for_replies(200));
  // The load's connections stay inside old serve_connection, which uses the counter: the update
  // syncs (both counters kept equal) until they close.
  auto applied = run_polusctl({"apply", std::to_string(server.pid()), g.patch("greeter-data-generated"),
                               "--sync-timeout", "300"});
  INFO(applied.out << applied.err);
  REQUIRE(applied.status == 0);
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (load.count_version(1) < 300 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(10ms);
  CHECK(load.count_version(1) >= 300);
  load.stop();
  long served = load.ok();
  // A new connection is served by new code (the counter's new copy, printed with %lu).
  CHECK(server.request("HELLO carol") == polus::testing::expected_reply(1, "carol"));
  CHECK(server.stats().at("requests") == served + 1);
  auto back = run_polusctl({"rollback", std::to_string(server.pid()), "--sync-timeout", "2000"});
  INFO(back.out << back.err);
  REQUIRE(back.status == 0);
  CHECK(server.request("HELLO dave") == polus::testing::expected_reply(0, "dave"));
  CHECK(server.stats().at("requests") == served + 2);  // nothing lost going back either
  CHECK(load.failures() == 0);
}

TEST_CASE("a four-version history generated in turn, each patch checked against a fresh process of its version",
          "[mkpatch][history]") {
  const std::string history = kServers + "/history";
  const std::string build = "cc -O2 -pthread -o kv kv.c";
  const std::string versions = std::string(MKPATCH_WORK_DIR) + "/kv-versions.json";
  std::filesystem::remove(versions);

  // v0 -> v1 changes heap data: without the author's conversion the patch must not build.
  Generated incomplete = mkpatch("kv-v1-incomplete", {"--old", history + "/v0", "--new", history + "/v1", "--build",
                                                       build, "--name", "kv-v1"});
  CHECK(incomplete.status == 5);
  CHECK_FALSE(std::filesystem::exists(incomplete.patch("kv-v1")));
  CHECK(slurp(incomplete.dir + "/patch.c").find("#error") != std::string::npos);
  CHECK(std::filesystem::exists(incomplete.dir + "/author-skeleton.c"));

  std::vector<Generated> steps;
  for (int v = 1; v <= 3; v++) {
    std::vector<std::string> args = {"--old", history + "/v" + std::to_string(v - 1), "--new",
                                     history + "/v" + std::to_string(v), "--build", build, "--versions", versions,
                                     "--name", "kv-v" + std::to_string(v)};
    if (v == 1) args.insert(args.end(), {"--author", history + "/author-v1.c"});
    steps.push_back(mkpatch("kv-v" + std::to_string(v), args));
    REQUIRE(steps.back().status == 0);
  }
  CHECK(steps[0].report.find("table                              -> table_v1") != std::string::npos);
  CHECK(steps[1].report.find("added     score                               score_v2") != std::string::npos);
  CHECK(steps[2].report.find("ops_by_thread_v3") != std::string::npos);

  // The running process: v0 as the generator built it (the patches are bound to its build-id).
  ChildProcess kv({steps[0].dir + "/old-kv"});
  REQUIRE(kv.read_line() == "READY");
  auto check_consistent = [&](ChildProcess& p) {
    REQUIRE(p.ask("pause") == "PAUSED");
    auto s = fields(p.ask("sum"));
    REQUIRE(p.ask("resume") == "RESUMED");
    CHECK(s.at("sum") == s.at("puts"));  // every worker increment is in the list and in stats
    CHECK(s.at("puts") == s.at("ops"));
    return s.at("ops");
  };
  long ops = check_consistent(kv);
  for (int v = 1; v <= 3; v++) {
    if (v == 2) REQUIRE(kv.ask("nap") == "NAPPING");  // a thread sleeps in nap_v1 while v2 replaces nap
    auto applied = run_polusctl({"apply", std::to_string(kv.pid()), steps[v - 1].patch("kv-v" + std::to_string(v))});
    INFO("v" << v << ": " << applied.out << applied.err);
    REQUIRE(applied.status == 0);
    if (v == 2) {
      CHECK(kv.ask("wake") == "woke 1");  // it finished in the version it was in
      REQUIRE(kv.ask("nap") == "NAPPING");
      CHECK(kv.ask("wake") == "woke 2");  // and the next call runs the new one
    }
    std::this_thread::sleep_for(100ms);
    ChildProcess fresh({steps[v - 1].dir + "/new-kv"});
    REQUIRE(fresh.read_line() == "READY");
    for (std::string cmd : {"version", "get 3", "get 99", "stats"}) {
      std::string patched = kv.ask(cmd), native = fresh.ask(cmd);
      INFO("v" << v << " " << cmd << ": patched '" << patched << "', fresh '" << native << "'");
      if (cmd == "version" && v < 3) CHECK(patched == native);
      else CHECK(shape(patched) == shape(native));
    }
    if (v >= 2) {  // score(e, 2): twice the value, in the patched process as in the fresh one
      auto got = fields(kv.ask("get 5"));
      CHECK(got.at("score") == 2 * got.at("value"));
    }
    long now = check_consistent(kv);
    CHECK(now > ops);
    ops = now;
    REQUIRE(kv.ask("nap") == "NAPPING");
    CHECK(kv.ask("wake") == "woke " + std::to_string(v));
  }
  for (int v = 3; v >= 1; v--) {
    auto back = run_polusctl({"rollback", std::to_string(kv.pid())});
    INFO("rollback of v" << v << ": " << back.out << back.err);
    REQUIRE(back.status == 0);
    CHECK(kv.ask("version") == "version=" + std::to_string(v - 1));
    check_consistent(kv);
  }
}

TEST_CASE("changes the generator cannot carry are refused with the reason", "[mkpatch][refused]") {
  const std::string cases = kServers + "/mkpatch-cases";
  const std::string build = "cc -O2 -c prog.c && c++ -O2 -c helper.cc && c++ -o prog prog.o helper.o";
  Generated cxx = mkpatch("cxx", {"--old", cases + "/mixed", "--fix", cases + "/cxx-change.diff", "--build", build});
  CHECK(cxx.status == 4);
  CHECK(cxx.report.find("C++ translation unit helper.cc") != std::string::npos);
  Generated tls = mkpatch("tls", {"--old", cases + "/mixed", "--fix", cases + "/tls-use.diff", "--build", build});
  CHECK(tls.status == 4);
  CHECK(tls.report.find("thread-local variable prog.c:tally_here") != std::string::npos);
}

TEST_CASE("a type change it cannot match is left to the author: no build until written", "[mkpatch][author]") {
  const std::string cases = kServers + "/mkpatch-cases";
  const std::string build = "cc -O2 -c prog.c && c++ -O2 -c helper.cc && c++ -o prog prog.o helper.o";
  std::vector<std::string> args = {"--old", cases + "/mixed", "--fix", cases + "/budget-struct.diff", "--build", build,
                                   "--name", "budget"};
  Generated missing = mkpatch("budget-incomplete", args);
  CHECK(missing.status == 5);
  CHECK(missing.report.find("cannot copy budget (long int -> struct budget)") != std::string::npos);
  CHECK(slurp(missing.dir + "/patch.c").find("#error \"polus-mkpatch: budget") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(missing.patch("budget")));
  args.insert(args.end(), {"--author", cases + "/budget-author.c"});
  Generated written = mkpatch("budget", args);
  CHECK(written.status == 0);
  CHECK(std::filesystem::exists(written.patch("budget")));
}

// What a real series (Debian's redis CVE fixes, bench/redis-cve-series.sh) needed, on a small
// program: builds reused from one patch to the next, assertions whose __LINE__ a fix moved not
// counted as changes, the author's own pre-update hook, and a layout change of a global main()
// reads refused.
TEST_CASE("a series with reused builds: moved __LINE__ is no change, each patch applies on the last",
          "[mkpatch][series]") {
  const std::string cases = kServers + "/mkpatch-cases";
  const std::string work = std::string(MKPATCH_WORK_DIR) + "/series";
  std::filesystem::remove_all(work);
  std::filesystem::create_directories(work + "/trees");
  // The trees a series walks: patch N's old tree is patch N-1's fixed one.
  const std::string tree0 = work + "/trees/0", tree1 = work + "/trees/1";
  std::filesystem::copy(cases + "/series", tree0);
  std::filesystem::copy(cases + "/series", tree1);
  REQUIRE(std::system(("patch -s -p1 -d " + tree1 + " < " + cases + "/series-1.diff").c_str()) == 0);
  const std::string build = "cc -O2 -o prog prog.c";
  auto series_args = [&](const std::string& old, const std::string& fix, const std::string& name) {
    return std::vector<std::string>{"--old", old, "--fix", cases + "/" + fix, "--build", build, "--name", name,
                                    "--versions", work + "/versions.json", "--workdir", work + "/builds",
                                    "--reuse-builds"};
  };
  Generated one = mkpatch("series-1", series_args(tree0, "series-1.diff", "series-1"));
  REQUIRE(one.status == 0);
  CHECK(one.report.find("replaced  clamp ") != std::string::npos);
  CHECK(one.report.find("unchanged but for line numbers (__LINE__ the fix shifted; not replaced): answer, twice") !=
        std::string::npos);
  CHECK(one.report.find("replaced  twice") == std::string::npos);
  // Patch 2 brings a new global; its author's pre-update hook sets it at the commit.
  auto args2 = series_args(tree1, "series-2.diff", "series-2");
  args2.insert(args2.end(), {"--author", cases + "/series-2-author.c"});
  Generated two = mkpatch("series-2", args2);
  REQUIRE(two.status == 0);
  CHECK(two.report.find("old build reused from the previous run") != std::string::npos);
  CHECK(two.report.find("new tree built incrementally") != std::string::npos);
  CHECK(two.report.find("replaced  twice ") != std::string::npos);
  CHECK(two.report.find("new       factor -> factor_v2") != std::string::npos);

  // Both applied to the program both are bound to (the first patch's rebuilt old binary).
  ChildProcess prog({one.dir + "/old-prog"});
  REQUIRE(prog.read_line() == "READY");
  auto ask = [&](long n) {
    prog.send(std::to_string(n));
    return prog.read_line();
  };
  CHECK(ask(50) == "20");
  CHECK(ask(5) == "10");
  auto a1 = run_polusctl({"apply", std::to_string(prog.pid()), one.patch("series-1")});
  INFO(a1.out << a1.err);
  REQUIRE(a1.status == 0);
  CHECK(ask(50) == "18");  // clamped below the limit now
  CHECK(ask(5) == "10");
  auto a2 = run_polusctl({"apply", std::to_string(prog.pid()), two.patch("series-2")});
  INFO(a2.out << a2.err);
  REQUIRE(a2.status == 0);
  CHECK(ask(50) == "36");  // 4 * 9: the hook's factor, not the initial 3
  CHECK(ask(5) == "20");
  REQUIRE(run_polusctl({"rollback", std::to_string(prog.pid())}).status == 0);
  CHECK(ask(50) == "18");
  REQUIRE(run_polusctl({"rollback", std::to_string(prog.pid())}).status == 0);
  CHECK(ask(50) == "20");
  CHECK(ask(5) == "10");

  // A member added to the global main() reads: main never returns, so the update could never end.
  Generated layout = mkpatch("series-layout", {"--old", tree0, "--fix", cases + "/series-layout.diff",
                                               "--build", build});
  CHECK(layout.status == 4);
  CHECK(layout.report.find("the fix changes the layout of config (8 bytes, now 16), which main() uses") !=
        std::string::npos);
}
