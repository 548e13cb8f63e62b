// Smoke test of the greeter test targets: every server variant runs and speaks the
// protocol, signals are counted by the main thread only, the symbols the engine's tests
// rely on look as documented, and the patches are what their names say.
#include <dlfcn.h>
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <polus/patch.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "greeter_process.h"

using namespace std::chrono_literals;
using polus::testing::binary_path;
using polus::testing::Client;
using polus::testing::GreeterProcess;
using polus::testing::LoadGenerator;
using polus::testing::patch_path;

namespace {

// Runs a shell command (LC_ALL=C), returns its stdout+stderr.
std::string run(const std::string &command)
{
    std::string full = "LC_ALL=C " + command + " 2>&1";
    FILE *pipe = ::popen(full.c_str(), "r");
    if (pipe == nullptr)
        throw std::runtime_error("popen failed: " + command);
    std::string output;
    char buffer[4096];
    size_t n;
    while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0)
        output.append(buffer, n);
    ::pclose(pipe);
    return output;
}

// Lines of `text` matching `pattern` (std::regex_search).
std::vector<std::string> grep(const std::string &text, const std::string &pattern)
{
    std::regex re(pattern);
    std::vector<std::string> hits;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        if (std::regex_search(line, re))
            hits.push_back(line);
    }
    return hits;
}

bool exited_zero(int status) { return WIFEXITED(status) && WEXITSTATUS(status) == 0; }

// Polls STATS until `key` reaches `value` or 2 s pass; returns the last STATS.
std::map<std::string, long> stats_when(GreeterProcess &server, const std::string &key, long value)
{
    auto deadline = std::chrono::steady_clock::now() + 2s;
    for (;;) {
        auto stats = server.stats();
        if (stats[key] >= value || std::chrono::steady_clock::now() > deadline)
            return stats;
        std::this_thread::sleep_for(10ms);
    }
}

struct Variant {
    const char *binary;
    int version;
};
const Variant kVariants[] = {
    {"greeter-v0", 0},        {"greeter-v1", 1},           {"greeter-v0-stripped", 0},
    {"greeter-v0-static", 0}, {"greeter-v0-ambiguous", 0}, {"greeter-v0-cet", 0},
};

} // namespace

TEST_CASE("every greeter variant speaks the protocol", "[greeter]")
{
    for (const auto &variant : kVariants) {
        INFO(variant.binary);
        auto server = GreeterProcess::spawn(binary_path(variant.binary), 3);
        REQUIRE(server.alive());
        REQUIRE(server.port() > 0);

        Client client = server.connect();
        CHECK(client.request("HELLO alice") == polus::testing::expected_reply(variant.version, "alice"));
        CHECK(client.request("HELLO bob") == polus::testing::expected_reply(variant.version, "bob"));
        CHECK(client.request("HELLO x y\r") == polus::testing::expected_reply(variant.version, "x y"));
        CHECK(client.request("NOPE") == "ERR unknown command");
        CHECK(client.request("HELLO") == "ERR unknown command");

        auto stats = server.stats();
        CHECK(stats.size() == 7);
        CHECK(stats["requests"] == 3);
        CHECK(stats["threads"] == 5 + 3); // main, acceptor, epoll, ticker, pipe + 3 workers
        CHECK(stats["eintr"] == 0);
        CHECK(stats.count("sigusr1") == 1);
        CHECK(stats.count("sigusr2") == 1);
        CHECK(stats.count("sighup") == 1);
        CHECK(stats.count("sigrt") == 1);
        CHECK(server.ticks().count("short_sleeps") == 1);

        CHECK(client.request("QUIT") == "BYE");
        CHECK(client.closed_by_server());
        CHECK(server.request("HELLO carol") == polus::testing::expected_reply(variant.version, "carol"));

        int status = server.terminate();
        INFO(polus::testing::detail::describe_status(status));
        CHECK(exited_zero(status));
    }
}

