/*
** Lua bindings for futures, tasks (coroutines driven by futures) and timers.
**
** A Lua future is a small userdata holding one reference to a C future; a Lua
** value stored in a future lives in the registry until the future is freed.
** Callbacks from C run on the context's own thread inside lua_pcall, so an
** error in Lua code never unwinds through C.
**
** A task is a coroutine started by ember.spawn. `wait()` inside a task adds a
** callback that resumes the coroutine and yields; outside any task it runs the
** loop until the future completes.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "autograd.h"
#include "lua_common.h"

#define FUTURE_METATABLE "ember.Future"
#define MAX_PAYLOAD_PUSHERS 16

typedef struct {
  ember_future_t *future; /* NULL once released */
} future_box_t;

/* What a task yields while it waits; any other yield is a mistake. */
static const char wait_sentinel = 'w';

/* The task whose Lua code runs right now, for a signal handler to stop. */
static lua_State *volatile running_task;

lua_State *ember__lua_running_task(void) { return running_task; }

/* --- Lua values as future payloads ---------------------------------------- */

typedef struct {
  ember_lua_ctx_t *ctx;
  int ref;
} lua_value_t;

static void drop_lua_value(void *data) {
  lua_value_t *value = data;
  if (!value->ctx->closing)
    luaL_unref(value->ctx->L, LUA_REGISTRYINDEX, value->ref);
  free(value);
}

const ember_payload_type_t ember__lua_value_payload = {"lua", drop_lua_value};

/* Pops the value on top of L into a new payload; NULL if out of memory. */
static lua_value_t *pop_lua_value(ember_lua_ctx_t *ctx, lua_State *L) {
  lua_value_t *value = malloc(sizeof(*value));
  if (value == NULL) {
    lua_pop(L, 1);
    return NULL;
  }
  value->ctx = ctx;
  value->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return value;
}

static struct {
  const ember_payload_type_t *type;
  ember_lua_push_payload_fn push;
  /* When cache(data) says so, the value made is kept as the payload. */
  int (*cache)(const void *data);
  ember_lua_ctx_t *cache_ctx;
} pushers[MAX_PAYLOAD_PUSHERS];

static int register_pusher(const ember_payload_type_t *type,
                           ember_lua_push_payload_fn push,
                           int (*cache)(const void *data),
                           ember_lua_ctx_t *cache_ctx) {
  for (int i = 0; i < MAX_PAYLOAD_PUSHERS; i++) {
    if (pushers[i].type == NULL || pushers[i].type == type) {
      pushers[i].type = type;
      pushers[i].push = push;
      pushers[i].cache = cache;
      pushers[i].cache_ctx = cache_ctx;
      return 0;
    }
  }
  return EMBER_ENOMEM;
}

int ember__lua_register_payload(const ember_payload_type_t *type,
                                ember_lua_push_payload_fn push) {
  return register_pusher(type, push, NULL, NULL);
}

int ember__lua_register_cached_payload(ember_lua_ctx_t *ctx,
                                       const ember_payload_type_t *type,
                                       ember_lua_push_payload_fn push,
                                       int (*cache)(const void *data)) {
  return register_pusher(type, push, cache, ctx);
}

/* Makes the value on top the future's payload, so later reads get the same
** value instead of making another. */
static void cache_value(lua_State *L, ember_lua_ctx_t *ctx,
                        ember_future_t *future) {
  lua_value_t *value;
  lua_pushvalue(L, -1);
  if ((value = pop_lua_value(ctx, L)) == NULL)
    return;
  if (ember_future_replace_payload(future, &ember__lua_value_payload, value))
    drop_lua_value(value);
}

