/*
** luaopen_ember_core: the context (loop, callback thread, task table), errors,
** and the functions that are about the process rather than one type.
*/
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "device.h"
#include "error.h"
#include "lua_common.h"

#ifndef EMBER_VERSION
#define EMBER_VERSION "0.0.0"
#endif

#define ERROR_METATABLE "ember.Error"

void ember__lua_setfuncs(lua_State *L, int ctx_index, const luaL_Reg *funcs) {
  ctx_index = lua_absindex(L, ctx_index);
  for (; funcs->name != NULL; funcs++) {
    lua_pushvalue(L, ctx_index);
    lua_pushcclosure(L, funcs->func, 1);
    lua_setfield(L, -2, funcs->name);
  }
}

static void push_error_named(lua_State *L, const char *code,
                             const char *message) {
  lua_createtable(L, 0, 3);
  lua_pushstring(L, code);
  lua_setfield(L, -2, "code");
  lua_pushstring(L, message);
  lua_setfield(L, -2, "message");
  luaL_setmetatable(L, ERROR_METATABLE);
}

void ember__lua_push_error(lua_State *L, int code, const char *message) {
  push_error_named(L, ember_err_name(code),
                   message != NULL ? message : ember_strerror(code));
}

int ember__lua_raise(lua_State *L, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  const char *message = lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  ember__lua_push_error(L, code, message);
  return lua_error(L);
}

/* "ETIMEDOUT: message", then the traceback when there is one. */
static int error_tostring(lua_State *L) {
  luaL_Buffer b;
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_buffinit(L, &b);
  lua_getfield(L, 1, "message");
  luaL_addvalue(&b);
  lua_getfield(L, 1, "code");
  if (lua_isstring(L, -1)) {
    luaL_addstring(&b, " (");
    luaL_addvalue(&b);
    luaL_addstring(&b, ")");
  } else {
    lua_pop(L, 1);
  }
  if (lua_getfield(L, 1, "traceback") == LUA_TSTRING) {
    luaL_addchar(&b, '\n');
    luaL_addvalue(&b);
  } else {
    lua_pop(L, 1);
  }
  luaL_pushresult(&b);
  return 1;
}

int ember__lua_is_error(lua_State *L, int index) {
  int is_error = 0;
  if (lua_getmetatable(L, index)) {
    luaL_getmetatable(L, ERROR_METATABLE);
    is_error = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
  }
  return is_error;
}

static int core_is_error(lua_State *L) {
  lua_pushboolean(L, ember__lua_is_error(L, 1));
  return 1;
}

/* ember.core.new_error(code, message): for Lua code that raises its own. */
static int core_new_error(lua_State *L) {
  push_error_named(L, luaL_checkstring(L, 1), luaL_checkstring(L, 2));
  return 1;
}

static int core_live_futures(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)ember_future_live_count());
  return 1;
}

/* Monotonic wall-clock seconds, for timing (os.clock is CPU time). */
static int core_clock(lua_State *L) {
  lua_pushnumber(L, (lua_Number)uv_hrtime() / 1e9);
  return 1;
}

static int core_cuda_device_count(lua_State *L) {
  int count = 0;
  int err = ember_cuda_device_count(&count);
  lua_pushinteger(L, count);
  if (err == 0)
    return 1;
  lua_pushstring(L, ember_strerror(err)); /* why there is none */
  return 2;
}

/* --- Ctrl-C while Lua code runs (the REPL) --------------------------------- */

static ember_lua_ctx_t *volatile interrupt_ctx;
static struct sigaction saved_sigint;

static void interrupt_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  lua_pushliteral(L, "interrupted!");
  lua_error(L);
}