TEST_CASE("signals are counted by the main thread and cause no EINTR elsewhere", "[greeter]")
{
    auto server = GreeterProcess::spawn(binary_path("greeter-v0"));
    for (int i = 1; i <= 3; i++) {
        // Standard signals do not queue: let each one be handled before the next.
        server.signal(SIGUSR1);
        std::this_thread::sleep_for(50ms);
        CHECK(stats_when(server, "sigusr1", i)["sigusr1"] == i);
    }
    for (int i = 0; i < 5; i++)
        server.signal(SIGRTMIN); // real-time signals queue: no spacing needed
    server.signal(SIGUSR2); // two different standard signals: both stay pending
    server.signal(SIGHUP);

    auto stats = stats_when(server, "sigrt", 5);
    CHECK(stats["sigusr1"] == 3);
    CHECK(stats["sigrt"] == 5);
    stats = stats_when(server, "sighup", 1);
    CHECK(stats["sigusr2"] == 1);
    CHECK(stats["sighup"] == 1);

    std::this_thread::sleep_for(1s); // idle: nothing may see EINTR
    stats = server.stats();
    CHECK(stats["eintr"] == 0);
    CHECK(stats["threads"] == 9);
    auto ticks = server.ticks();
    CHECK(ticks["ticks"] >= 4);
    CHECK(ticks["short_sleeps"] == 0);
    CHECK(server.alive());
    CHECK(exited_zero(server.terminate(SIGINT)));
}

TEST_CASE("SHUTDOWN makes the server exit 0", "[greeter]")
{
    auto server = GreeterProcess::spawn(binary_path("greeter-v0"), 1);
    CHECK(server.request("SHUTDOWN") == "BYE");
    auto status = server.wait_exit(2s);
    REQUIRE(status.has_value());
    CHECK(exited_zero(*status));
    CHECK_FALSE(server.alive());
}

TEST_CASE("spawn reports a server that cannot start", "[greeter]")
{
    CHECK_THROWS_WITH(GreeterProcess::spawn(binary_path("no-such-greeter")),
                      Catch::Contains("not executable"));
    CHECK_THROWS_WITH(GreeterProcess::spawn("/bin/true"), Catch::Contains("before printing 'PORT <n>'"));
    CHECK_THROWS_WITH(GreeterProcess::spawn("/bin/echo"), Catch::Contains("expected 'PORT <n>'"));
}

TEST_CASE("counter lines parse strictly", "[greeter]")
{
    auto counters = GreeterProcess::parse_counters("a=1 b=-2 c=30");
    CHECK(counters == std::map<std::string, long>{{"a", 1}, {"b", -2}, {"c", 30}});
    CHECK_THROWS(GreeterProcess::parse_counters("ERR unknown command"));
    CHECK_THROWS(GreeterProcess::parse_counters("a=1x"));
    CHECK_THROWS(GreeterProcess::parse_counters(""));
}

TEST_CASE("the load generator counts replies by text and version", "[greeter]")
{
    auto server = GreeterProcess::spawn(binary_path("greeter-v1"), 4);
    LoadGenerator load(server.port(), 3);
    load.start();
    REQUIRE(load.wait_for_replies(300));
    REQUIRE(load.wait_for_replies_per_client(20));
    CHECK(server.request("HELLO extra") == "Hi there, extra! (v1)"); // a 4th connection still served
    load.stop();

    CHECK(load.failures() == 0);
    CHECK(load.regressions() == 0);
    CHECK(load.count_version(0) == 0);
    CHECK(load.count_version(2) == 0);
    CHECK(load.count_version(1) == load.ok());
    auto counts = load.counts();
    CHECK(counts.size() == 3);
    long total = 0;
    for (auto &[text, n] : counts) {
        CHECK(std::regex_match(text, std::regex(R"(Hi there, load[0-2]! \(v1\))")));
        total += n;
    }
    CHECK(total == load.ok());
    CHECK(server.stats()["requests"] >= load.ok() + 1);

    // A dead server shows up as connection failures, not as a hang.
    LoadGenerator orphan(server.port(), 1, "orphan", 500ms);
    server.terminate();
    orphan.start();
    std::this_thread::sleep_for(100ms);
    orphan.stop();
    CHECK(orphan.connection_failures() > 0);
    CHECK(orphan.ok() == 0);
}