/* Pushes the result or error value of a completed future. */
static void push_payload(lua_State *L, ember_future_t *future) {
  const ember_payload_type_t *type;
  void *data = ember_future_payload(future, &type);

  if (type == &ember__lua_value_payload) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, ((lua_value_t *)data)->ref);
  } else if (ember_future_state(future) == EMBER_FUTURE_FAILED &&
             (type == NULL || type == &ember_message_payload)) {
    ember__lua_push_error(L, ember_future_error_code(future), data);
  } else if (type == NULL) {
    lua_pushnil(L);
  } else if (type == &ember_message_payload) {
    lua_pushstring(L, data);
  } else {
    for (int i = 0; i < MAX_PAYLOAD_PUSHERS && pushers[i].type != NULL; i++) {
      if (pushers[i].type == type) {
        pushers[i].push(L, data);
        if (pushers[i].cache != NULL && pushers[i].cache(data))
          cache_value(L, pushers[i].cache_ctx, future);
        return;
      }
    }
    luaL_error(L, "a future holds a '%s' value that Lua cannot read",
               type->name);
  }
}

void ember__lua_push_outcome_value(lua_State *L, ember_future_t *future) {
  push_payload(L, future);
}

/* Returns the value of a completed future, or raises its error. */
static int push_outcome(lua_State *L, ember_future_t *future) {
  ember_future_mark_observed(future);
  push_payload(L, future);
  if (ember_future_state(future) == EMBER_FUTURE_FAILED)
    return lua_error(L);
  return 1;
}

/* --- The Future type ------------------------------------------------------- */

/* Finalizers that run while the state closes find the loop gone. */
static void check_open(lua_State *L, ember_lua_ctx_t *ctx, const char *what) {
  if (ctx->closing)
    luaL_error(L, "%s: ember's loop is closed (the Lua state is closing)",
               what);
}

void ember__lua_push_future(lua_State *L, ember_future_t *future) {
  future_box_t *box = lua_newuserdatauv(L, sizeof(*box), 0);
  box->future = NULL; /* created safe: nothing to release yet */
  luaL_setmetatable(L, FUTURE_METATABLE);
  box->future = future;
}

ember_future_t *ember__lua_check_future(lua_State *L, int index) {
  future_box_t *box = luaL_checkudata(L, index, FUTURE_METATABLE);
  if (box->future == NULL)
    luaL_argerror(L, index, "the future was closed");
  return box->future;
}

/*
** Lua frees, without finalizing, what finalizers create while the state
** closes: a future made then would leak, so none is made.
*/
static ember_future_t *new_future_or_raise(lua_State *L) {
  ember_future_t *future;
  check_open(L, EMBER_LUA_CTX(L), "Future");
  future = ember_future_new();
  if (future == NULL)
    luaL_error(L, "out of memory creating a future");
  return future;
}

static int future_new(lua_State *L) {
  ember_future_t *future = new_future_or_raise(L);
  ember__lua_push_future(L, future);
  return 1;
}

static int future_done(lua_State *L) {
  ember_future_t *future = ember__lua_check_future(L, 1);
  lua_pushboolean(L, ember_future_state(future) != EMBER_FUTURE_PENDING);
  return 1;
}

static int future_failed(lua_State *L) {
  ember_future_t *future = ember__lua_check_future(L, 1);
  lua_pushboolean(L, ember_future_state(future) == EMBER_FUTURE_FAILED);
  return 1;
}

static void complete_with_top(lua_State *L, ember_lua_ctx_t *ctx,
                              ember_future_t *future, int failed,
                              const char *what) {
  lua_value_t *value;
  int err;

  if (ember_future_state(future) != EMBER_FUTURE_PENDING)
    luaL_error(L, "%s: the future was already completed", what);
  if ((value = pop_lua_value(ctx, L)) == NULL)
    luaL_error(L, "%s: out of memory", what);
  err = failed ? ember_future_set_error(future, EMBER_EFAILED,
                                        &ember__lua_value_payload, value)
               : ember_future_set_result(future, &ember__lua_value_payload,
                                         value);
  if (err != 0) {
    drop_lua_value(value);
    luaL_error(L, "%s: %s", what, ember_strerror(err));
  }
}

static int future_set_result(lua_State *L) {
  ember_future_t *future = ember__lua_check_future(L, 1);
  lua_settop(L, 2);
  complete_with_top(L, EMBER_LUA_CTX(L), future, 0, "set_result");
  return 0;
}