/* Stops the running task at its next step and wakes a waiting loop. Only
** lua_sethook and ember_loop_interrupt: both are safe in a signal handler. */
static void on_sigint(int signal_number) {
  ember_lua_ctx_t *ctx = interrupt_ctx;
  lua_State *running = ember__lua_running_task();
  (void)signal_number;
  if (ctx == NULL)
    return;
  if (running != NULL)
    lua_sethook(running, interrupt_hook,
                LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
  ember_loop_interrupt(ctx->loop);
}

/*
** catch_interrupt(true): from now on SIGINT raises "interrupted!" in the
** running task, and makes run() raise EINTR; catch_interrupt(false) puts the
** previous SIGINT disposition back.
*/
static void stop_catching_interrupt(void) {
  if (interrupt_ctx != NULL) {
    sigaction(SIGINT, &saved_sigint, NULL);
    interrupt_ctx = NULL;
  }
}

static int core_catch_interrupt(lua_State *L) {
  ember_lua_ctx_t *ctx = EMBER_LUA_CTX(L);
  if (!lua_toboolean(L, 1)) {
    stop_catching_interrupt();
  } else if (interrupt_ctx == NULL) {
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_handler = on_sigint;
    sigemptyset(&action.sa_mask);
    interrupt_ctx = ctx;
    sigaction(SIGINT, &action, &saved_sigint);
  }
  return 0;
}

/* Closing the state: no more Lua calls from C, then close the loop. */
static int ctx_gc(lua_State *L) {
  ember_lua_ctx_t *ctx = lua_touserdata(L, 1);
  if (ctx->loop != NULL) {
    if (interrupt_ctx == ctx)
      stop_catching_interrupt();
    ctx->closing = 1;
    ember_loop_close(ctx->loop);
    ctx->loop = NULL;
  }
  return 0;
}

/* Where the state's one context lives in the registry. */
static const char context_key = 'c';

/*
** Pushes the state's context, made on first use. Loading ember.core again
** (busted unloads modules between files) must reuse it: values already in
** futures point at it.
*/
static void push_context(lua_State *L) {
  ember_lua_ctx_t *ctx;
  int err;

  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &context_key) == LUA_TUSERDATA)
    return;
  lua_pop(L, 1);
  ctx = lua_newuserdatauv(L, sizeof(*ctx), 1);

  memset(ctx, 0, sizeof(*ctx));
  ctx->tasks_ref = LUA_NOREF;
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, ctx_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  if ((err = ember_loop_new(&ctx->loop)) != 0)
    luaL_error(L, "ember.core: cannot create the event loop: %s",
               ember_strerror(err));
  /* The callback thread is kept alive as the context's user value. */
  ctx->L = lua_newthread(L);
  lua_setiuservalue(L, -2, 1);
  lua_newtable(L);
  ctx->tasks_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &context_key);
}

static const luaL_Reg core_funcs[] = {{"is_error", core_is_error},
                                      {"new_error", core_new_error},
                                      {"live_futures", core_live_futures},
                                      {"clock", core_clock},
                                      {"catch_interrupt", core_catch_interrupt},
                                      {"cuda_device_count", core_cuda_device_count},
                                      {NULL, NULL}};

int luaopen_ember_core(lua_State *L);
int luaopen_ember_core(lua_State *L) {
  if (luaL_newmetatable(L, ERROR_METATABLE)) {
    lua_pushcfunction(L, error_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushstring(L, ERROR_METATABLE);
    lua_setfield(L, -2, "__name");
  }
  lua_pop(L, 1);

  lua_settop(L, 0);
  push_context(L); /* index 1 */
  lua_newtable(L); /* index 2: the module */
  ember__lua_setfuncs(L, 1, core_funcs);
  lua_pushliteral(L, EMBER_VERSION);
  lua_setfield(L, 2, "version");
  luaL_getmetatable(L, ERROR_METATABLE);
  lua_setfield(L, 2, "Error");
  ember__lua_open_future(L);
  ember__lua_open_tensor(L);
  ember__lua_open_dist_autograd(L);
  ember__lua_open_wire(L);
  ember__lua_open_store(L);
  ember__lua_open_launch(L);
  ember__lua_open_rpc(L);
  return 1;
}
