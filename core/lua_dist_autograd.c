/*
** Lua bindings for distributed autograd's C part (core/dist_autograd.c):
** core.dist_autograd.grad_map(), attach_recv(t, worker, context, send) and
** backward(map, roots, grads, retain_graph). Contexts, sends and messages
** are in lua/ember/dist_autograd.lua.
*/
#include <stdlib.h>
#include <string.h>

#include "dist_autograd.h"
#include "error.h"
#include "lua_common.h"

#define GRAD_MAP_METATABLE "ember.GradMap"

typedef struct {
  ember_grad_map_t *map; /* NULL once closed */
  int swapped;           /* its gradients are in the leaves' .grad */
} grad_map_box_t;

static ember_tensor_t *check_tensor_at(lua_State *L, int index,
                                       const char *what) {
  ember_lua_tensor_box_t *box = ember__lua_tensor_box_at(L, index);
  if (box == NULL || box->t == NULL) {
    luaL_error(L, "%s must be a tensor, got %s", what,
               box == NULL ? luaL_typename(L, index) : "a closed tensor");
  }
  return box->t;
}

static grad_map_box_t *check_map(lua_State *L, int index) {
  grad_map_box_t *box = luaL_checkudata(L, index, GRAD_MAP_METATABLE);
  if (box->map == NULL) luaL_error(L, "the gradient map was closed");
  return box;
}

static int raise_tensor_error(lua_State *L, int rc) {
  return ember__lua_raise(L, rc, "%s", ember_tensor_error());
}

/* grad_map() -> GradMap */
static int da_grad_map(lua_State *L) {
  grad_map_box_t *box = lua_newuserdatauv(L, sizeof *box, 0);
  box->map = NULL;
  box->swapped = 0;
  luaL_setmetatable(L, GRAD_MAP_METATABLE);
  box->map = ember_grad_map_new();
  if (box->map == NULL) return luaL_error(L, "out of memory");
  return 1;
}

/* map:gradients() -> {leaf = gradient}: the leaves are the userdata Lua
** holds for them, so `grads[param]` works. */
static int map_gradients(lua_State *L) {
  grad_map_box_t *box = check_map(L, 1);
  ember_tensor_t *leaf, *grad;
  size_t cursor = 0;
  lua_createtable(L, 0, (int)ember_grad_map_count(box->map));
  while (ember_grad_map_next(box->map, &cursor, &leaf, &grad)) {
    ember_tensor_retain(leaf);
    ember__lua_push_tensor(L, leaf);
    ember_tensor_retain(grad);
    ember__lua_push_tensor(L, grad);
    lua_rawset(L, -3);
  }
  return 1;
}

/* map:get(leaf) -> gradient or nil */
static int map_get(lua_State *L) {
  grad_map_box_t *box = check_map(L, 1);
  ember_tensor_t *grad =
      ember_grad_map_get(box->map, check_tensor_at(L, 2, "leaf"));
  if (grad == NULL) return 0;
  ember_tensor_retain(grad);
  ember__lua_push_tensor(L, grad);
  return 1;
}

static int map_count(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)ember_grad_map_count(check_map(L, 1)->map));
  return 1;
}

/* map:swap_into_leaves(): the leaves' .grad become the map's gradients;
** called again, both are put back. */
static int map_swap_into_leaves(lua_State *L) {
  grad_map_box_t *box = check_map(L, 1);
  ember_grad_map_swap_into_leaves(box->map);
  box->swapped = !box->swapped;
  return 0;
}

static int map_close(lua_State *L) {
  grad_map_box_t *box = luaL_checkudata(L, 1, GRAD_MAP_METATABLE);
  if (box->map == NULL) return 0;
  if (box->swapped) ember_grad_map_swap_into_leaves(box->map);
  ember_grad_map_free(box->map);
  box->map = NULL;
  return 0;
}

/* attach_recv(t, worker, context_id, send_id): t becomes the output of a
** RecvRpcBackward node. */
static int da_attach_recv(lua_State *L) {
  ember_tensor_t *t = check_tensor_at(L, 1, "attach_recv: t");
  ember_recv_info_t info = {
      .worker = (int)luaL_checkinteger(L, 2),
      .context_id = luaL_checkinteger(L, 3),
      .send_id = luaL_checkinteger(L, 4),
  };
  int rc = ember_dist_attach_recv(t, &info);
  if (rc != 0) return raise_tensor_error(L, rc);
  return 0;
}