static int future_set_exception(lua_State *L) {
  ember_future_t *future = ember__lua_check_future(L, 1);
  luaL_argexpected(L, !lua_isnoneornil(L, 2), 2, "an error value");
  lua_settop(L, 2);
  complete_with_top(L, EMBER_LUA_CTX(L), future, 1, "set_exception");
  return 0;
}

static int future_value(lua_State *L) {
  ember_future_t *future = ember__lua_check_future(L, 1);
  if (ember_future_state(future) == EMBER_FUTURE_PENDING)
    return ember__lua_raise(L, EMBER_EPENDING,
                            "value() on a pending future; use wait()");
  return push_outcome(L, future);
}

/* --- Running Lua from C callbacks ------------------------------------------- */

/* A string error without a traceback yet: one passed along a chain of
** next() keeps its first. */
static int is_bare_message(lua_State *L, int index) {
  return lua_type(L, index) == LUA_TSTRING &&
         strstr(lua_tostring(L, index), "\nstack traceback:\n") == NULL;
}

/*
** Message handler: a string error gets the traceback appended; an
** ember.Error without one gets it as its `traceback` field.
*/
static int add_traceback(lua_State *L) {
  if (is_bare_message(L, 1)) {
    luaL_traceback(L, L, lua_tostring(L, 1), 1);
  } else if (ember__lua_is_error(L, 1) &&
             lua_getfield(L, 1, "traceback") == LUA_TNIL) {
    luaL_traceback(L, L, NULL, 1);
    lua_setfield(L, 1, "traceback");
    lua_settop(L, 1);
  } else {
    lua_settop(L, 1);
  }
  return 1;
}

/* The same, for the stack of a task that died with its error on top. */
static void add_task_traceback(lua_State *L, lua_State *co) {
  if (is_bare_message(L, -1)) {
    const char *message = lua_tostring(L, -1);
    luaL_traceback(L, co, message, 0);
    lua_remove(L, -2);
  }
}

static int tostring_unprotected(lua_State *L) {
  luaL_tolstring(L, 1, NULL);
  return 1;
}

/*
** Pushes a description of the value at `index`; unlike luaL_tolstring it
** never raises, whatever the value's __tostring does.
*/
static const char *push_description(lua_State *L, int index) {
  index = lua_absindex(L, index);
  if (lua_type(L, index) == LUA_TSTRING) {
    lua_pushvalue(L, index);
  } else {
    lua_pushcfunction(L, tostring_unprotected);
    lua_pushvalue(L, index);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK || !lua_isstring(L, -1)) {
      lua_pop(L, 1);
      lua_pushfstring(L, "(a %s whose __tostring failed)",
                      luaL_typename(L, index));
    }
  }
  return lua_tostring(L, -1);
}

/* Reports and pops the error on top of L. */
static void report_callback_error(lua_State *L, const char *where) {
  const char *message = push_description(L, -1);
  fprintf(stderr, "ember: error in %s: %s\n", where, message);
  fflush(stderr);
  lua_pop(L, 2);
}

/*
** Runs `fn(L)` protected on the context's thread: memory errors while pushing
** arguments cannot escape into C either. Returns the lua_pcall status.
*/
static int call_protected(ember_lua_ctx_t *ctx, lua_CFunction fn, void *a,
                          void *b) {
  lua_State *L = ctx->L;
  int status;
  if (!lua_checkstack(L, 4))
    return LUA_ERRMEM;
  lua_pushcfunction(L, fn);
  lua_pushlightuserdata(L, a);
  lua_pushlightuserdata(L, b);
  status = lua_pcall(L, 2, 0, 0);
  if (status != LUA_OK)
    report_callback_error(L, "an ember callback");
  return status;
}

/* --- Callbacks added from Lua (add_done_callback, next) --------------------- */

typedef struct {
  ember_lua_ctx_t *ctx;
  int fn_ref;
  ember_future_t *child; /* next(): completed with fn's outcome */
} lua_callback_t;

