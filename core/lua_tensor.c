/*
** The Tensor type for Lua: argument checks, 1-based dims and indices turned
** 0-based, calls into the C core, results pushed. Shape sugar (varargs,
** option tables), printing and the method table live in lua/ember/tensor.lua;
** this file registers `core.tensor`, the functions it builds on.
*/
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "autograd.h"
#include "device.h"
#include "error.h"
#include "lua_common.h"
#include "tensor.h"

#define TENSOR_METATABLE "ember.Tensor"

/* Upvalue-free registry keys: the Lua method table and a formatter. */
static const char methods_key = 'm';
static const char leaf_boxes_key = 'l';

/* ---- Boxing ------------------------------------------------------------------ */

typedef ember_lua_tensor_box_t tensor_box_t;

ember_lua_tensor_box_t *ember__lua_push_tensor_box(lua_State *L) {
  tensor_box_t *box = lua_newuserdatauv(L, sizeof *box, 0);
  box->t = NULL;
  luaL_setmetatable(L, TENSOR_METATABLE);
  return box;
}

ember_lua_tensor_box_t *ember__lua_tensor_box_at(lua_State *L, int index) {
  return luaL_testudata(L, index, TENSOR_METATABLE);
}

/*
** Lua's collector sees a tensor as a few bytes of userdata: tell it about the
** storage too, or big tensors pile up between cycles (and fresh memory is
** slow to fault in).
*/
#define GC_PRESSURE_MIN_BYTES (256u << 10)

void ember__lua_account_tensor(lua_State *L, const ember_tensor_t *t) {
  size_t nbytes = t->storage->nbytes;
  if (nbytes >= GC_PRESSURE_MIN_BYTES)
    lua_gc(L, LUA_GCSTEP, (int)(nbytes >> 10 > INT32_MAX ? INT32_MAX
                                                          : nbytes >> 10));
}

/*
** A leaf that requires grad (a parameter) keeps the Lua value it got when
** it started to require grad (or arrived): when C hands it back to Lua as a
** table key (the gradients of a distributed autograd context), it is that
** value, so `grads[param]` finds it. A weak table maps the C tensor to its
** box; a box in it holds its tensor, so the address is not reused while the
** entry lives.
*/
static int is_grad_leaf(const ember_tensor_t *t) {
  return t->requires_grad && t->grad_fn == NULL;
}

void ember__lua_intern_leaf(lua_State *L, int index) {
  tensor_box_t *box = luaL_testudata(L, index, TENSOR_METATABLE);
  if (box == NULL || box->t == NULL || !is_grad_leaf(box->t)) return;
  index = lua_absindex(L, index);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &leaf_boxes_key);
  lua_rawgetp(L, -1, box->t);
  tensor_box_t *held = luaL_testudata(L, -1, TENSOR_METATABLE);
  if (held == NULL || held->t != box->t) { /* none, or one closed since */
    lua_pushvalue(L, index);
    lua_rawsetp(L, -3, box->t);
  }
  lua_pop(L, 2);
}

/* Pushes the box that already holds leaf t (taking the caller's reference
** to t); returns 0, pushing nothing, when there is none. */
static int push_interned(lua_State *L, ember_tensor_t *t) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &leaf_boxes_key);
  lua_rawgetp(L, -1, t);
  lua_remove(L, -2);
  tensor_box_t *box = luaL_testudata(L, -1, TENSOR_METATABLE);
  if (box != NULL && box->t == t) {
    ember_tensor_release(t);
    return 1;
  }
  lua_pop(L, 1);
  return 0;
}

/*
** Raises the core's message `msg` as the error of the running binding,
** prefixed with the name it was called by ("view: ...") when Lua knows it
** (a method, a field or a metamethod) and the message does not start with
** it already. `level` is where the location comes from (luaL_where).
*/
static int raise_named(lua_State *L, int level, const char *msg) {
  lua_Debug ar;
  const char *name = NULL;
  if (lua_getstack(L, 0, &ar) && lua_getinfo(L, "n", &ar) &&
      ar.name != NULL && ar.namewhat != NULL &&
      (strcmp(ar.namewhat, "method") == 0 ||
       strcmp(ar.namewhat, "field") == 0 ||
       strcmp(ar.namewhat, "metamethod") == 0)) {
    name = ar.name;
  }
  size_t len = name != NULL ? strlen(name) : 0;
  luaL_where(L, level);
  if (name != NULL && !(strncmp(msg, name, len) == 0 && msg[len] == ':')) {
    lua_pushfstring(L, "%s: %s", name, msg);
  } else {
    lua_pushstring(L, msg);
  }
  lua_concat(L, 2);
  return lua_error(L);
}

/* Pushes t, taking the caller's reference. NULL raises the core's error. */
static void push_tensor(lua_State *L, ember_tensor_t *t) {
  if (t == NULL) raise_named(L, 2, ember_tensor_error());
  tensor_box_t *box = lua_newuserdatauv(L, sizeof *box, 0);
  box->t = t;
  luaL_setmetatable(L, TENSOR_METATABLE);
  ember__lua_account_tensor(L, t);
}

/* Ops give new userdata (a result closed with <close> is the caller's own
** to close); C that hands a parameter back to Lua uses this. */
void ember__lua_push_tensor(lua_State *L, ember_tensor_t *t) {
  if (t != NULL && is_grad_leaf(t) && push_interned(L, t)) return;
  push_tensor(L, t);
  if (is_grad_leaf(t)) ember__lua_intern_leaf(L, -1);
}

/* The tensor at index, or NULL when it is not one; a closed tensor is an
** error (not "not a tensor", which would hide why). */
static ember_tensor_t *to_tensor(lua_State *L, int index) {
  tensor_box_t *box = luaL_testudata(L, index, TENSOR_METATABLE);
  if (box == NULL) return NULL;
  if (box->t == NULL) luaL_argerror(L, index, "tensor was closed");
  return box->t;
}

/* Whether the value at index is a tensor that was closed. */
static int is_closed_at(lua_State *L, int index) {
  tensor_box_t *box = luaL_testudata(L, index, TENSOR_METATABLE);
  return box != NULL && box->t == NULL;
}

static ember_tensor_t *check_tensor(lua_State *L, int index) {
  tensor_box_t *box = luaL_testudata(L, index, TENSOR_METATABLE);
  if (box == NULL) luaL_typeerror(L, index, "tensor");
  if (box->t == NULL) luaL_argerror(L, index, "tensor was closed");
  return box->t;
}

/* Raises the core's message when rc < 0. */
static void check_rc(lua_State *L, int rc) {
  if (rc < 0) raise_named(L, 1, ember_tensor_error());
}

/* A 1-based (or negative) dim at index i to 0-based; `extra` allows ndim+1
** (unsqueeze, stack). */
static int check_dim(lua_State *L, int i, const ember_tensor_t *t, int extra) {
  lua_Integer d = luaL_checkinteger(L, i);
  if (d == 0) {
    luaL_argerror(L, i, "dimension 0 does not exist: dimensions count from 1");
  }
  if (d > EMBER_MAX_DIMS + 1 || d < -(EMBER_MAX_DIMS + 1)) {
    luaL_argerror(L, i, lua_pushfstring(L, "dimension %I out of range for a "
                                           "tensor of %d dimensions",
                                        d, t->ndim));
  }
  int dim = (int)(d > 0 ? d - 1 : d);
  if (ember_tensor_wrap_dim(&dim, t->ndim, extra) < 0) {
    luaL_argerror(L, i, ember_tensor_error());
  }
  return dim;
}

static int opt_dim(lua_State *L, int i, const ember_tensor_t *t) {
  return lua_isnoneornil(L, i) ? EMBER_ALL_DIMS : check_dim(L, i, t, 0);
}

