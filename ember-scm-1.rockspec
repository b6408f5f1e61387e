rockspec_format = "3.0"
package = "ember"
version = "scm-1"
source = {
  url = "git+file:///work/main",
}
description = {
  summary = "A distributed RPC runtime for Lua 5.4 with a C core",
  detailed = [[
Futures with then-chaining, light threads and timers on a libuv loop; named
workers, rpc_sync/rpc_async/remote and tensors, re-creating
torch.distributed.rpc for Lua.]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.4, < 5.5",
}
external_dependencies = {
  LIBUV = { header = "uv.h" },
  MSGPACK = { header = "msgpack.h" },
  SODIUM = { header = "sodium.h" },
}
build = {
  type = "cmake",
  variables = {
    CMAKE_BUILD_TYPE = "Release",
    CMAKE_INSTALL_PREFIX = "$(PREFIX)",
    EMBER_LUA_LIBDIR = "$(LIBDIR)",
    EMBER_LUA_SHAREDIR = "$(LUADIR)",
    EMBER_CUDA = "AUTO",
  },
}
