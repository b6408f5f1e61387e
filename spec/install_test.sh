#!/usr/bin/env bash
# `cmake --install` lays ember out where stock lua5.4 looks, and the installed
# copies work from there. usage: install_test.sh BUILD_DIR
set -euo pipefail
build=$1
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build" --prefix "$prefix" >/dev/null

for file in bin/ember lib/lua/5.4/ember/core.so share/lua/5.4/ember/init.lua \
            share/lua/5.4/ember/futures.lua; do
  [[ -e $prefix/$file ]] || { echo "not installed: $file"; exit 1; }
done

# With the prefix /usr/local these are exactly lua5.4's default search dirs.
lua5.4 -e 'assert(package.path:find("/usr/local/share/lua/5.4/?.lua", 1, true))
           assert(package.cpath:find("/usr/local/lib/lua/5.4/?.so", 1, true))'

# A sanitizer build's module needs the runtime loaded before lua5.4 starts.
# (ldd's output is read whole: `grep -q` would stop early, and under
# pipefail ldd's SIGPIPE would then read as "no match".)
libs=$(ldd "$prefix/lib/lua/5.4/ember/core.so")
if [[ $libs == *libasan* ]]; then
  export LD_PRELOAD=$(gcc -print-file-name=libasan.so)
fi
export LUA_PATH="$prefix/share/lua/5.4/?.lua;$prefix/share/lua/5.4/?/init.lua"
export LUA_CPATH="$prefix/lib/lua/5.4/?.so"
out=$(lua5.4 -e 'local e = require "ember"
  local f = e.after(0.001, function() return "installed ok" end)
  print(f:wait())')
[[ $out == "installed ok" ]] || { echo "lua5.4 with the installed module printed: $out"; exit 1; }
version=$("$prefix/bin/ember" --version)
[[ $version == "ember "* ]] || { echo "installed ember does not run"; exit 1; }
echo "install layout ok"