/* A 1-based (or negative) element index to 0-based (negative kept). */
static int64_t check_index(lua_State *L, int i) {
  lua_Integer k = luaL_checkinteger(L, i);
  if (k == 0) luaL_argerror(L, i, "index 0 does not exist: indices count from 1");
  return k > 0 ? k - 1 : k;
}

static int check_shape_table(lua_State *L, int i, int64_t *shape) {
  luaL_checktype(L, i, LUA_TTABLE);
  lua_Integer len = luaL_len(L, i);
  if (len < 0 || len > EMBER_MAX_DIMS) {
    luaL_argerror(L, i, lua_pushfstring(L, "a shape has 0 to %d sizes, not %I",
                                        EMBER_MAX_DIMS, len));
  }
  int n = (int)len;
  for (int k = 0; k < n; k++) {
    lua_geti(L, i, k + 1);
    int ok;
    lua_Integer v = lua_tointegerx(L, -1, &ok);
    if (!ok) {
      luaL_argerror(L, i, lua_pushfstring(L, "size %d is not an integer", k + 1));
    }
    shape[k] = v;
    lua_pop(L, 1);
  }
  return n;
}

static ember_dtype_t opt_dtype(lua_State *L, int i, ember_dtype_t def) {
  if (lua_isnoneornil(L, i)) return def;
  ember_dtype_t dtype;
  if (ember_dtype_from_name(luaL_checkstring(L, i), &dtype) < 0) {
    luaL_argerror(L, i, ember_tensor_error());
  }
  return dtype;
}

/* Pushes t in a box the collector owns and returns it (borrowed): a
** temporary that a later Lua error cannot leak. */
static ember_tensor_t *anchor(lua_State *L, ember_tensor_t *t) {
  push_tensor(L, t);
  return t;
}

/* The Lua number or boolean at index i as a new 0-dim tensor on `like`'s
** device (the scalar's dtype rules are the C core's), or NULL with a
** message. A device gets it by a fill kernel: no waiting on the host. */
static ember_tensor_t *new_scalar(lua_State *L, int i,
                                  const ember_tensor_t *like) {
  if (lua_type(L, i) != LUA_TNUMBER && !lua_isboolean(L, i)) {
    luaL_typeerror(L, i, "tensor or number");
  }
  ember_dtype_t dtype = like != NULL ? like->dtype : EMBER_FLOAT32;
  if (lua_isboolean(L, i)) dtype = EMBER_BOOL;
  else if (!lua_isinteger(L, i) && !ember_dtype_is_float(dtype)) {
    dtype = EMBER_FLOAT32;
  }
  const ember_device_t *device = like != NULL ? like->storage->device
                                              : &ember_cpu_device;
  ember_tensor_t *t = ember_tensor_new(NULL, 0, dtype, device);
  if (t == NULL) return NULL;
  int rc;
  if (device->is_host && dtype == EMBER_INT64 && lua_isinteger(L, i)) {
    *(int64_t *)ember_tensor_data(t) = lua_tointeger(L, i); /* exact */
    rc = 0;
  } else {
    rc = device->fill(t, lua_isboolean(L, i) ? lua_toboolean(L, i)
                                             : lua_tonumber(L, i));
  }
  if (rc < 0) {
    ember_tensor_release(t);
    return NULL;
  }
  return t;
}

/* A tensor from index i, or a Lua number made into a 0-dim tensor like
** `like`. Borrowed: a new tensor is anchored on the stack. */
static ember_tensor_t *tensor_or_scalar(lua_State *L, int i,
                                        const ember_tensor_t *like) {
  ember_tensor_t *t = to_tensor(L, i);
  if (t != NULL) return t;
  return anchor(L, new_scalar(L, i, like));
}

/* The device named at index i ("cpu", "cuda", "cuda:1"); the CPU when it
** is none or nil. */
static const ember_device_t *opt_device(lua_State *L, int i) {
  if (lua_isnoneornil(L, i)) return &ember_cpu_device;
  const ember_device_t *device;
  if (ember_device_from_name(luaL_checkstring(L, i), &device) < 0) {
    luaL_error(L, "%s", ember_tensor_error());
  }
  return device;
}

/* t itself when the CPU can read it, else a host copy anchored on the
** stack (one copy, which waits for the device's queued work). */
static const ember_tensor_t *readable(lua_State *L, ember_tensor_t *t) {
  if (t->storage->device->is_host) return t;
  return anchor(L, ember_tensor_to_device(t, &ember_cpu_device, t->dtype, 0));
}

/* ---- Creation ------------------------------------------------------------------ */

/* full(shape, value, dtype, device) */
static int t_full(lua_State *L) {
  int64_t shape[EMBER_MAX_DIMS];
  int n = check_shape_table(L, 1, shape);
  double value = luaL_optnumber(L, 2, 0);
  ember_dtype_t dtype = opt_dtype(L, 3, EMBER_FLOAT32);
  const ember_device_t *device = opt_device(L, 4);
  ember_tensor_t *t = ember_tensor_new(shape, n, dtype, device);
  push_tensor(L, t);
  if (value != 0 || signbit(value)) check_rc(L, device->fill(t, value));
  return 1;
}

/* rand(shape, dtype, device) / randn(shape, dtype, device) */
static int random_tensor(lua_State *L, int normal) {
  int64_t shape[EMBER_MAX_DIMS];
  int n = check_shape_table(L, 1, shape);
  ember_dtype_t dtype = opt_dtype(L, 2, EMBER_FLOAT32);
  ember_tensor_t *t = ember_tensor_new(shape, n, dtype, opt_device(L, 3));
  push_tensor(L, t);
  check_rc(L, normal ? ember_tensor_normal_(t, 0, 1)
                     : ember_tensor_uniform_(t, 0, 1));
  return 1;
}

static int t_rand(lua_State *L) { return random_tensor(L, 0); }
static int t_randn(lua_State *L) { return random_tensor(L, 1); }

static int t_arange(lua_State *L) {
  double start = luaL_checknumber(L, 1), end = luaL_checknumber(L, 2);
  double step = luaL_optnumber(L, 3, 1);
  int all_int = lua_isinteger(L, 1) && lua_isinteger(L, 2) &&
                (lua_isnoneornil(L, 3) || lua_isinteger(L, 3));
  ember_dtype_t dtype = opt_dtype(L, 4, all_int ? EMBER_INT64 : EMBER_FLOAT32);
  push_tensor(L, ember_tensor_arange(start, end, step, dtype));
  return 1;
}

static int t_eye(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 0, 1, "size must be >= 0");
  push_tensor(L, ember_tensor_eye(n, opt_dtype(L, 2, EMBER_FLOAT32)));
  return 1;
}

/* Walks nested tables: records the shape at the first visit of each depth,
** checks every other sub-table against it, infers the dtype. */
typedef struct {
  int ndim;
  int64_t shape[EMBER_MAX_DIMS];
  int has_float, has_int, has_bool;
} nested_info_t;

