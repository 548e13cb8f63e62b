# --- names_test: names as people write them (C++ names, sonames, symlinks, debuglink) -------
# A library with a soname (libreach.so.1 -> libreach.so.1.5.4), a C++ target using it, a C++
# patch naming its functions in the demangled forms, and symbols_fixture stripped with a
# .gnu_debuglink to its debug file.
add_library(reach SHARED fixtures/reach_lib.c)
set_target_properties(reach PROPERTIES VERSION 1.5.4 SOVERSION 1)
target_compile_options(reach PRIVATE -O2)

add_executable(cxx_fixture fixtures/cxx_fixture.cc)
target_compile_options(cxx_fixture PRIVATE -O2 -g -fomit-frame-pointer -fcf-protection=none)
target_link_libraries(cxx_fixture PRIVATE reach)

add_library(cxx_names_patch MODULE fixtures/cxx_names_patch.cc)
target_link_libraries(cxx_names_patch PRIVATE polus_patch_format)
target_compile_options(cxx_names_patch PRIVATE -O2 -fno-exceptions -fno-rtti)
target_link_options(cxx_names_patch PRIVATE -Wl,-z,defs)
set_target_properties(cxx_names_patch PROPERTIES PREFIX "" LINKER_LANGUAGE C
  LIBRARY_OUTPUT_DIRECTORY ${PROLOGUE_PATCH_DIR})

set(SYMBOLS_FIXTURE_LINKED ${CMAKE_CURRENT_BINARY_DIR}/symbols_fixture_linked)
add_custom_command(OUTPUT ${SYMBOLS_FIXTURE_LINKED}
  COMMAND ${CMAKE_OBJCOPY} --strip-all --add-gnu-debuglink=${SYMBOLS_FIXTURE_DEBUG}
          $<TARGET_FILE:symbols_fixture> ${SYMBOLS_FIXTURE_LINKED}
  DEPENDS symbols_fixture ${SYMBOLS_FIXTURE_DEBUG}
  COMMENT "Stripping symbols_fixture with a .gnu_debuglink to symbols_fixture.debug")
add_custom_target(symbols_fixture_linked_target DEPENDS ${SYMBOLS_FIXTURE_LINKED})

add_executable(names_test names_test.cc)
target_link_libraries(names_test PRIVATE polus_injector_internal polus_catch_main polus_greeter_harness)
target_compile_definitions(names_test PRIVATE ${POLUS_TEST_DEFINITIONS}
  CXX_FIXTURE="$<TARGET_FILE:cxx_fixture>"
  CXX_NAMES_PATCH="$<TARGET_FILE:cxx_names_patch>"
  REACH_LIBRARY="$<TARGET_FILE:reach>"
  SYMBOLS_FIXTURE="$<TARGET_FILE:symbols_fixture>"
  SYMBOLS_FIXTURE_LINKED="${SYMBOLS_FIXTURE_LINKED}"
  SYMBOLS_FIXTURE_DEBUG="${SYMBOLS_FIXTURE_DEBUG}")
add_dependencies(names_test polus-agent polusctl cxx_fixture cxx_names_patch symbols_fixture_linked_target)
add_test(NAME names_test COMMAND names_test --durations yes)
set_tests_properties(names_test PROPERTIES TIMEOUT 120)

# --- copies_test: gcc's copies of a function and inlining, at apply ---------------------------
add_executable(clone_fixture fixtures/clone_fixture.c)
target_compile_options(clone_fixture PRIVATE -O2 -g -fipa-cp-clone -fomit-frame-pointer -fcf-protection=none)
set(CLONE_PATCHES)
foreach(case compute compute-and-copy twice reply)
  string(TOUPPER "CASE_${case}" define)
  string(REPLACE "-" "_" define ${define})
  add_library(clone-${case} MODULE fixtures/clone_patches.c)
  target_compile_definitions(clone-${case} PRIVATE ${define})
  target_link_libraries(clone-${case} PRIVATE polus_patch_format)
  set_target_properties(clone-${case} PROPERTIES PREFIX "" LIBRARY_OUTPUT_DIRECTORY ${PROLOGUE_PATCH_DIR})
  list(APPEND CLONE_PATCHES clone-${case})
endforeach()
add_executable(copies_test copies_test.cc)
target_link_libraries(copies_test PRIVATE polus_injector_internal polus_catch_main polus_greeter_harness)
target_compile_definitions(copies_test PRIVATE ${POLUS_TEST_DEFINITIONS} CLONE_FIXTURE="$<TARGET_FILE:clone_fixture>")
add_dependencies(copies_test polus-agent polusctl clone_fixture ${CLONE_PATCHES})
add_test(NAME copies_test COMMAND copies_test --durations yes)
set_tests_properties(copies_test PROPERTIES TIMEOUT 120)