static void free_lua_callback(lua_callback_t *callback) {
  if (!callback->ctx->closing)
    luaL_unref(callback->ctx->L, LUA_REGISTRYINDEX, callback->fn_ref);
  if (callback->child != NULL)
    ember_future_release(callback->child);
  free(callback);
}

/* Protected: fn(future); for next(), completes the child with the outcome. */
static int run_lua_callback(lua_State *L) {
  lua_callback_t *callback = lua_touserdata(L, 1);
  ember_future_t *future = lua_touserdata(L, 2);
  int status;

  lua_settop(L, 0);
  lua_pushcfunction(L, add_traceback);
  lua_rawgeti(L, LUA_REGISTRYINDEX, callback->fn_ref);
  ember_future_retain(future);
  ember__lua_push_future(L, future);
  status = lua_pcall(L, 1, 1, 1);
  if (callback->child == NULL) {
    if (status != LUA_OK)
      report_callback_error(L, "a future callback");
    return 0;
  }
  complete_with_top(L, callback->ctx, callback->child, status != LUA_OK,
                    "next");
  return 0;
}

static void lua_callback_cb(ember_future_t *future, void *arg) {
  lua_callback_t *callback = arg;
  if (future != NULL && !callback->ctx->closing &&
      call_protected(callback->ctx, run_lua_callback, callback, future) !=
          LUA_OK &&
      callback->child != NULL) {
    ember_future_fail(callback->child, EMBER_ENOMEM,
                      "out of memory running a next() callback");
  }
  free_lua_callback(callback);
}

static void add_lua_callback(lua_State *L, ember_future_t *future,
                             int fn_index, ember_future_t *child) {
  lua_callback_t *callback = malloc(sizeof(*callback));
  if (callback == NULL) {
    if (child != NULL)
      ember_future_release(child);
    luaL_error(L, "out of memory adding a callback");
  }
  callback->ctx = EMBER_LUA_CTX(L);
  lua_pushvalue(L, fn_index);
  callback->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  callback->child = child;
  if (ember_future_add_callback(future, lua_callback_cb, callback) != 0) {
    free_lua_callback(callback);
    luaL_error(L, "out of memory adding a callback");
  }
}

static void check_callable(lua_State *L, int index) {
  if (lua_type(L, index) != LUA_TFUNCTION &&
      luaL_getmetafield(L, index, "__call") == LUA_TNIL)
    luaL_typeerror(L, index, "function");
  if (lua_type(L, index) != LUA_TFUNCTION)
    lua_pop(L, 1); /* the __call field */
}

static int future_add_done_callback(lua_State *L) {
  ember_future_t *future = ember__lua_check_future(L, 1);
  check_callable(L, 2);
  add_lua_callback(L, future, 2, NULL);
  return 0;
}

static int future_next(lua_State *L) {
  ember_future_t *future = ember__lua_check_future(L, 1);
  ember_future_t *child;
  check_callable(L, 2);
  child = new_future_or_raise(L);
  ember_future_retain(child); /* one for the callback, one for the handle */
  ember__lua_push_future(L, child);
  add_lua_callback(L, future, 2, child); /* takes the callback's reference */
  return 1;
}

/* --- Tasks ------------------------------------------------------------------ */

/* Pushes tasks[co] (the task's future handle) or nil. */
static int push_task_future(lua_State *L, ember_lua_ctx_t *ctx, lua_State *co) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, ctx->tasks_ref);
  lua_pushthread(co);
  lua_xmove(co, L, 1);
  lua_rawget(L, -2);
  lua_remove(L, -2);
  return !lua_isnil(L, -1);
}

static void forget_task(lua_State *L, ember_lua_ctx_t *ctx, lua_State *co) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, ctx->tasks_ref);
  lua_pushthread(co);
  lua_xmove(co, L, 1);
  lua_pushnil(L);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