static void scan_nested(lua_State *L, int index, int depth,
                        nested_info_t *info, int *shape_known) {
  int type = lua_type(L, index);
  if (is_closed_at(L, index)) {
    luaL_error(L, "tensor: a closed tensor inside the data");
  }
  ember_tensor_t *inner = to_tensor(L, index);
  if (inner != NULL && ember_tensor_numel(inner) != 1) {
    luaL_error(L, "tensor: a tensor of %d elements inside the data; only "
                  "one-element tensors convert to numbers (use T.stack)",
               (int)ember_tensor_numel(inner));
  }
  if (type == LUA_TNUMBER || type == LUA_TBOOLEAN || inner != NULL) {
    if (!*shape_known) {
      info->ndim = depth;
      *shape_known = 1;
    } else if (depth != info->ndim) {
      luaL_error(L, "tensor: ragged nested table (a number at depth %d, where "
                    "a list was expected)",
                 depth + 1);
    }
    if (type == LUA_TBOOLEAN) info->has_bool = 1;
    else if (type == LUA_TNUMBER && lua_isinteger(L, index)) info->has_int = 1;
    else if (inner != NULL && !ember_dtype_is_float(inner->dtype)) {
      info->has_int = 1;
    } else {
      info->has_float = 1;
    }
    return;
  }
  if (type != LUA_TTABLE) {
    luaL_error(L, "tensor: expected numbers, booleans or nested tables, found "
                  "a %s",
               luaL_typename(L, index));
  }
  if (depth >= EMBER_MAX_DIMS) luaL_error(L, "tensor: nested too deeply");
  lua_Integer n = (lua_Integer)lua_rawlen(L, index);
  if (!*shape_known) {
    info->shape[depth] = n;
    if (n == 0) {
      info->ndim = depth + 1;
      *shape_known = 1;
      return;
    }
  } else if (depth >= info->ndim || info->shape[depth] != n) {
    luaL_error(L, "tensor: ragged nested table (a list of %I where %s at depth "
                  "%d)",
               n, depth >= info->ndim ? "a number was expected"
                  : lua_pushfstring(L, "%I were expected",
                                    (lua_Integer)info->shape[depth]),
               depth + 1);
  }
  luaL_checkstack(L, 4, "tensor: nested too deeply");
  for (lua_Integer k = 1; k <= n; k++) {
    lua_rawgeti(L, index, k);
    scan_nested(L, lua_gettop(L), depth + 1, info, shape_known);
    lua_pop(L, 1);
  }
}

/* Raw reads, as scan_nested's: what was measured is what is filled. */
static void fill_nested(lua_State *L, int index, ember_tensor_t *t,
                        int64_t *flat) {
  if (lua_type(L, index) == LUA_TTABLE) {
    lua_Integer n = (lua_Integer)lua_rawlen(L, index);
    for (lua_Integer k = 1; k <= n; k++) {
      lua_rawgeti(L, index, k);
      fill_nested(L, lua_gettop(L), t, flat);
      lua_pop(L, 1);
    }
    return;
  }
  if (*flat >= ember_tensor_numel(t)) return;
  ember_tensor_t *inner = to_tensor(L, index);
  if (t->dtype == EMBER_INT64 && inner == NULL && lua_isinteger(L, index)) {
    ((int64_t *)ember_tensor_data(t))[(*flat)++] = lua_tointeger(L, index);
    return;
  }
  double v = inner != NULL ? ember_tensor_get(inner, 0)
             : lua_isboolean(L, index) ? lua_toboolean(L, index)
                                       : lua_tonumber(L, index);
  ember_tensor_set(t, (*flat)++, v);
}

/* from_table(data, dtype): nested tables of numbers (or booleans). Lua
** integers make int64, any float makes float32, booleans make bool. */
static int t_from_table(lua_State *L) {
  nested_info_t info = {0};
  int shape_known = 0;
  lua_settop(L, 2);
  scan_nested(L, 1, 0, &info, &shape_known);
  ember_dtype_t def = info.has_float ? EMBER_FLOAT32
                      : info.has_int ? EMBER_INT64
                      : info.has_bool ? EMBER_BOOL
                                      : EMBER_FLOAT32;
  ember_tensor_t *t = ember_tensor_new(info.shape, info.ndim,
                                       opt_dtype(L, 2, def), NULL);
  push_tensor(L, t);
  int64_t flat = 0;
  fill_nested(L, 1, t, &flat);
  return 1;
}

static int t_manual_seed(lua_State *L) {
  ember_random_seed((uint64_t)luaL_checkinteger(L, 1));
  return 0;
}

static int t_initial_seed(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)ember_random_initial_seed());
  return 1;
}

/* ---- Metadata -------------------------------------------------------------------- */

static void push_shape(lua_State *L, const int64_t *shape, int ndim) {
  lua_createtable(L, ndim, 0);
  for (int i = 0; i < ndim; i++) {
    lua_pushinteger(L, shape[i]);
    lua_rawseti(L, -2, i + 1);
  }
}

static int t_size(lua_State *L) {
  ember_tensor_t *t = check_tensor(L, 1);
  if (lua_isnoneornil(L, 2)) {
    push_shape(L, t->shape, t->ndim);
  } else {
    lua_pushinteger(L, t->shape[check_dim(L, 2, t, 0)]);
  }
  return 1;
}

static int t_stride(lua_State *L) {
  ember_tensor_t *t = check_tensor(L, 1);
  if (lua_isnoneornil(L, 2)) {
    push_shape(L, t->strides, t->ndim);
  } else {
    lua_pushinteger(L, t->strides[check_dim(L, 2, t, 0)]);
  }
  return 1;
}

static int t_dim(lua_State *L) {
  lua_pushinteger(L, check_tensor(L, 1)->ndim);
  return 1;
}

static int t_numel(lua_State *L) {
  lua_pushinteger(L, ember_tensor_numel(check_tensor(L, 1)));
  return 1;
}

static int t_dtype(lua_State *L) {
  lua_pushstring(L, ember_dtype_name(check_tensor(L, 1)->dtype));
  return 1;
}

static int t_device(lua_State *L) {
  lua_pushstring(L, check_tensor(L, 1)->storage->device->name);
  return 1;
}

static int t_is_contiguous(lua_State *L) {
  lua_pushboolean(L, ember_tensor_is_contiguous(check_tensor(L, 1)));
  return 1;
}

/* is_tensor(v): false for a closed tensor too; is_closed(v) tells it. */
static int t_is_tensor(lua_State *L) {
  tensor_box_t *box = luaL_testudata(L, 1, TENSOR_METATABLE);
  lua_pushboolean(L, box != NULL && box->t != NULL);
  return 1;
}

static int t_is_closed(lua_State *L) {
  tensor_box_t *box = luaL_testudata(L, 1, TENSOR_METATABLE);
  lua_pushboolean(L, box != NULL && box->t == NULL);
  return 1;
}

/* Pushes element `flat` as a Lua value of the tensor's kind. */
static void push_element(lua_State *L, const ember_tensor_t *t, int64_t flat) {
  if (t->dtype == EMBER_BOOL) {
    lua_pushboolean(L, ember_tensor_get(t, flat) != 0);
  } else if (!ember_dtype_is_float(t->dtype)) {
    lua_pushinteger(L, ember_tensor_get_int(t, flat));
  } else {
    lua_pushnumber(L, ember_tensor_get(t, flat));
  }
}

static int t_item(lua_State *L) {
  ember_tensor_t *t = check_tensor(L, 1);
  if (ember_tensor_numel(t) != 1) {
    char buf[128];
    return luaL_error(L, "item: only a tensor of one element converts to a "
                         "number, not one of shape %s",
                      ember_shape_string(t->shape, t->ndim, buf, sizeof buf));
  }
  push_element(L, readable(L, t), 0); /* a failed copy raises */
  return 1;
}

