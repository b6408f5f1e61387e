#!/usr/bin/env bash
# The executable built with EMBER_STATIC_DEPS=ON needs none of ember's Debian
# packages at run time: no liblua, libuv, msgpack-c, OpenBLAS or libsodium in
# its dynamic dependencies, and it runs a script that uses each of them.
# usage: spec/static_test.sh BUILD_DIR
set -euo pipefail
bin=$1/bin/ember
deps=$(ldd "$bin")
if grep -E 'liblua|libuv|libmsgpack|libopenblas|libsodium|libgfortran' <<<"$deps"; then
  echo "not ok 1 - $bin still needs the shared libraries above"
  exit 1
fi
echo "ok 1 - no shared Lua, libuv, msgpack-c, OpenBLAS, libsodium or gfortran"
script=$(mktemp --suffix=.lua)
trap 'rm -f "$script"' EXIT
cat >"$script" <<'LUA'
local ember = require "ember"
local T = ember.tensor
local a = T.ones(64, 64)
local body = require("ember.core").wire_encode({ x = 1 })   -- msgpack-c
assert(#body > 0)
ember.sleep(0.01)                                             -- libuv
print(("sum %g"):format(a:matmul(a):sum():item()))            -- OpenBLAS
LUA
out=$("$bin" run "$script")
[[ $out == "sum 262144" ]] || { echo "not ok 2 - got '$out'"; exit 1; }
echo "ok 2 - runs a script: $out"
echo "2 passed, 0 failed"
