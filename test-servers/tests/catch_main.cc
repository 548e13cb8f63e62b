// Catch2 main for greeter_test, used only when injector/tests' polus_catch_main is absent.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