/* Flat list of the elements in row-major order (for printing). */
static int t_values(lua_State *L) {
  const ember_tensor_t *t = readable(L, check_tensor(L, 1));
  int64_t n = ember_tensor_numel(t);
  lua_createtable(L, (int)n, 0);
  for (int64_t i = 0; i < n; i++) {
    push_element(L, t, i);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static void push_nested(lua_State *L, const ember_tensor_t *t, int dim,
                        int64_t *flat) {
  if (dim == t->ndim) {
    push_element(L, t, (*flat)++);
    return;
  }
  luaL_checkstack(L, 2, "totable");
  lua_createtable(L, (int)t->shape[dim], 0);
  for (int64_t i = 0; i < t->shape[dim]; i++) {
    push_nested(L, t, dim + 1, flat);
    lua_rawseti(L, -2, i + 1);
  }
}

static int t_totable(lua_State *L) {
  const ember_tensor_t *t = readable(L, check_tensor(L, 1));
  int64_t flat = 0;
  push_nested(L, t, 0, &flat);
  return 1;
}

/* ---- Views ---------------------------------------------------------------------------- */

static int reshape_impl(lua_State *L, int view_only) {
  ember_tensor_t *t = check_tensor(L, 1);
  int64_t shape[EMBER_MAX_DIMS];
  int n = check_shape_table(L, 2, shape);
  push_tensor(L, ember_tensor_reshape(t, shape, n, view_only));
  return 1;
}

static int t_view(lua_State *L) { return reshape_impl(L, 1); }
static int t_reshape(lua_State *L) { return reshape_impl(L, 0); }

static int t_transpose(lua_State *L) {
  ember_tensor_t *t = check_tensor(L, 1);
  int d0 = check_dim(L, 2, t, 0), d1 = check_dim(L, 3, t, 0);
  push_tensor(L, ember_tensor_transpose(t, d0, d1));
  return 1;
}

/* t:t(): the transpose of a matrix; vectors and scalars as they are. */
static int t_t(lua_State *L) {
  ember_tensor_t *t = check_tensor(L, 1);
  if (t->ndim > 2) {
    return luaL_error(L, "t: expects a tensor of at most 2 dimensions, not %d; "
                         "use transpose",
                      t->ndim);
  }
  if (t->ndim < 2) {
    lua_settop(L, 1);
    return 1;
  }
  push_tensor(L, ember_tensor_matrix_t(t));
  return 1;
}

static int t_permute(lua_State *L) {
  ember_tensor_t *t = check_tensor(L, 1);
  int64_t dims64[EMBER_MAX_DIMS];
  int dims[EMBER_MAX_DIMS];
  int n = check_shape_table(L, 2, dims64);
  for (int i = 0; i < n; i++) {
    if (dims64[i] == 0) luaL_argerror(L, 2, "dimensions count from 1");
    if (dims64[i] > EMBER_MAX_DIMS || dims64[i] < -EMBER_MAX_DIMS) {
      luaL_argerror(L, 2, "dimension out of range");
    }
    dims[i] = (int)(dims64[i] > 0 ? dims64[i] - 1 : dims64[i]);
  }
  push_tensor(L, ember_tensor_permute(t, dims, n));
  return 1;
}

static int t_narrow(lua_State *L) {
  ember_tensor_t *t = check_tensor(L, 1);
  int dim = check_dim(L, 2, t, 0);
  int64_t start = check_index(L, 3);
  push_tensor(L, ember_tensor_narrow(t, dim, start, luaL_checkinteger(L, 4)));
  return 1;
}

static int t_select(lua_State *L) {
  ember_tensor_t *t = check_tensor(L, 1);
  int dim = check_dim(L, 2, t, 0);
  push_tensor(L, ember_tensor_select(t, dim, check_index(L, 3)));
  return 1;
}

static int t_unsqueeze(lua_State *L) {
  ember_tensor_t *t = check_tensor(L, 1);
  push_tensor(L, ember_tensor_unsqueeze(t, check_dim(L, 2, t, 1)));
  return 1;
}

static int t_squeeze(lua_State *L) {
  ember_tensor_t *t = check_tensor(L, 1);
  if (lua_isnoneornil(L, 2)) {
    push_tensor(L, ember_tensor_squeeze(t, 0, 1));
  } else {
    push_tensor(L, ember_tensor_squeeze(t, check_dim(L, 2, t, 0), 0));
  }
  return 1;
}

/* A tensor has at most 2^40 elements (core/tensor.c's bound): an expanded
** view of more would overflow its element count. */
#define MAX_NUMEL (INT64_C(1) << 40)

static int t_expand(lua_State *L) {
  ember_tensor_t *t = check_tensor(L, 1);
  int64_t shape[EMBER_MAX_DIMS];
  int n = check_shape_table(L, 2, shape);
  int64_t numel = 1;
  for (int i = 0; i < n; i++) {
    int64_t size = shape[i] == -1 && i >= n - t->ndim
                       ? t->shape[i - (n - t->ndim)]
                       : shape[i];
    if (size > 0 && numel > MAX_NUMEL / size) {
      char buf[128];
      return luaL_error(L, "expand: shape %s is too large (more than 2^40 "
                           "elements)",
                        ember_shape_string(shape, n, buf, sizeof buf));
    }
    if (size >= 0) numel *= size;
  }
  push_tensor(L, ember_tensor_expand(t, shape, n));
  return 1;
}

static int t_contiguous(lua_State *L) {
  push_tensor(L, ember_tensor_contiguous(check_tensor(L, 1)));
  return 1;
}

static int t_clone(lua_State *L) {
  ember_tensor_t *t = check_tensor(L, 1);
  push_tensor(L, ember_tensor_to(t, t->dtype, 1));
  return 1;
}

static int t_detach(lua_State *L) {
  push_tensor(L, ember_tensor_detach(check_tensor(L, 1)));
  return 1;
}

/* to(t, dtype, copy, device): device nil keeps t's. */
static int t_to(lua_State *L) {
  ember_tensor_t *t = check_tensor(L, 1);
  const ember_device_t *device = lua_isnoneornil(L, 4) ? NULL
                                                      : opt_device(L, 4);
  push_tensor(L, ember_tensor_to_device(t, device, opt_dtype(L, 2, t->dtype),
                                        lua_toboolean(L, 3)));
  return 1;
}

/* ---- CUDA devices ------------------------------------------------------------------------ */

static int cuda_count(void) {
  int count;
  return ember_cuda_device_count(&count) == 0 ? count : 0;
}

/* check_device(name) -> the device's own name ("cuda" -> "cuda:0"), or an
** error saying why it cannot be used. */
static int t_check_device(lua_State *L) {
  lua_pushstring(L, opt_device(L, 1)->name);
  return 1;
}

static int t_cuda_device_count(lua_State *L) {
  int count;
  int rc = ember_cuda_device_count(&count);
  if (rc < 0 && rc != EMBER_ENOCUDA) check_rc(L, rc);
  lua_pushinteger(L, count);
  return 1;
}

/* Why there is no CUDA device, or nil when there is one. */
static int t_cuda_unavailable_reason(lua_State *L) {
  int count;
  int rc = ember_cuda_device_count(&count);
  if (rc == EMBER_ENOCUDA) lua_pushstring(L, "this build has no CUDA backend");
  else if (rc < 0) lua_pushstring(L, ember_tensor_error());
  else if (count == 0) lua_pushstring(L, "no CUDA device or driver was found");
  else lua_pushnil(L);
  return 1;
}

static int t_cuda_is_simulated(lua_State *L) {
  lua_pushboolean(L, cuda_count() > 0 && ember_cuda_is_simulated());
  return 1;
}

static int check_cuda_index(lua_State *L, int i) {
  lua_Integer index = luaL_optinteger(L, i, 0);
  luaL_argcheck(L, index >= 0 && index <= INT32_MAX, i,
                "a device index is an integer from 0");
  if (ember_cuda_device((int)index) == NULL) {
    luaL_error(L, "%s", ember_tensor_error());
  }
  return (int)index;
}

static int t_cuda_device_name(lua_State *L) {
  char name[256];
  check_rc(L, ember_cuda_device_name(check_cuda_index(L, 1), name,
                                     sizeof name));
  lua_pushstring(L, name);
  return 1;
}

static int t_cuda_synchronize(lua_State *L) {
  const ember_device_t *device = ember_cuda_device(check_cuda_index(L, 1));
  check_rc(L, device->synchronize(device));
  return 0;
}

static int t_cuda_memory_stats(lua_State *L) {
  ember_memory_stats_t stats;
  check_rc(L, ember_cuda_memory_stats(check_cuda_index(L, 1), &stats));
  lua_createtable(L, 0, 5);
  lua_pushinteger(L, (lua_Integer)stats.allocated_bytes);
  lua_setfield(L, -2, "allocated_bytes");
  lua_pushinteger(L, (lua_Integer)stats.cached_bytes);
  lua_setfield(L, -2, "cached_bytes");
  lua_pushinteger(L, (lua_Integer)stats.peak_bytes);
  lua_setfield(L, -2, "peak_bytes");
  lua_pushinteger(L, (lua_Integer)stats.raw_allocs);
  lua_setfield(L, -2, "raw_allocs");
  lua_pushinteger(L, (lua_Integer)stats.reuses);
  lua_setfield(L, -2, "reuses");
  return 1;
}

static int t_cuda_empty_cache(lua_State *L) {
  check_rc(L, ember_cuda_empty_cache());
  return 0;
}

/* ---- Math ---------------------------------------------------------------------------------- */

/* The operand at i of op `name` as a number: a string that looks like one
** is not taken (`"1" + t` is a mistake, not arithmetic). */
static double scalar_operand(lua_State *L, int i, const char *name) {
  if (lua_type(L, i) != LUA_TNUMBER) {
    luaL_error(L, "%s: operand %d must be a tensor or a number, got %s", name,
               i, luaL_typename(L, i));
  }
  return lua_tonumber(L, i);
}

/* a op b where either may be a number. */
static int binary(lua_State *L, ember_binary_op_t op, const char *name) {
  ember_tensor_t *a = to_tensor(L, 1), *b = to_tensor(L, 2);
  if (a != NULL && b != NULL) {
    push_tensor(L, ember_tensor_binary(op, a, b));
  } else if (a != NULL) {
    double s = scalar_operand(L, 2, name);
    push_tensor(L, ember_tensor_binary_scalar(op, a, s, lua_isinteger(L, 2), 0));
  } else if (b != NULL) {
    double s = scalar_operand(L, 1, name);
    push_tensor(L, ember_tensor_binary_scalar(op, b, s, lua_isinteger(L, 1), 1));
  } else {
    return luaL_error(L, "%s: expected a tensor operand, got %s and %s", name,
                      luaL_typename(L, 1), luaL_typename(L, 2));
  }
  return 1;
}

#define BINARY_FN(name, op)                                                    \
  static int t_##name(lua_State *L) { return binary(L, op, #name); }
BINARY_FN(add, EMBER_OP_ADD)
BINARY_FN(sub, EMBER_OP_SUB)
BINARY_FN(mul, EMBER_OP_MUL)
BINARY_FN(div, EMBER_OP_DIV)
BINARY_FN(pow, EMBER_OP_POW)
BINARY_FN(maximum, EMBER_OP_MAXIMUM)
BINARY_FN(minimum, EMBER_OP_MINIMUM)
BINARY_FN(eq, EMBER_OP_EQ)
BINARY_FN(ne, EMBER_OP_NE)
BINARY_FN(lt, EMBER_OP_LT)
BINARY_FN(le, EMBER_OP_LE)
BINARY_FN(gt, EMBER_OP_GT)
BINARY_FN(ge, EMBER_OP_GE)

#define UNARY_FN(name, op)                                                     \
  static int t_##name(lua_State *L) {                                          \
    push_tensor(L, ember_tensor_unary(op, check_tensor(L, 1), 0, 0));          \
    return 1;                                                                  \
  }
UNARY_FN(neg, EMBER_OP_NEG)
UNARY_FN(exp, EMBER_OP_EXP)
UNARY_FN(log, EMBER_OP_LOG)
UNARY_FN(sqrt, EMBER_OP_SQRT)
UNARY_FN(tanh, EMBER_OP_TANH)
UNARY_FN(sigmoid, EMBER_OP_SIGMOID)
UNARY_FN(relu, EMBER_OP_RELU)
UNARY_FN(abs, EMBER_OP_ABS)
UNARY_FN(sign, EMBER_OP_SIGN)
UNARY_FN(sin, EMBER_OP_SIN)
UNARY_FN(cos, EMBER_OP_COS)
UNARY_FN(log1p, EMBER_OP_LOG1P)
UNARY_FN(reciprocal, EMBER_OP_RECIPROCAL)
UNARY_FN(logical_not, EMBER_OP_NOT)

static int t_clamp(lua_State *L) {
  ember_tensor_t *t = check_tensor(L, 1);
  double lo = luaL_optnumber(L, 2, -HUGE_VAL), hi = luaL_optnumber(L, 3, HUGE_VAL);
  push_tensor(L, ember_tensor_unary(EMBER_OP_CLAMP, t, lo, hi));
  return 1;
}

/* sum/prod(t, [dim], [keepdim]) */
static int reduce(lua_State *L, ember_reduce_op_t op) {
  ember_tensor_t *t = check_tensor(L, 1);
  int dim = opt_dim(L, 2, t);
  push_tensor(L, ember_tensor_reduce(op, t, dim, lua_toboolean(L, 3), NULL));
  return 1;
}

static int t_sum(lua_State *L) { return reduce(L, EMBER_REDUCE_SUM); }
static int t_prod(lua_State *L) { return reduce(L, EMBER_REDUCE_PROD); }

static int t_mean(lua_State *L) {
  ember_tensor_t *t = check_tensor(L, 1);
  int dim = opt_dim(L, 2, t);
  push_tensor(L, ember_tensor_mean(t, dim, lua_toboolean(L, 3)));
  return 1;
}

/* Turns 0-based positions into 1-based ones (a new int64 tensor). */
static void push_positions(lua_State *L, ember_tensor_t *index) {
  if (index == NULL) push_tensor(L, NULL);
  int was = ember_set_grad_enabled(0);
  ember_tensor_t *one_based = ember_tensor_unary(EMBER_OP_AXPB, index, 1, 1);
  ember_set_grad_enabled(was);
  ember_tensor_release(index);
  push_tensor(L, one_based);
}

/* max/min(t): the value; max/min(t, dim, [keepdim]): values and positions. */
static int extreme(lua_State *L, ember_reduce_op_t op) {
  ember_tensor_t *t = check_tensor(L, 1);
  if (lua_isnoneornil(L, 2)) {
    push_tensor(L, ember_tensor_reduce(op, t, EMBER_ALL_DIMS, 0, NULL));
    return 1;
  }
  if (to_tensor(L, 2) != NULL) { /* elementwise with another tensor */
    return binary(L, op == EMBER_REDUCE_MAX ? EMBER_OP_MAXIMUM
                                            : EMBER_OP_MINIMUM,
                  op == EMBER_REDUCE_MAX ? "max" : "min");
  }
  ember_tensor_t *index = NULL;
  ember_tensor_t *values = ember_tensor_reduce(op, t, check_dim(L, 2, t, 0),
                                               lua_toboolean(L, 3), &index);
  if (values == NULL) ember_tensor_release(index);
  push_tensor(L, values);
  push_positions(L, index);
  return 2;
}

static int t_max(lua_State *L) { return extreme(L, EMBER_REDUCE_MAX); }
static int t_min(lua_State *L) { return extreme(L, EMBER_REDUCE_MIN); }

static int arg_extreme(lua_State *L, int min) {
  ember_tensor_t *t = check_tensor(L, 1);
  int dim = opt_dim(L, 2, t);
  push_positions(L, ember_tensor_argmax(t, dim, lua_toboolean(L, 3), min));
  return 1;
}

static int t_argmax(lua_State *L) { return arg_extreme(L, 0); }
static int t_argmin(lua_State *L) { return arg_extreme(L, 1); }

static int t_matmul(lua_State *L) {
  push_tensor(L, ember_tensor_matmul(check_tensor(L, 1), check_tensor(L, 2)));
  return 1;
}

/* addmm(bias, a, b, [beta], [alpha]) */
static int t_addmm(lua_State *L) {
  ember_tensor_t *bias = check_tensor(L, 1), *a = check_tensor(L, 2),
                 *b = check_tensor(L, 3);
  push_tensor(L, ember_tensor_addmm(bias, a, b, luaL_optnumber(L, 4, 1),
                                    luaL_optnumber(L, 5, 1)));
  return 1;
}

static int t_mm(lua_State *L) {
  push_tensor(L, ember_tensor_addmm(NULL, check_tensor(L, 1),
                                    check_tensor(L, 2), 0, 1));
  return 1;
}

static int softmax_impl(lua_State *L, int log) {
  ember_tensor_t *t = check_tensor(L, 1);
  int dim = t->ndim == 0 ? 0 : check_dim(L, 2, t, 0);
  push_tensor(L, ember_tensor_softmax(t, dim, log));
  return 1;
}

static int t_softmax(lua_State *L) { return softmax_impl(L, 0); }
static int t_log_softmax(lua_State *L) { return softmax_impl(L, 1); }

/* cat/stack(list, dim) */
static int join(lua_State *L, int stacked) {
  lua_settop(L, 2); /* the scratch space goes at 3 */
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer len = luaL_len(L, 1);
  luaL_argcheck(L, len >= 1, 1, "expected a non-empty list of tensors");
  luaL_argcheck(L, len <= (1 << 24), 1, "too many tensors at once");
  int n = (int)len;
  /* Scratch space the collector frees, also when an error unwinds, and a
  ** table that keeps each element alive (an __index may make them anew). */
  ember_tensor_t **list = lua_newuserdatauv(L, sizeof *list * (size_t)n, 0);
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    lua_geti(L, 1, i + 1);
    if (is_closed_at(L, -1)) {
      return luaL_argerror(L, 1, lua_pushfstring(L, "element %d is a closed "
                                                    "tensor", i + 1));
    }
    list[i] = to_tensor(L, -1);
    if (list[i] == NULL) {
      return luaL_argerror(L, 1, lua_pushfstring(L, "element %d is not a "
                                                    "tensor", i + 1));
    }
    lua_rawseti(L, -2, i + 1);
  }
  int dim = 0;
  if (!lua_isnoneornil(L, 2)) {
    ember_tensor_t *first = list[0];
    dim = check_dim(L, 2, first, stacked);
  }
  push_tensor(L, stacked ? ember_tensor_stack(list, n, dim)
                         : ember_tensor_cat(list, n, dim));
  return 1;
}