/* Completes the task's future with the value (or error) on top of L. */
static void finish_task(lua_State *L, ember_lua_ctx_t *ctx, lua_State *co,
                        int failed) {
  ember_future_t *future;
  push_task_future(L, ctx, co);
  future = ember__lua_check_future(L, -1);
  ember_future_retain(future); /* its handle may be collected from here on */
  lua_pop(L, 1);
  forget_task(L, ctx, co);
  /* Someone may have completed the task's future by hand: keep theirs. */
  if (ember_future_state(future) != EMBER_FUTURE_PENDING)
    lua_pop(L, 1);
  else
    complete_with_top(L, ctx, future, failed, "task");
  ember_future_release(future);
}

/*
** Autograd's grad mode is per thread in C, but tasks share the thread: a
** task that waits inside no_grad must not switch recording off for the
** others. Each task therefore carries its own mode across waits; the tasks
** whose mode is off are kept in a weak-keyed registry table.
*/
static const char grad_off_key = 'g';

static int task_grad_off(lua_State *L, lua_State *co) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &grad_off_key) != LUA_TTABLE) {
    lua_pop(L, 1);
    return 0;
  }
  lua_pushthread(co);
  lua_xmove(co, L, 1);
  int off = lua_rawget(L, -2) != LUA_TNIL;
  lua_pop(L, 2);
  return off;
}

static void set_task_grad_off(lua_State *L, lua_State *co, int off) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &grad_off_key) != LUA_TTABLE) {
    lua_pop(L, 1);
    if (!off) return;
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &grad_off_key);
  }
  lua_pushthread(co);
  lua_xmove(co, L, 1);
  if (off) lua_pushboolean(L, 1);
  else lua_pushnil(L);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

/*
** Resumes a task with `nargs` values on its stack. `from` is the thread that
** resumes it. When the task waits again it has already arranged its wake-up.
*/
static void resume_task(lua_State *from, ember_lua_ctx_t *ctx, lua_State *co,
                        int nargs) {
  int nresults, status;
  lua_State *outer = running_task;

  running_task = co;
  int outer_grad = ember_set_grad_enabled(!task_grad_off(from, co));
  status = lua_resume(co, from, nargs, &nresults);
  int task_grad = ember_set_grad_enabled(outer_grad);
  running_task = outer;
  if (status == LUA_YIELD ? !task_grad : task_grad_off(from, co)) {
    set_task_grad_off(from, co, status == LUA_YIELD && !task_grad);
  }

  if (status == LUA_YIELD) {
    int waiting = nresults == 1 && lua_touserdata(co, -1) == &wait_sentinel;
    lua_pop(co, nresults);
    if (waiting)
      return;
    lua_resetthread(co); /* runs pending to-be-closed variables */
    lua_pushliteral(from, "a task called coroutine.yield(); inside "
                          "ember.spawn, pause with fut:wait() or ember.sleep()");
    finish_task(from, ctx, co, 1);
    return;
  }
  if (status == LUA_OK) {
    /* A task's value is the first value its function returned. */
    if (nresults > 0)
      lua_pop(co, nresults - 1);
    else
      lua_pushnil(co);
    lua_xmove(co, from, 1);
    finish_task(from, ctx, co, 0);
    return;
  }
  lua_xmove(co, from, 1);
  add_task_traceback(from, co);
  lua_resetthread(co); /* runs pending to-be-closed variables */
  finish_task(from, ctx, co, 1);
}

/* ember.spawn(fn, ...): runs fn(...) as a task now; returns its future. */
static int core_spawn(lua_State *L) {
  ember_lua_ctx_t *ctx = EMBER_LUA_CTX(L);
  int nargs = lua_gettop(L) - 1;
  lua_State *co;

  check_callable(L, 1);
  lua_settop(L, nargs + 1);
  co = lua_newthread(L);
  if (!lua_checkstack(co, nargs + 1))
    return luaL_error(L, "spawn: too many arguments (%d)", nargs);
  lua_insert(L, 1); /* keep the thread on our stack while it runs */
  future_new(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, ctx->tasks_ref);
  lua_pushvalue(L, 1);
  lua_pushvalue(L, -3);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  lua_insert(L, 2); /* [thread, future, fn, args...] */
  lua_xmove(L, co, nargs + 1);
  resume_task(L, ctx, co, nargs);
  lua_settop(L, 2);
  return 1;
}

