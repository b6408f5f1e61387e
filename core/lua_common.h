/*
** What the Lua bindings share: the per-state context and helpers to raise
** structured errors. Only lua_*.c files include this.
*/
#ifndef EMBER_LUA_COMMON_H
#define EMBER_LUA_COMMON_H

#include <lauxlib.h>
#include <lua.h>

#include "future.h"
#include "loop.h"
#include "wire.h"

/*
** One per Lua state that loaded ember.core; it lives in a full userdata that
** is an upvalue of every ember.core function (so it outlives them all).
*/
typedef struct {
  /* A thread of our own, never resumed, on which callbacks from C run. */
  lua_State *L;
  ember_loop_t *loop;
  int tasks_ref;   /* registry ref: table coroutine -> its task's future */
  int closing;     /* the state is being closed: no more Lua calls */
} ember_lua_ctx_t;

#define EMBER_LUA_CTX(L) ((ember_lua_ctx_t *)lua_touserdata((L), lua_upvalueindex(1)))

/* Registers `funcs` into the table on top, each with the context as upvalue
** (the context userdata must be at `ctx_index`). */
void ember__lua_setfuncs(lua_State *L, int ctx_index, const luaL_Reg *funcs);

/* Pushes an ember.Error {code = "ETIMEDOUT", message = ...}. */
void ember__lua_push_error(lua_State *L, int code, const char *message);

/* Whether the value at `index` is an ember.Error. */
int ember__lua_is_error(lua_State *L, int index);

/* Raises an ember.Error; never returns. */
int ember__lua_raise(lua_State *L, int code, const char *fmt, ...);

/* A future payload holding a Lua value (a registry reference). */
extern const ember_payload_type_t ember__lua_value_payload;

/*
** How a binding teaches futures to push another module's payload to Lua
** (for example a decoded RPC reply). `push` pushes one value; it may raise.
*/
typedef void (*ember_lua_push_payload_fn)(lua_State *L, void *data);
int ember__lua_register_payload(const ember_payload_type_t *type,
                                ember_lua_push_payload_fn push);
/* The same, and when cache(data) says so, the value made on the first read
** becomes the future's payload: every read gets that one value (a reply
** holding RRefs is decoded once). */
int ember__lua_register_cached_payload(ember_lua_ctx_t *ctx,
                                       const ember_payload_type_t *type,
                                       ember_lua_push_payload_fn push,
                                       int (*cache)(const void *data));
/* Pushes a completed future's result or error value (may raise). */
void ember__lua_push_outcome_value(lua_State *L, ember_future_t *future);

/* Pushes a new Lua handle on `future`, taking one reference of the caller's. */
void ember__lua_push_future(lua_State *L, ember_future_t *future);
ember_future_t *ember__lua_check_future(lua_State *L, int index);

/* The task whose Lua code is running now, or NULL (signal-safe to read). */
lua_State *ember__lua_running_task(void);

/* --- Values on the wire (lua_wire.c) ------------------------------------- */

/* Pushes a new, empty message as a userdata whose __gc frees it, so an error
** raised while encoding leaks nothing. */
ember_wire_msg_t *ember__lua_push_msg(lua_State *L);

/*
** Encodes the Lua value at `index` as one msgpack value appended to msg's
** body, its tensors as msg's payloads. A value that cannot travel raises an
** error naming its path from `root` ("args[2].foo: cannot send a userdata").
*/
void ember__lua_wire_encode(lua_State *L, int index, ember_wire_msg_t *msg,
                            const char *root);

/*
** Checks `body` against the limits, then pushes the value it holds. `payloads`
** are the frame's received tensors (1-D uint8, borrowed). Raises a clear
** error on malformed input (bad payload index, size mismatch, unknown class).
*/
void ember__lua_wire_decode(lua_State *L, const char *body, size_t len,
                            ember_tensor_t *const *payloads, uint32_t count,
                            const ember_wire_limits_t *limits);

/* A tensor userdata ("ember.Tensor"): a box holding one reference, NULL once
** closed. lua_tensor.c owns the type; lua_wire.c makes and reads them too. */
typedef struct {
  ember_tensor_t *t;
} ember_lua_tensor_box_t;

/* Pushes an empty box (so that a tensor is anchored before Lua may raise);
** the caller stores its tensor in it. */
ember_lua_tensor_box_t *ember__lua_push_tensor_box(lua_State *L);
/* The box at `index`, or NULL when the value is not a tensor. */
ember_lua_tensor_box_t *ember__lua_tensor_box_at(lua_State *L, int index);

/* Pushes t as a tensor userdata, taking the caller's reference (NULL raises
** the tensor core's error). A leaf that requires grad comes back as the
** userdata it was registered with (ember__lua_intern_leaf), if Lua holds it. */
void ember__lua_push_tensor(lua_State *L, ember_tensor_t *t);
/* Registers the tensor at index, if a leaf that requires grad, as the one
** userdata of its tensor (see ember__lua_push_tensor). */
void ember__lua_intern_leaf(lua_State *L, int index);

/* Tells Lua's collector about a tensor's storage (a big one makes it work
** sooner). Call after a new tensor userdata is made. */
void ember__lua_account_tensor(lua_State *L, const ember_tensor_t *t);

/* --- The RPC agent (lua_rpc.c) and its RRef methods (lua_rref.c) ---------- */

struct ember_agent_s;
/* The agent of the Agent userdata at `index`: raises once it is closed,
** unless closed_ok (then NULL). */
struct ember_agent_s *ember__lua_agent_at(lua_State *L, int index,
                                          int closed_ok);
/* agent:rref_*() methods, merged into the Agent type's methods. */
extern const luaL_Reg ember__lua_rref_methods[];

/* Module openers, called by luaopen_ember_core with the context at index 1. */
void ember__lua_open_future(lua_State *L);
void ember__lua_open_tensor(lua_State *L);
void ember__lua_open_dist_autograd(lua_State *L);
void ember__lua_open_wire(lua_State *L);
void ember__lua_open_store(lua_State *L);
void ember__lua_open_launch(lua_State *L);
void ember__lua_open_rpc(lua_State *L);

#endif
