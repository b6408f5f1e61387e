# The libFuzzer build (EMBER_FUZZ=ON): everything is compiled with
# -fsanitize=fuzzer-no-link,address,undefined (coverage for libFuzzer, ASan,
# UBSan that aborts), and each spec/fuzz/fuzz_NAME.c becomes an executable
# build-dir/fuzz/fuzz_NAME linked with libFuzzer's main. scripts/fuzz builds
# and runs them. Use a build directory of its own:
#
#   cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DEMBER_FUZZ=ON -DEMBER_CUDA=OFF
#
# Included from CMakeLists.txt before any target is made, so the flags reach
# every target; the fuzz executables are added at the end of the directory
# (cmake_language DEFER), once ember_core and ember_bindings exist.

if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
  message(FATAL_ERROR "EMBER_FUZZ needs clang (libFuzzer): configure with "
                      "-DCMAKE_C_COMPILER=clang, not ${CMAKE_C_COMPILER_ID}")
endif()
if(EMBER_SANITIZE)
  message(FATAL_ERROR "EMBER_FUZZ brings its own sanitizers (address and "
                      "undefined): leave EMBER_SANITIZE empty")
endif()
if(EMBER_STATIC_DEPS)
  message(FATAL_ERROR "EMBER_FUZZ does not go with EMBER_STATIC_DEPS")
endif()

set(EMBER_FUZZ_SANITIZERS -fsanitize=address,undefined
    -fno-sanitize-recover=undefined)
add_compile_options("$<$<COMPILE_LANGUAGE:C>:-fsanitize=fuzzer-no-link;${EMBER_FUZZ_SANITIZERS};-fno-omit-frame-pointer>")
add_link_options(${EMBER_FUZZ_SANITIZERS})

# Targets that decode Lua values link the Lua bindings and liblua too.
set(EMBER_FUZZ_TARGETS store handshake frame)
set(EMBER_FUZZ_LUA_TARGETS body)

function(ember_add_fuzz_targets)
  foreach(name IN LISTS EMBER_FUZZ_TARGETS EMBER_FUZZ_LUA_TARGETS)
    set(source ${CMAKE_SOURCE_DIR}/spec/fuzz/fuzz_${name}.c)
    if(NOT EXISTS ${source})
      continue()
    endif()
    if(name IN_LIST EMBER_FUZZ_LUA_TARGETS)
      add_executable(fuzz_${name} ${source} $<TARGET_OBJECTS:ember_bindings>)
      target_include_directories(fuzz_${name} PRIVATE ${LUA_INCLUDE_DIRS})
      target_link_libraries(fuzz_${name} PRIVATE ${EMBER_DEP_LUA})
    else()
      add_executable(fuzz_${name} ${source})
    endif()
    target_include_directories(fuzz_${name} PRIVATE core spec/fuzz)
    target_compile_options(fuzz_${name} PRIVATE ${EMBER_WARNINGS})
    target_link_libraries(fuzz_${name} PRIVATE ember_core)
    target_link_options(fuzz_${name} PRIVATE -fsanitize=fuzzer)
    set_target_properties(fuzz_${name} PROPERTIES
      RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/fuzz)
    list(APPEND built fuzz_${name})
  endforeach()
  # The seed corpus generator (spec/fuzz/make_corpus.c): a plain program.
  add_executable(fuzz_make_corpus ${CMAKE_SOURCE_DIR}/spec/fuzz/make_corpus.c
    $<TARGET_OBJECTS:ember_bindings>)
  target_include_directories(fuzz_make_corpus PRIVATE core spec/fuzz
    ${LUA_INCLUDE_DIRS})
  target_compile_options(fuzz_make_corpus PRIVATE ${EMBER_WARNINGS})
  target_link_libraries(fuzz_make_corpus PRIVATE ember_core ${EMBER_DEP_LUA})
  set_target_properties(fuzz_make_corpus PROPERTIES
    RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/fuzz)
  add_custom_target(fuzz_targets DEPENDS ${built} fuzz_make_corpus)
endfunction()

cmake_language(DEFER CALL ember_add_fuzz_targets)