static int t_cat(lua_State *L) { return join(L, 0); }
static int t_stack(lua_State *L) { return join(L, 1); }

/* A 1-based index tensor made 0-based int64 (borrowed, anchored). */
static ember_tensor_t *zero_based(lua_State *L, int i) {
  ember_tensor_t *index = check_tensor(L, i);
  if (ember_dtype_is_float(index->dtype) || index->dtype == EMBER_BOOL) {
    luaL_argerror(L, i, lua_pushfstring(L, "index must be an integer tensor, "
                                           "not %s",
                                        ember_dtype_name(index->dtype)));
  }
  int was = ember_set_grad_enabled(0);
  ember_tensor_t *as64 = ember_tensor_to(index, EMBER_INT64, 0);
  ember_tensor_t *z = as64 != NULL
                          ? ember_tensor_unary(EMBER_OP_AXPB, as64, 1, -1)
                          : NULL;
  ember_tensor_release(as64);
  ember_set_grad_enabled(was);
  return anchor(L, z);
}

static int t_gather(lua_State *L) {
  ember_tensor_t *t = check_tensor(L, 1);
  int dim = check_dim(L, 2, t, 0);
  ember_tensor_t *index = zero_based(L, 3);
  push_tensor(L, ember_tensor_gather(t, dim, index));
  return 1;
}

