# --- engine tests: prologue analysis, patch files, end-to-end against real targets ---------
add_executable(prologue_fixture fixtures/prologue_fixture.c)
target_compile_options(prologue_fixture PRIVATE -O2 -fomit-frame-pointer)
target_link_libraries(prologue_fixture PRIVATE pthread)

add_executable(busy_fixture fixtures/busy_fixture.c)
target_compile_options(busy_fixture PRIVATE -O2 -fomit-frame-pointer)
target_link_libraries(busy_fixture PRIVATE pthread dl)

add_executable(stale_fixture fixtures/stale_fixture.c)
target_compile_options(stale_fixture PRIVATE -O2 -fomit-frame-pointer)
target_link_libraries(stale_fixture PRIVATE pthread)

set(PROLOGUE_PATCH_DIR ${CMAKE_CURRENT_BINARY_DIR}/prologue-patches)
foreach(case tiny-padded tiny-tight loop-to-top spin busy stale)
  string(TOUPPER "CASE_${case}" define)
  string(REPLACE "-" "_" define ${define})
  add_library(prologue-${case} MODULE fixtures/prologue_patches.c)
  target_compile_definitions(prologue-${case} PRIVATE ${define})
  target_link_libraries(prologue-${case} PRIVATE polus_patch_format)
  set_target_properties(prologue-${case} PROPERTIES PREFIX "" LIBRARY_OUTPUT_DIRECTORY ${PROLOGUE_PATCH_DIR})
  list(APPEND PROLOGUE_PATCHES prologue-${case})
endforeach()

set(POLUS_TEST_DEFINITIONS
  POLUS_AGENT_PATH="$<TARGET_FILE:polus-agent>"
  POLUS_BUILD_DIR="${CMAKE_BINARY_DIR}"
  POLUSCTL_PATH="${CMAKE_BINARY_DIR}/tools/polusctl"
  PROLOGUE_FIXTURE="$<TARGET_FILE:prologue_fixture>"
  BUSY_FIXTURE="$<TARGET_FILE:busy_fixture>"
  PROLOGUE_PATCH_DIR="${PROLOGUE_PATCH_DIR}")

# A test of the engine against real targets: NAME.cc linked with the engine's internals, the
# Catch main and the greeter harness; DEPENDS what it runs (the agent, polusctl, fixtures).
function(polus_live_test name)
  cmake_parse_arguments(ARG "" "TIMEOUT" "DEPENDS" ${ARGN})
  add_executable(${name} ${name}.cc)
  target_link_libraries(${name} PRIVATE polus_injector_internal polus_catch_main polus_greeter_harness)
  target_compile_definitions(${name} PRIVATE ${POLUS_TEST_DEFINITIONS})
  add_dependencies(${name} ${ARG_DEPENDS})
  add_test(NAME ${name} COMMAND ${name} --durations yes)
  set_tests_properties(${name} PROPERTIES TIMEOUT ${ARG_TIMEOUT})
endfunction()

add_executable(prologue_test prologue_test.cc)
target_link_libraries(prologue_test PRIVATE polus_injector_internal polus_catch_main)
target_compile_definitions(prologue_test PRIVATE ${POLUS_TEST_DEFINITIONS})
add_dependencies(prologue_test polus-agent prologue_fixture ${PROLOGUE_PATCHES})
add_test(NAME prologue_test COMMAND prologue_test --durations yes)

add_executable(engine_test engine_test.cc)
target_link_libraries(engine_test PRIVATE polus_injector_internal polus_catch_main polus_greeter_harness)
target_compile_definitions(engine_test PRIVATE ${POLUS_TEST_DEFINITIONS})
add_dependencies(engine_test polus-agent polusctl busy_fixture ${PROLOGUE_PATCHES})
add_test(NAME engine_test COMMAND engine_test --durations yes)

add_executable(data_update_test data_update_test.cc)
target_link_libraries(data_update_test PRIVATE polus_injector_internal polus_catch_main polus_greeter_harness)
target_compile_definitions(data_update_test PRIVATE ${POLUS_TEST_DEFINITIONS})
add_dependencies(data_update_test polus-agent)
add_test(NAME data_update_test COMMAND data_update_test --durations yes)
# Each suite takes seconds; a hang should fail fast, and --durations shows (on failure) the
# last test case that finished, so the one that hung is the next in the file.
set_tests_properties(prologue_test engine_test data_update_test PROPERTIES TIMEOUT 120)

polus_live_test(seccomp_test TIMEOUT 120 DEPENDS polus-agent)

# --- patch_trust_test: refusing patch files others could write (real owners; needs root) ---
polus_live_test(patch_trust_test TIMEOUT 120 DEPENDS polus-agent polusctl)

# --- trusted_load_test: the target loads the bytes checked (sealed memfd); needs root ------
polus_live_test(trusted_load_test TIMEOUT 180 DEPENDS polus-agent polusctl)

# --- access_test: who may act on what, with real second and third users; needs root ---------
polus_live_test(access_test TIMEOUT 120 DEPENDS polus-agent polusctl)

# --- signature_audit_test: signed patches and the audit trail; needs root -------------------
polus_live_test(signature_audit_test TIMEOUT 120 DEPENDS polus-agent polusctl)

polus_live_test(kill_test TIMEOUT 240 DEPENDS polus-agent polusctl)

# --- sync_fault_test: patches whose sync functions fault in the target (issue: never the reason a target dies) ---
polus_live_test(sync_fault_test TIMEOUT 120 DEPENDS polus-agent polusctl)

# --- stale_frames_test: the lock-holding check from real frames (fixture, Debian's nginx in
# daemon mode, an idle bash; needs root for nginx) ---------------------------------------------
foreach(patch nginx_time_patch bash_echo_patch)
  add_library(${patch} MODULE fixtures/${patch}.c)
  target_link_libraries(${patch} PRIVATE polus_patch_format)
  set_target_properties(${patch} PROPERTIES PREFIX "" LIBRARY_OUTPUT_DIRECTORY ${PROLOGUE_PATCH_DIR})
endforeach()
add_executable(stale_frames_test stale_frames_test.cc)
target_link_libraries(stale_frames_test PRIVATE polus_injector_internal polus_catch_main polus_greeter_harness util)
target_compile_definitions(stale_frames_test PRIVATE ${POLUS_TEST_DEFINITIONS}
  STALE_FIXTURE="$<TARGET_FILE:stale_fixture>"
  NGINX_PATCH="$<TARGET_FILE:nginx_time_patch>"
  BASH_PATCH="$<TARGET_FILE:bash_echo_patch>")
add_dependencies(stale_frames_test polus-agent stale_fixture prologue-stale nginx_time_patch bash_echo_patch)
add_test(NAME stale_frames_test COMMAND stale_frames_test --durations yes)
set_tests_properties(stale_frames_test PROPERTIES TIMEOUT 120)

# --- call_original_test: an OLD function's resolved slot runs the version a patch replaces ---
polus_live_test(call_original_test TIMEOUT 120 DEPENDS polus-agent)