/* recv_info(t) -> worker, context_id, send_id; nothing when t's grad_fn is
** not a RecvRpcBackward node. */
static int da_recv_info(lua_State *L) {
  ember_tensor_t *t = check_tensor_at(L, 1, "recv_info: t");
  ember_recv_info_t info;
  if (!ember_dist_recv_info(t->grad_fn, &info)) return 0;
  lua_pushinteger(L, info.worker);
  lua_pushinteger(L, (lua_Integer)info.context_id);
  lua_pushinteger(L, (lua_Integer)info.send_id);
  return 3;
}

/* The list at `index` as an array of borrowed tensors (NULL where the list
** has nil, when nil_ok), anchored by the list itself. */
static ember_tensor_t **tensor_list(lua_State *L, int index, lua_Integer n,
                                    const char *what, int nil_ok) {
  ember_tensor_t **items =
      lua_newuserdatauv(L, sizeof(ember_tensor_t *) * (size_t)(n > 0 ? n : 1), 0);
  for (lua_Integer i = 1; i <= n; i++) {
    int type = lua_rawgeti(L, index, i);
    if (type == LUA_TNIL && nil_ok) {
      items[i - 1] = NULL;
    } else {
      char name[64];
      snprintf(name, sizeof name, "%s[%lld]", what, (long long)i);
      items[i - 1] = check_tensor_at(L, -1, name);
    }
    lua_pop(L, 1);
  }
  return items;
}

/* Protected part of backward: pushes the outbox as a list of
** {worker=, context=, send=, grad=}. */
static int push_outbox(lua_State *L) {
  ember_grad_outbox_t *out = lua_touserdata(L, 1);
  lua_createtable(L, (int)out->count, 0);
  for (size_t i = 0; i < out->count; i++) {
    ember_outgoing_grad_t *item = &out->items[i];
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, item->to.worker);
    lua_setfield(L, -2, "worker");
    lua_pushinteger(L, (lua_Integer)item->to.context_id);
    lua_setfield(L, -2, "context");
    lua_pushinteger(L, (lua_Integer)item->to.send_id);
    lua_setfield(L, -2, "send");
    ember__lua_push_tensor(L, item->grad);
    item->grad = NULL; /* the userdata has it */
    lua_setfield(L, -2, "grad");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

/*
** backward(map, roots, grads_or_nil, retain_graph) -> outgoing: runs this
** worker's share from the roots; leaves' gradients go into map, and the
** gradients of received tensors come back as a list of
** {worker=, context=, send=, grad=}.
*/
static int da_backward(lua_State *L) {
  grad_map_box_t *box = check_map(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_Integer n = luaL_len(L, 2);
  luaL_argcheck(L, n >= 1 && n <= 1 << 20, 2, "expected a list of 1 or more "
                                              "tensors");
  ember_tensor_t **roots = tensor_list(L, 2, n, "roots", 0);
  ember_tensor_t **grads = NULL;
  if (!lua_isnoneornil(L, 3)) {
    luaL_checktype(L, 3, LUA_TTABLE);
    grads = tensor_list(L, 3, n, "grads", 1);
  }
  int retain_graph = lua_toboolean(L, 4);
  ember_grad_outbox_t out = {0};
  int rc = ember_dist_backward(box->map, roots, (const ember_tensor_t *const *)grads,
                               (int)n, retain_graph, &out);
  if (rc != 0) return raise_tensor_error(L, rc);
  lua_pushcfunction(L, push_outbox);
  lua_pushlightuserdata(L, &out);
  int status = lua_pcall(L, 1, 1, 0);
  ember_grad_outbox_clear(&out);
  if (status != LUA_OK) return lua_error(L);
  return 1;
}

static const luaL_Reg map_methods[] = {
    {"gradients", map_gradients},
    {"get", map_get},
    {"count", map_count},
    {"swap_into_leaves", map_swap_into_leaves},
    {"close", map_close},
    {NULL, NULL}};

static const luaL_Reg da_funcs[] = {
    {"grad_map", da_grad_map},
    {"attach_recv", da_attach_recv},
    {"recv_info", da_recv_info},
    {"backward", da_backward},
    {NULL, NULL}};

void ember__lua_open_dist_autograd(lua_State *L) {
  if (luaL_newmetatable(L, GRAD_MAP_METATABLE)) {
    luaL_newlib(L, map_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, map_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, map_close);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  luaL_newlib(L, da_funcs);
  lua_setfield(L, 2, "dist_autograd");
}