TEST_CASE("symbols look as the engine's tests expect", "[greeter][symbols]")
{
    const std::string clone = R"(format_reply\.)"; // format_reply.isra.0, .constprop.0, ...
    const std::string calls = R"(call +[0-9a-f]+ <format_reply>)";

    SECTION("v0, v1, cet: one global format_reply, in .symtab only")
    {
        for (const char *name : {"greeter-v0", "greeter-v1", "greeter-v0-cet"}) {
            INFO(name);
            auto symbols = run("nm " + binary_path(name));
            CHECK(grep(symbols, " T format_reply$").size() == 1);
            CHECK(grep(symbols, clone).empty());
            CHECK(grep(run("nm -D --defined-only " + binary_path(name)), "format_reply").empty());
            CHECK(grep(run("objdump -d --no-show-raw-insn " + binary_path(name)), calls).size() >= 1);
        }
    }

    SECTION("stripped: format_reply only in .dynsym")
    {
        auto path = binary_path("greeter-v0-stripped");
        CHECK(grep(run("readelf -S " + path), R"(\.symtab)").empty());
        CHECK(grep(run("readelf -S " + path), R"(\.dynsym)").size() == 1);
        CHECK(grep(run("nm -D --defined-only " + path), " T format_reply$").size() == 1);
        CHECK(grep(run("nm " + path), "no symbols").size() == 1);
    }

    SECTION("static: one local format_reply")
    {
        auto path = binary_path("greeter-v0-static");
        auto symbols = run("nm " + path);
        CHECK(grep(symbols, " t format_reply$").size() == 1);
        CHECK(grep(symbols, " T format_reply$").empty());
        CHECK(grep(symbols, clone).empty());
        CHECK(grep(run("objdump -d --no-show-raw-insn " + path), calls).size() >= 1);
    }

    SECTION("ambiguous: two local format_reply, after FILE symbols greeter.c and other_reply.c")
    {
        auto path = binary_path("greeter-v0-ambiguous");
        auto symbols = run("nm " + path);
        CHECK(grep(symbols, " t format_reply$").size() == 2);
        CHECK(grep(symbols, clone).empty());
        auto table = run("readelf -sW " + path);
        CHECK(grep(table, R"(FILE +LOCAL +DEFAULT +ABS greeter\.c$)").size() == 1);
        CHECK(grep(table, R"(FILE +LOCAL +DEFAULT +ABS other_reply\.c$)").size() == 1);
        CHECK(grep(run("objdump -d --no-show-raw-insn " + path), calls).size() >= 1);
    }

    SECTION("cet: format_reply starts with endbr64, the others do not")
    {
        auto first_instruction = [](const std::string &name) {
            auto lines = grep(run("objdump -d --no-show-raw-insn --disassemble=format_reply " + binary_path(name)),
                              R"(^ +[0-9a-f]+:\s)");
            return lines.empty() ? std::string() : lines.front();
        };
        CHECK(first_instruction("greeter-v0-cet").find("endbr64") != std::string::npos);
        auto plain = first_instruction("greeter-v0");
        CHECK_FALSE(plain.empty());
        CHECK(plain.find("endbr64") == std::string::npos);
    }
}

namespace {

const char *const kGoodPatches[] = {"greeter-v0-v1.so", "greeter-v1-v2.so", "greeter-v0-v1-static.so",
                                    "greeter-v0-v1-cxx.so"};
const char *const kBadWithDescriptor[] = {"bad-magic.so", "bad-missing-symbol.so", "bad-undefined.so",
                                          "bad-build-id.so", "bad-index.so"};

struct Loaded {
    explicit Loaded(const std::string &name) : handle(::dlopen(patch_path(name).c_str(), RTLD_NOW | RTLD_LOCAL))
    {
        if (handle == nullptr)
            error = ::dlerror();
    }
    ~Loaded()
    {
        if (handle != nullptr)
            ::dlclose(handle);
    }
    Loaded(const Loaded &) = delete;
    Loaded &operator=(const Loaded &) = delete;
    const polus_patch *descriptor() const
    {
        return handle == nullptr ? nullptr
                                 : static_cast<const polus_patch *>(::dlsym(handle, POLUS_PATCH_DESCRIPTOR_SYMBOL));
    }
    void *handle;
    std::string error;
};

using FormatReply = int (*)(char *, size_t, const char *);

std::string call_new_function(const polus_patch &patch)
{
    char out[128];
    auto fn = reinterpret_cast<FormatReply>(patch.functions[1].address);
    int n = fn(out, sizeof out, "bob");
    return std::string(out, static_cast<size_t>(n));
}

long file_size(const std::string &path)
{
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 ? static_cast<long>(st.st_size) : -1;
}

} // namespace