typedef struct {
  ember_lua_ctx_t *ctx;
  int thread_ref;
} waker_t;

/* Protected: resumes the waiting task. */
static int run_waker(lua_State *L) {
  waker_t *waker = lua_touserdata(L, 1);
  lua_State *co;
  lua_rawgeti(L, LUA_REGISTRYINDEX, waker->thread_ref);
  co = lua_tothread(L, -1);
  resume_task(L, waker->ctx, co, 0);
  return 0;
}

static void waker_cb(ember_future_t *future, void *arg) {
  waker_t *waker = arg;
  if (future != NULL && !waker->ctx->closing)
    call_protected(waker->ctx, run_waker, waker, NULL);
  if (!waker->ctx->closing)
    luaL_unref(waker->ctx->L, LUA_REGISTRYINDEX, waker->thread_ref);
  free(waker);
}

static int is_task(lua_State *L, ember_lua_ctx_t *ctx) {
  int found;
  if (lua_pushthread(L)) { /* the main thread is never a task */
    lua_pop(L, 1);
    return 0;
  }
  lua_pop(L, 1);
  found = push_task_future(L, ctx, L);
  lua_pop(L, 1);
  return found;
}

static int future_wait_k(lua_State *L, int status, lua_KContext k) {
  ember_future_t *future = ember__lua_check_future(L, 1);
  (void)status;
  (void)k;
  if (ember_future_state(future) == EMBER_FUTURE_PENDING)
    return luaL_error(L, "wait(): the task was resumed by hand while its "
                         "future is pending; do not resume ember tasks");
  return push_outcome(L, future);
}

static int future_wait(lua_State *L) {
  ember_future_t *future = ember__lua_check_future(L, 1);
  ember_lua_ctx_t *ctx = EMBER_LUA_CTX(L);
  int err;

  lua_settop(L, 1);
  if (ember_future_state(future) != EMBER_FUTURE_PENDING)
    return push_outcome(L, future);
  check_open(L, ctx, "wait");
  if (is_task(L, ctx)) {
    waker_t *waker;
    if (!lua_isyieldable(L))
      return luaL_error(L, "wait(): cannot pause here (inside a metamethod "
                           "or C function that cannot yield)");
    if ((waker = malloc(sizeof(*waker))) == NULL)
      return luaL_error(L, "wait(): out of memory");
    waker->ctx = ctx;
    lua_pushthread(L);
    waker->thread_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (ember_future_add_callback(future, waker_cb, waker) != 0) {
      luaL_unref(L, LUA_REGISTRYINDEX, waker->thread_ref);
      free(waker);
      return luaL_error(L, "wait(): out of memory");
    }
    lua_pushlightuserdata(L, (void *)&wait_sentinel);
    return lua_yieldk(L, 1, 0, future_wait_k);
  }
  err = ember_loop_run_until(ctx->loop, future);
  if (err == EMBER_EBUSY)
    return luaL_error(L, "wait(): not in an ember task, and the loop is "
                         "already running (a callback or a plain coroutine "
                         "cannot block it); use fut:next() or ember.spawn()");
  if (err == EMBER_EDEADLOCK)
    return ember__lua_raise(L, EMBER_EDEADLOCK,
                            "wait(): the future can never complete: the loop "
                            "has nothing left to do");
  return push_outcome(L, future);
}

/* --- Timers and running the loop ------------------------------------------- */

static int core_timer(lua_State *L) {
  ember_lua_ctx_t *ctx = EMBER_LUA_CTX(L);
  lua_Number seconds = luaL_checknumber(L, 1);
  ember_future_t *future;
  int err;

  luaL_argcheck(L, seconds >= 0 && seconds < 1e9, 1,
                "seconds must be between 0 and 1e9");
  check_open(L, ctx, "timer");
  err = ember_loop_timer(ctx->loop, (uint64_t)(seconds * 1000.0 + 0.999),
                         &future);
  if (err != 0)
    return luaL_error(L, "timer: %s", ember_strerror(err));
  ember__lua_push_future(L, future);
  return 1;
}

