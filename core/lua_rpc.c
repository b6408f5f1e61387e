/* Placeholder: filled in by the RPC core work. */
#include "lua_common.h"

void ember__lua_open_rpc(lua_State *L) { (void)L; }