/* scatter(t, dim, index, src or number, [accumulate]) */
static int t_scatter(lua_State *L) {
  ember_tensor_t *t = check_tensor(L, 1);
  int dim = check_dim(L, 2, t, 0);
  int accumulate = lua_toboolean(L, 5);
  ember_tensor_t *index = zero_based(L, 3);
  ember_tensor_t *src = tensor_or_scalar(L, 4, t);
  if (src->ndim == 0) { /* a number: broadcast it to the index's shape */
    src = anchor(L, ember_tensor_expand(src, index->shape, index->ndim));
  }
  push_tensor(L, ember_tensor_scatter(t, dim, index, src, accumulate));
  return 1;
}

static int t_index_select(lua_State *L) {
  ember_tensor_t *t = check_tensor(L, 1);
  int dim = check_dim(L, 2, t, 0);
  ember_tensor_t *index = zero_based(L, 3);
  push_tensor(L, ember_tensor_index_select(t, dim, index));
  return 1;
}

/* where(cond, a, b): a and b tensors or numbers. */
static int t_where(lua_State *L) {
  ember_tensor_t *cond = check_tensor(L, 1);
  lua_settop(L, 3);
  ember_tensor_t *like = to_tensor(L, 2) ? to_tensor(L, 2) : to_tensor(L, 3);
  ember_tensor_t *a = tensor_or_scalar(L, 2, like);
  ember_tensor_t *b = tensor_or_scalar(L, 3, like != NULL ? like : a);
  push_tensor(L, ember_tensor_where(cond, a, b));
  return 1;
}

static int t_multinomial(lua_State *L) {
  ember_tensor_t *probs = check_tensor(L, 1);
  lua_Integer n = luaL_optinteger(L, 2, 1);
  push_positions(L, ember_tensor_multinomial(probs, n, lua_toboolean(L, 3)));
  return 1;
}

/* ---- In place (each returns the tensor) ------------------------------------------------------ */

static int t_copy_(lua_State *L) {
  ember_tensor_t *dst = check_tensor(L, 1);
  lua_settop(L, 2);
  ember_tensor_t *src = tensor_or_scalar(L, 2, dst);
  check_rc(L, ember_tensor_copy_(dst, src));
  lua_settop(L, 1);
  return 1;
}

static int t_fill_(lua_State *L) {
  ember_tensor_t *dst = check_tensor(L, 1);
  double v = lua_isboolean(L, 2) ? lua_toboolean(L, 2) : luaL_checknumber(L, 2);
  check_rc(L, ember_tensor_fill_(dst, v));
  lua_settop(L, 1);
  return 1;
}

static int t_zero_(lua_State *L) {
  check_rc(L, ember_tensor_fill_(check_tensor(L, 1), 0));
  lua_settop(L, 1);
  return 1;
}

/* dst op= alpha * src, src a tensor or number */
static int binary_(lua_State *L, ember_binary_op_t op) {
  ember_tensor_t *dst = check_tensor(L, 1);
  double alpha = luaL_optnumber(L, 3, 1);
  lua_settop(L, 3);
  ember_tensor_t *src = to_tensor(L, 2);
  if (src != NULL) {
    check_rc(L, ember_tensor_binary_(op, dst, src, alpha));
  } else {
    /* Released at once rather than left to the collector: an optimizer's
    ** step makes many, and each holds a block of device memory. */
    ember_tensor_t *scalar = new_scalar(L, 2, dst);
    int rc = scalar != NULL ? ember_tensor_binary_(op, dst, scalar, alpha)
                            : EMBER_ENOMEM;
    ember_tensor_release(scalar);
    check_rc(L, rc);
  }
  lua_settop(L, 1);
  return 1;
}

static int t_add_(lua_State *L) { return binary_(L, EMBER_OP_ADD); }
static int t_sub_(lua_State *L) { return binary_(L, EMBER_OP_SUB); }
static int t_mul_(lua_State *L) { return binary_(L, EMBER_OP_MUL); }
static int t_div_(lua_State *L) { return binary_(L, EMBER_OP_DIV); }