/* run(future): runs the loop until it completes; run(): until idle. */
static int core_run(lua_State *L) {
  ember_lua_ctx_t *ctx = EMBER_LUA_CTX(L);
  int err;
  check_open(L, ctx, "run");
  if (lua_isnoneornil(L, 1))
    err = ember_loop_run(ctx->loop);
  else
    err = ember_loop_run_until(ctx->loop, ember__lua_check_future(L, 1));
  if (err == EMBER_EDEADLOCK)
    return ember__lua_raise(L, err, "the future can never complete: the loop "
                                    "has nothing left to do");
  if (err == UV_EINTR)
    return ember__lua_raise(L, err, "interrupted");
  if (err != 0)
    return ember__lua_raise(L, err, "run: %s", ember_strerror(err));
  return 0;
}

static int core_in_task(lua_State *L) {
  lua_pushboolean(L, is_task(L, EMBER_LUA_CTX(L)));
  return 1;
}

/* --- Metamethods ------------------------------------------------------------ */

static int warn_unobserved_error(lua_State *L) {
  push_payload(L, lua_touserdata(L, 1));
  fprintf(stderr, "ember: a failed future was dropped without anyone "
                  "reading its error: %s\n",
          push_description(L, -1));
  fflush(stderr);
  return 0;
}

static int future_gc(lua_State *L) {
  future_box_t *box = luaL_checkudata(L, 1, FUTURE_METATABLE);
  ember_future_t *future = box->future;
  if (future == NULL)
    return 0;
  box->future = NULL;
  if (ember_future_refs(future) == 1 &&
      ember_future_state(future) == EMBER_FUTURE_FAILED &&
      !ember_future_observed(future) && lua_checkstack(L, 4)) {
    lua_pushcfunction(L, warn_unobserved_error);
    lua_pushlightuserdata(L, future);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK)
      lua_pop(L, 1); /* a warning that cannot be shown is dropped */
  }
  ember_future_release(future);
  return 0;
}

static int future_tostring(lua_State *L) {
  future_box_t *box = luaL_checkudata(L, 1, FUTURE_METATABLE);
  static const char *const states[] = {"pending", "done", "failed"};
  if (box->future == NULL)
    lua_pushliteral(L, "ember.Future (closed)");
  else
    lua_pushfstring(L, "ember.Future (%s): %p",
                    states[ember_future_state(box->future)],
                    (void *)box->future);
  return 1;
}

static int future_eq(lua_State *L) {
  future_box_t *a = luaL_testudata(L, 1, FUTURE_METATABLE);
  future_box_t *b = luaL_testudata(L, 2, FUTURE_METATABLE);
  lua_pushboolean(L, a != NULL && b != NULL && a->future == b->future);
  return 1;
}

static const luaL_Reg future_methods[] = {
    {"done", future_done},
    {"failed", future_failed},
    {"value", future_value},
    {"wait", future_wait},
    {"set_result", future_set_result},
    {"set_exception", future_set_exception},
    {"add_done_callback", future_add_done_callback},
    {"next", future_next},
    {"then", future_next},
    {NULL, NULL}};

static const luaL_Reg future_metamethods[] = {{"__gc", future_gc},
                                              {"__close", future_gc},
                                              {"__tostring", future_tostring},
                                              {"__eq", future_eq},
                                              {NULL, NULL}};

static const luaL_Reg core_funcs[] = {{"Future", future_new},
                                      {"spawn", core_spawn},
                                      {"timer", core_timer},
                                      {"run", core_run},
                                      {"in_task", core_in_task},
                                      {NULL, NULL}};

/* Expects the context at index 1 and the module table at index 2. */
void ember__lua_open_future(lua_State *L) {
  if (luaL_newmetatable(L, FUTURE_METATABLE)) {
    ember__lua_setfuncs(L, 1, future_metamethods);
    lua_newtable(L);
    ember__lua_setfuncs(L, 1, future_methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  lua_pushvalue(L, 2);
  ember__lua_setfuncs(L, 1, core_funcs);
  lua_pop(L, 1);
}
