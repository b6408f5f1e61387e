/*
** ember.core.launch, free_port and executable_path: the binding of launch.c.
** The arrays handed to C live in userdata and strings anchored in a table on
** the stack, so an argument error half-way leaks nothing.
*/
#include <stdio.h>
#include <string.h>

#include "error.h"
#include "launch.h"
#include "lua_common.h"

/* Keeps the value on top reachable until the call returns (pops it). */
static void anchor(lua_State *L, int anchors) {
  lua_rawseti(L, anchors, (lua_Integer)lua_rawlen(L, anchors) + 1);
}

/* A NULL-terminated array of the strings in the list at `index`. */
static const char **check_argv(lua_State *L, int index, int anchors) {
  size_t count = lua_rawlen(L, index);
  const char **argv;

  luaL_argcheck(L, count > 0, 1, "argv must be a non-empty list of strings");
  argv = lua_newuserdatauv(L, (count + 1) * sizeof(*argv), 0);
  anchor(L, anchors);
  for (size_t i = 0; i < count; i++) {
    lua_rawgeti(L, index, (lua_Integer)i + 1);
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_error(L, "launch: argv[%d] must be a string, not %s", (int)i + 1,
                 luaL_typename(L, -1));
    argv[i] = lua_tostring(L, -1);
    anchor(L, anchors);
  }
  argv[count] = NULL;
  return argv;
}

/* "NAME=value" for each pair of the table at `index`, NULL-terminated. */
static const char **check_env(lua_State *L, int index, int anchors,
                              int worker) {
  size_t count = 0, n = 0;
  const char **env;

  for (lua_pushnil(L); lua_next(L, index); lua_pop(L, 1))
    count++;
  env = lua_newuserdatauv(L, (count + 1) * sizeof(*env), 0);
  anchor(L, anchors);
  for (lua_pushnil(L); lua_next(L, index); lua_pop(L, 1)) {
    const char *name;
    /* Checked before lua_tostring, which would turn a number key into a
    ** string and confuse lua_next. */
    if (lua_type(L, -2) != LUA_TSTRING)
      luaL_error(L, "launch: workers[%d].env has a name that is not a string",
                 worker);
    name = lua_tostring(L, -2);
    if (name[0] == '\0' || strchr(name, '=') != NULL)
      luaL_error(L, "launch: workers[%d].env has a bad name '%s'", worker,
                 name);
    if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
      luaL_error(L, "launch: workers[%d].env.%s must be a string, not %s",
                 worker, name, luaL_typename(L, -1));
    lua_pushfstring(L, "%s=%s", name, luaL_tolstring(L, -1, NULL));
    env[n++] = lua_tostring(L, -1);
    anchor(L, anchors);
    lua_pop(L, 1); /* luaL_tolstring's copy */
  }
  env[n] = NULL;
  return env;
}

static ember_launch_worker_t *check_workers(lua_State *L, int index,
                                            int anchors, size_t *count) {
  ember_launch_worker_t *workers;

  *count = lua_rawlen(L, index);
  luaL_argcheck(L, *count > 0, 1, "workers must be a non-empty list");
  workers = lua_newuserdatauv(L, *count * sizeof(*workers), 0);
  anchor(L, anchors);
  for (size_t i = 0; i < *count; i++) {
    int worker = (int)i + 1;
    if (lua_rawgeti(L, index, worker) != LUA_TTABLE)
      luaL_error(L, "launch: workers[%d] must be a table", worker);
    lua_getfield(L, -1, "label");
    if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING)
      luaL_error(L, "launch: workers[%d].label must be a string", worker);
    workers[i].label = lua_tostring(L, -1);
    anchor(L, anchors);
    workers[i].env = NULL;
    if (lua_getfield(L, -1, "env") == LUA_TTABLE)
      workers[i].env = check_env(L, lua_gettop(L), anchors, worker);
    else if (!lua_isnil(L, -1))
      luaL_error(L, "launch: workers[%d].env must be a table", worker);
    lua_pop(L, 2);
  }
  return workers;
}

/* An optional number of seconds as milliseconds. */
static uint64_t opt_ms(lua_State *L, const char *field, uint64_t fallback) {
  lua_Number seconds;
  lua_getfield(L, 1, field);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return fallback;
  }
  seconds = lua_tonumber(L, -1);
  if (!lua_isnumber(L, -1) || !(seconds >= 0 && seconds <= 1e9))
    luaL_error(L, "launch: %s must be a number of seconds >= 0", field);
  lua_pop(L, 1);
  return (uint64_t)(seconds * 1000 + 0.5);
}

/* Fetches opts[field], which must be a table, onto the stack. */
static int check_table_field(lua_State *L, const char *field) {
  if (lua_getfield(L, 1, field) != LUA_TTABLE)
    luaL_error(L, "launch: %s must be a table", field);
  return lua_gettop(L);
}

/*
** core.launch{argv = {...}, workers = {{env = {K = "v"}, label = "rank 0"},
** ...}, grace = seconds, kill_after = seconds} -> exit_status, message|nil.
** Blocks until every worker has ended. Raises an ember.Error when they could
** not be started.
*/
static int core_launch(lua_State *L) {
  ember_launch_opts_t opts;
  ember_launch_result_t result;
  int anchors, err;

  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_newtable(L);
  anchors = lua_gettop(L);
  ember_launch_opts_init(&opts);
  opts.argv = check_argv(L, check_table_field(L, "argv"), anchors);
  opts.workers = check_workers(L, check_table_field(L, "workers"), anchors,
                               &opts.worker_count);
  opts.grace_ms = opt_ms(L, "grace", opts.grace_ms);
  opts.kill_after_ms = opt_ms(L, "kill_after", opts.kill_after_ms);
  /* What Lua printed must come out before the workers' lines. */
  fflush(stdout);
  fflush(stderr);
  err = ember_launch_run(&opts, &result);
  if (err != 0)
    return ember__lua_raise(L, err, "%s", result.message);
  lua_pushinteger(L, result.exit_status);
  if (result.message[0] == '\0')
    lua_pushnil(L);
  else
    lua_pushstring(L, result.message);
  return 2;
}

/* core.free_port([host]) -> a TCP port free on host (default 127.0.0.1). */
static int core_free_port(lua_State *L) {
  const char *host = luaL_optstring(L, 1, "127.0.0.1");
  char message[256];
  int port, err = ember_launch_free_port(host, &port, message, sizeof(message));
  if (err != 0)
    return ember__lua_raise(L, err, "%s", message);
  lua_pushinteger(L, port);
  return 1;
}

/* core.executable_path() -> the running program's path, or nil, message. */
static int core_executable_path(lua_State *L) {
  char path[4096];
  size_t size = sizeof(path);
  int err = uv_exepath(path, &size);
  if (err != 0) {
    lua_pushnil(L);
    lua_pushstring(L, ember_strerror(err));
    return 2;
  }
  lua_pushlstring(L, path, size);
  return 1;
}

void ember__lua_open_launch(lua_State *L) {
  static const luaL_Reg funcs[] = {{"launch", core_launch},
                                   {"free_port", core_free_port},
                                   {"executable_path", core_executable_path},
                                   {NULL, NULL}};
  lua_pushvalue(L, 2);
  ember__lua_setfuncs(L, 1, funcs);
  lua_pop(L, 1);
}