static int unary_(lua_State *L, ember_unary_op_t op, double a0, double a1) {
  check_rc(L, ember_tensor_unary_(op, check_tensor(L, 1), a0, a1));
  lua_settop(L, 1);
  return 1;
}

static int t_clamp_(lua_State *L) {
  return unary_(L, EMBER_OP_CLAMP, luaL_optnumber(L, 2, -HUGE_VAL),
                luaL_optnumber(L, 3, HUGE_VAL));
}
static int t_sqrt_(lua_State *L) { return unary_(L, EMBER_OP_SQRT, 0, 0); }
static int t_neg_(lua_State *L) { return unary_(L, EMBER_OP_NEG, 0, 0); }
static int t_relu_(lua_State *L) { return unary_(L, EMBER_OP_RELU, 0, 0); }

static int addc_(lua_State *L, int div) {
  ember_tensor_t *dst = check_tensor(L, 1);
  check_rc(L, ember_tensor_addc_(dst, check_tensor(L, 2), check_tensor(L, 3),
                                 luaL_optnumber(L, 4, 1), div));
  lua_settop(L, 1);
  return 1;
}

static int t_addcmul_(lua_State *L) { return addc_(L, 0); }
static int t_addcdiv_(lua_State *L) { return addc_(L, 1); }

/* The finite number at i (default def): NaN and infinities make no draws. */
static double opt_finite(lua_State *L, int i, double def, const char *what) {
  double v = luaL_optnumber(L, i, def);
  if (!isfinite(v)) {
    luaL_argerror(L, i, lua_pushfstring(L, "%s must be a finite number, not "
                                           "%f", what, v));
  }
  return v;
}

static int t_uniform_(lua_State *L) {
  ember_tensor_t *t = check_tensor(L, 1);
  double from = opt_finite(L, 2, 0, "from"), to = opt_finite(L, 3, 1, "to");
  if (from > to) {
    return luaL_error(L, "uniform_: expects a range [from, to) with from <= "
                         "to, got from=%f > to=%f", from, to);
  }
  check_rc(L, ember_tensor_uniform_(t, from, to));
  lua_settop(L, 1);
  return 1;
}

static int t_normal_(lua_State *L) {
  ember_tensor_t *t = check_tensor(L, 1);
  double mean = opt_finite(L, 2, 0, "mean"), std = opt_finite(L, 3, 1, "std");
  luaL_argcheck(L, std >= 0, 3, "std must be >= 0");
  check_rc(L, ember_tensor_normal_(t, mean, std));
  lua_settop(L, 1);
  return 1;
}

static int t_allclose(lua_State *L) {
  int result;
  check_rc(L, ember_tensor_allclose(check_tensor(L, 1), check_tensor(L, 2),
                                    luaL_optnumber(L, 3, 1e-5),
                                    luaL_optnumber(L, 4, 1e-8), &result));
  lua_pushboolean(L, result);
  return 1;
}

static int t_equal(lua_State *L) {
  int result;
  check_rc(L, ember_tensor_allclose(check_tensor(L, 1), check_tensor(L, 2), 0,
                                    0, &result));
  lua_pushboolean(L, result);
  return 1;
}

/* ---- Autograd ------------------------------------------------------------------------------- */

/* backward(t, [grad], [retain_graph]) */
static int t_backward(lua_State *L) {
  ember_tensor_t *t = check_tensor(L, 1);
  ember_tensor_t *grad = lua_isnoneornil(L, 2) ? NULL : check_tensor(L, 2);
  check_rc(L, ember_backward(t, grad, lua_toboolean(L, 3)));
  return 0;
}

static int t_requires_grad_(lua_State *L) {
  ember_tensor_t *t = check_tensor(L, 1);
  int on = lua_isnoneornil(L, 2) ? 1 : lua_toboolean(L, 2);
  if (t->grad_fn != NULL && !on) {
    return luaL_error(L, "requires_grad_: only a leaf tensor can stop "
                         "requiring grad; use detach()");
  }
  if (on && !ember_dtype_is_float(t->dtype)) {
    return luaL_error(L, "requires_grad_: only float tensors can require "
                         "grad, not %s",
                      ember_dtype_name(t->dtype));
  }
  t->requires_grad = on;
  lua_settop(L, 1);
  ember__lua_intern_leaf(L, 1);
  return 1;
}

static int t_set_grad_enabled(lua_State *L) {
  luaL_checkany(L, 1);
  lua_pushboolean(L, ember_set_grad_enabled(lua_toboolean(L, 1)));
  return 1;
}

static int t_is_grad_enabled(lua_State *L) {
  lua_pushboolean(L, ember_grad_enabled());
  return 1;
}

/* ---- Metamethods --------------------------------------------------------------------------------- */

/* t[i]: a number for a 1-D tensor, the i-th sub-tensor (a view) otherwise.
** t.grad, t.requires_grad, t.is_leaf, t.grad_fn, t.shape; then methods. */
static int t_index(lua_State *L) {
  ember_tensor_t *t = check_tensor(L, 1);
  if (lua_type(L, 2) == LUA_TNUMBER) {
    int64_t i = check_index(L, 2);
    if (t->ndim == 1) {
      int64_t n = t->shape[0];
      int64_t k = i < 0 ? i + n : i;
      if (k < 0 || k >= n) {
        return luaL_error(L, "index %I is out of range for a tensor of size %I",
                          (lua_Integer)lua_tointeger(L, 2), (lua_Integer)n);
      }
      push_element(L, t, k);
      return 1;
    }
    push_tensor(L, ember_tensor_select(t, 0, i));
    return 1;
  }
  const char *key = lua_tostring(L, 2);
  if (key != NULL) {
    switch (key[0]) {
    case 'g':
      if (strcmp(key, "grad") == 0) {
        if (t->grad == NULL) {
          lua_pushnil(L);
        } else {
          ember_tensor_retain(t->grad);
          push_tensor(L, t->grad);
        }
        return 1;
      }
      if (strcmp(key, "grad_fn") == 0) {
        if (t->grad_fn == NULL) lua_pushnil(L);
        else lua_pushstring(L, t->grad_fn->kind->name);
        return 1;
      }
      break;
    case 'r':
      if (strcmp(key, "requires_grad") == 0) {
        lua_pushboolean(L, t->requires_grad);
        return 1;
      }
      break;
    case 'i':
      if (strcmp(key, "is_leaf") == 0) {
        lua_pushboolean(L, t->grad_fn == NULL);
        return 1;
      }
      break;
    case 's':
      if (strcmp(key, "shape") == 0) {
        push_shape(L, t->shape, t->ndim);
        return 1;
      }
      break;
    default:
      break;
    }
  }
  lua_rawgetp(L, LUA_REGISTRYINDEX, &methods_key);
  lua_pushvalue(L, 2);
  lua_rawget(L, -2);
  return 1;
}