TEST_CASE("patch files exist and export the descriptor", "[greeter][patches]")
{
    for (const char *name : kGoodPatches) {
        INFO(name);
        auto path = patch_path(name);
        REQUIRE(file_size(path) > 0);
        CHECK(grep(run("nm -D --defined-only " + path), " polus_patch_descriptor$").size() == 1);
        auto needed = grep(run("readelf -dW " + path), R"(\(NEEDED\))");
        REQUIRE(needed.size() == 1);
        CHECK(needed[0].find("[libc.so.6]") != std::string::npos);
    }
    for (const char *name : kBadWithDescriptor) {
        INFO(name);
        CHECK(grep(run("nm -D --defined-only " + patch_path(name)), " polus_patch_descriptor$").size() == 1);
    }
    CHECK(grep(run("nm -D " + patch_path("bad-no-descriptor.so")), "polus_patch_descriptor").empty());
    CHECK(grep(run("nm -D " + patch_path("bad-undefined.so")), " U polus_test_symbol_that_does_not_exist$").size()
          == 1);

    CHECK(file_size(patch_path("bad-truncated.so")) == 200);
    std::ifstream truncated(patch_path("bad-truncated.so"), std::ios::binary);
    char magic[4] = {};
    truncated.read(magic, 4);
    CHECK(std::string(magic, 4) == "\x7f" "ELF");
    std::ifstream text(patch_path("not-an-elf.so"), std::ios::binary);
    text.read(magic, 4);
    CHECK(std::string(magic, 4) != "\x7f" "ELF");
    CHECK(file_size(patch_path("not-an-elf.so")) > 0);
}

TEST_CASE("patch descriptors say what the patch names promise", "[greeter][patches]")
{
    struct Expected {
        const char *file, *name, *old_function, *reply;
    };
    const Expected good[] = {
        {"greeter-v0-v1.so", "greeter-v1", "format_reply", "Hi there, bob! (v1)"},
        {"greeter-v1-v2.so", "greeter-v2", "format_reply", "Greetings, bob! (v2)"},
        {"greeter-v0-v1-static.so", "greeter-v1-static", "greeter.c:format_reply", "Hi there, bob! (v1)"},
        {"greeter-v0-v1-cxx.so", "greeter-v1-cxx", "format_reply", "Hi there, bob! (v1)"},
    };
    SECTION("good patches")
    {
      for (const auto &expected : good) {
        INFO(expected.file);
        Loaded patch(expected.file);
        INFO(patch.error);
        REQUIRE(patch.descriptor() != nullptr);
        const polus_patch &d = *patch.descriptor();
        CHECK(d.magic == POLUS_PATCH_MAGIC);
        CHECK(d.format_version == POLUS_PATCH_FORMAT_VERSION);
        CHECK(std::string(d.name) == expected.name);
        REQUIRE(d.function_count == 2);
        CHECK(d.functions[0].side == POLUS_OLD);
        CHECK(std::string(d.functions[0].name) == expected.old_function);
        CHECK(d.functions[0].address == nullptr);
        CHECK(d.functions[1].side == POLUS_NEW);
        REQUIRE(d.functions[1].address != nullptr);
        REQUIRE(d.mapping_count == 1);
        CHECK(d.mappings[0].kind == POLUS_MAP_FUNCTION);
        CHECK(d.mappings[0].from == 0);
        CHECK(d.mappings[0].to == 1);
        CHECK(d.data_count + d.callback_count + d.import_count + d.build_id_count == 0);
        CHECK(call_new_function(d) == expected.reply);
      }
    }

    SECTION("bad patches are bad for the reason in their name")
    {
        {
            Loaded patch("bad-no-descriptor.so");
            REQUIRE(patch.handle != nullptr);
            CHECK(patch.descriptor() == nullptr);
        }
        {
            Loaded patch("bad-magic.so");
            REQUIRE(patch.descriptor() != nullptr);
            CHECK(patch.descriptor()->magic != POLUS_PATCH_MAGIC);
            CHECK(patch.descriptor()->format_version == POLUS_PATCH_FORMAT_VERSION);
        }
        {
            Loaded patch("bad-missing-symbol.so");
            REQUIRE(patch.descriptor() != nullptr);
            CHECK(std::string(patch.descriptor()->functions[0].name) == "no_such_function_anywhere");
        }
        {
            Loaded patch("bad-undefined.so");
            CHECK(patch.handle == nullptr);
            CHECK(patch.error.find("undefined symbol: polus_test_symbol_that_does_not_exist") != std::string::npos);
        }
        {
            Loaded patch("bad-build-id.so");
            REQUIRE(patch.descriptor() != nullptr);
            REQUIRE(patch.descriptor()->build_id_count == 1);
            CHECK(patch.descriptor()->build_ids[0].object == nullptr);
            CHECK(std::string(patch.descriptor()->build_ids[0].hex) == "00112233445566778899aabbccddeeff00112233");
        }
        {
            Loaded patch("bad-index.so");
            REQUIRE(patch.descriptor() != nullptr);
            REQUIRE(patch.descriptor()->mapping_count == 1);
            CHECK(patch.descriptor()->mappings[0].to >= patch.descriptor()->function_count);
        }
        for (const char *name : {"bad-truncated.so", "not-an-elf.so"}) {
            Loaded patch(name);
            CHECK(patch.handle == nullptr);
        }
    }
}