static int t_newindex(lua_State *L) {
  ember_tensor_t *t = check_tensor(L, 1);
  if (lua_type(L, 2) == LUA_TNUMBER) {
    int64_t i = check_index(L, 2);
    ember_tensor_t *src = to_tensor(L, 3);
    /* Every check that can raise comes before the view is made. */
    double value = src != NULL || lua_isboolean(L, 3) ? lua_toboolean(L, 3)
                                                       : luaL_checknumber(L, 3);
    if (t->ndim == 0) return luaL_error(L, "cannot index a 0-dim tensor");
    ember_tensor_t *slot = ember_tensor_select(t, 0, i);
    if (slot == NULL) return luaL_error(L, "%s", ember_tensor_error());
    int rc = src != NULL ? ember_tensor_copy_(slot, src)
                         : ember_tensor_fill_(slot, value);
    ember_tensor_release(slot);
    check_rc(L, rc);
    return 0;
  }
  const char *key = luaL_checkstring(L, 2);
  if (strcmp(key, "grad") == 0) {
    if (!lua_isnil(L, 3) && to_tensor(L, 3) == NULL) {
      return luaL_error(L, "grad: a gradient must be a tensor or nil, got %s",
                        luaL_typename(L, 3));
    }
    ember_tensor_t *g = lua_isnil(L, 3) ? NULL : check_tensor(L, 3);
    if (g != NULL && (!ember_tensor_same_shape(g, t) || g->dtype != t->dtype)) {
      return luaL_error(L, "grad: a gradient must have the tensor's shape and "
                           "dtype (%s)", ember_dtype_name(t->dtype));
    }
    /* Detached and private: backward adds into it in place, and a graph
    ** kept here could hold the tensor itself (a cycle). */
    ember_tensor_t *own = g != NULL ? ember_tensor_copy_detached(g) : NULL;
    if (g != NULL && own == NULL) return luaL_error(L, "%s", ember_tensor_error());
    ember_tensor_release(t->grad);
    t->grad = own;
    return 0;
  }
  if (strcmp(key, "requires_grad") == 0) {
    lua_settop(L, 3);
    lua_remove(L, 2);
    return t_requires_grad_(L);
  }
  return luaL_error(L, "tensor has no settable field '%s'", key);
}

static int t_len(lua_State *L) {
  ember_tensor_t *t = check_tensor(L, 1);
  if (t->ndim == 0) return luaL_error(L, "len() of a 0-dim tensor");
  lua_pushinteger(L, t->shape[0]);
  return 1;
}

static int t_gc(lua_State *L) {
  tensor_box_t *box = luaL_checkudata(L, 1, TENSOR_METATABLE);
  ember_tensor_release(box->t);
  box->t = NULL;
  return 0;
}

/* Registers the method table tensor.lua builds (looked up by __index). */
static int t_set_methods(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_pushvalue(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &methods_key);
  return 0;
}

#define MAX_THREADS 1024

static int t_set_num_threads(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 1 && n <= MAX_THREADS, 1,
                lua_pushfstring(L, "the number of threads must be from 1 to "
                                   "%d, not %I", MAX_THREADS, n));
  check_rc(L, ember_cpu_set_threads((int)n));
  return 0;
}

static int t_get_num_threads(lua_State *L) {
  lua_pushinteger(L, ember_cpu_threads());
  return 1;
}

static int t_memory(lua_State *L) {
  ember_tensor_t *t = check_tensor(L, 1);
  lua_pushinteger(L, (lua_Integer)t->storage->nbytes);
  return 1;
}

static const luaL_Reg tensor_funcs[] = {
    {"full", t_full}, {"rand", t_rand}, {"randn", t_randn},
    {"arange", t_arange}, {"eye", t_eye}, {"from_table", t_from_table},
    {"manual_seed", t_manual_seed}, {"initial_seed", t_initial_seed},
    {"size", t_size}, {"stride", t_stride}, {"dim", t_dim},
    {"numel", t_numel}, {"dtype", t_dtype}, {"device", t_device},
    {"is_contiguous", t_is_contiguous}, {"is_tensor", t_is_tensor},
    {"is_closed", t_is_closed},
    {"item", t_item}, {"values", t_values}, {"totable", t_totable},
    {"view", t_view}, {"reshape", t_reshape}, {"transpose", t_transpose},
    {"t", t_t}, {"permute", t_permute}, {"narrow", t_narrow},
    {"select", t_select}, {"unsqueeze", t_unsqueeze}, {"squeeze", t_squeeze},
    {"expand", t_expand}, {"contiguous", t_contiguous}, {"clone", t_clone},
    {"detach", t_detach}, {"to", t_to},
    {"add", t_add}, {"sub", t_sub}, {"mul", t_mul}, {"div", t_div},
    {"pow", t_pow}, {"maximum", t_maximum}, {"minimum", t_minimum},
    {"eq", t_eq}, {"ne", t_ne}, {"lt", t_lt}, {"le", t_le}, {"gt", t_gt},
    {"ge", t_ge},
    {"neg", t_neg}, {"exp", t_exp}, {"log", t_log}, {"sqrt", t_sqrt},
    {"tanh", t_tanh}, {"sigmoid", t_sigmoid}, {"relu", t_relu},
    {"abs", t_abs}, {"sign", t_sign}, {"sin", t_sin}, {"cos", t_cos},
    {"log1p", t_log1p}, {"reciprocal", t_reciprocal},
    {"logical_not", t_logical_not}, {"clamp", t_clamp},
    {"sum", t_sum}, {"prod", t_prod}, {"mean", t_mean}, {"max", t_max},
    {"min", t_min}, {"argmax", t_argmax}, {"argmin", t_argmin},
    {"matmul", t_matmul}, {"mm", t_mm}, {"addmm", t_addmm},
    {"softmax", t_softmax}, {"log_softmax", t_log_softmax},
    {"cat", t_cat}, {"stack", t_stack}, {"gather", t_gather},
    {"scatter", t_scatter}, {"index_select", t_index_select},
    {"where", t_where}, {"multinomial", t_multinomial},
    {"copy_", t_copy_}, {"fill_", t_fill_}, {"zero_", t_zero_},
    {"add_", t_add_}, {"sub_", t_sub_}, {"mul_", t_mul_}, {"div_", t_div_},
    {"clamp_", t_clamp_}, {"sqrt_", t_sqrt_}, {"neg_", t_neg_},
    {"relu_", t_relu_}, {"addcmul_", t_addcmul_}, {"addcdiv_", t_addcdiv_},
    {"uniform_", t_uniform_}, {"normal_", t_normal_},
    {"allclose", t_allclose}, {"equal", t_equal},
    {"backward", t_backward}, {"requires_grad_", t_requires_grad_},
    {"set_grad_enabled", t_set_grad_enabled},
    {"is_grad_enabled", t_is_grad_enabled},
    {"set_methods", t_set_methods}, {"set_num_threads", t_set_num_threads},
    {"get_num_threads", t_get_num_threads}, {"storage_bytes", t_memory},
    {"check_device", t_check_device},
    {"cuda_device_count", t_cuda_device_count},
    {"cuda_unavailable_reason", t_cuda_unavailable_reason},
    {"cuda_is_simulated", t_cuda_is_simulated},
    {"cuda_device_name", t_cuda_device_name},
    {"cuda_synchronize", t_cuda_synchronize},
    {"cuda_memory_stats", t_cuda_memory_stats},
    {"cuda_empty_cache", t_cuda_empty_cache},
    {NULL, NULL}};

static const luaL_Reg tensor_meta[] = {
    {"__index", t_index}, {"__newindex", t_newindex}, {"__len", t_len},
    {"__gc", t_gc}, {"__close", t_gc},
    {"__add", t_add}, {"__sub", t_sub}, {"__mul", t_mul}, {"__div", t_div},
    {"__pow", t_pow}, {"__unm", t_neg},
    {NULL, NULL}};

void ember__lua_open_tensor(lua_State *L) {
  if (ember_cpu_init_threads() < 0) {
    /* A bad setting is reported, not fatal: the default stays. */
    fprintf(stderr, "ember: %s; using 1 thread\n", ember_tensor_error());
    ember_cpu_set_threads(1);
  }
  if (luaL_newmetatable(L, TENSOR_METATABLE)) {
    luaL_setfuncs(L, tensor_meta, 0);
  }
  lua_pop(L, 1);
  lua_newtable(L);
  luaL_setfuncs(L, tensor_funcs, 0);
  luaL_getmetatable(L, TENSOR_METATABLE);
  lua_setfield(L, -2, "metatable");
  lua_setfield(L, 2, "tensor");
  lua_newtable(L); /* leaf boxes, weak values */
  lua_newtable(L);
  lua_pushliteral(L, "v");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &leaf_boxes_key);
}
