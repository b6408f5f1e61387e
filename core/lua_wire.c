/*
** Lua values on the wire: the encoder (a Lua value into a message's msgpack
** body and tensor payloads), the decoder (a checked body back into a Lua
** value), the hooks that turn functions into "module:path" references and
** back, the registry of classes whose instances travel by value, and
** `core.wire_*` functions that let specs reach all of it.
**
** Encoding allocates nothing per value beyond the message's buffers: the path
** of the value being encoded is a stack of keys, turned into a string only
** when an error names it. Decoding reads the body with ember_wire_read_token
** after ember_wire_check_body passed (msgpack-c's unpacker allocates a zone
** per call and stops at 32 levels of nesting, below the contract's 64).
*/
#include <msgpack.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "lua_common.h"
#include "tensor.h"
#include "device.h"
#include "wire.h"

#define WIRE_MAX_DEPTH 64

#define MSG_METATABLE "ember.WireMsg"
#define PAYLOADS_METATABLE "ember.WirePayloads"

/* Registry keys (their addresses): the hooks and the class tables. */
static const char function_ref_key = 'r';
static const char function_load_key = 'l';
static const char class_by_name_key = 'n';
static const char class_name_of_key = 'm';

/* ---- Messages ------------------------------------------------------------ */

static int msg_gc(lua_State *L) {
  ember_wire_msg_free(luaL_checkudata(L, 1, MSG_METATABLE));
  return 0;
}

ember_wire_msg_t *ember__lua_push_msg(lua_State *L) {
  ember_wire_msg_t *msg = lua_newuserdatauv(L, sizeof *msg, 0);
  ember_wire_msg_init(msg);
  luaL_setmetatable(L, MSG_METATABLE);
  return msg;
}

/* ---- Encoding ------------------------------------------------------------ */

/* One step of the path to the value being encoded: an array position, or a
** map key that sits on the Lua stack. */
typedef struct {
  int slot; /* stack index of the key, or 0 for `position` */
  lua_Integer position;
} path_step_t;

typedef struct {
  lua_State *L;
  ember_wire_msg_t *msg;
  msgpack_packer pk;
  const char *root;
  int depth; /* containers open */
  int path_len;
  path_step_t path[WIRE_MAX_DEPTH + 1];
  int open_count; /* tables and userdata being sent: a cycle check */
  const void *open[WIRE_MAX_DEPTH + 1];
} encoder_t;

static int is_letter(unsigned char c) {
  return c == '_' || (unsigned)((c | 0x20) - 'a') < 26u;
}

static int is_identifier(const char *s, size_t len) {
  if (len == 0 || !is_letter((unsigned char)s[0])) return 0;
  for (size_t i = 1; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!is_letter(c) && (unsigned)(c - '0') >= 10u) return 0;
  }
  return 1;
}

/* Pushes "[2]", ".name" or ["odd key"] for one step. */
static void push_step(lua_State *L, const path_step_t *step) {
  if (step->slot == 0) {
    lua_pushfstring(L, "[%I]", (LUAI_UACINT)step->position);
    return;
  }
  size_t len;
  switch (lua_type(L, step->slot)) {
  case LUA_TSTRING: {
    const char *s = lua_tolstring(L, step->slot, &len);
    lua_pushfstring(L, is_identifier(s, len) ? ".%s" : "[\"%s\"]", s);
    break;
  }
  case LUA_TNUMBER:
    if (lua_isinteger(L, step->slot)) {
      lua_pushfstring(L, "[%I]", (LUAI_UACINT)lua_tointeger(L, step->slot));
    } else {
      lua_pushfstring(L, "[%f]", (LUAI_UACNUMBER)lua_tonumber(L, step->slot));
    }
    break;
  case LUA_TBOOLEAN:
    lua_pushstring(L, lua_toboolean(L, step->slot) ? "[true]" : "[false]");
    break;
  default:
    lua_pushfstring(L, "[%s]", luaL_typename(L, step->slot));
    break;
  }
}

/* Raises "root[1].a: <message>". */
static int encode_fail(encoder_t *e, const char *fmt, ...) {
  lua_State *L = e->L;
  va_list ap;
  luaL_checkstack(L, e->path_len + 4, "building an error message");
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  int message = lua_gettop(L);
  lua_pushstring(L, e->root);
  for (int i = 0; i < e->path_len; i++) push_step(L, &e->path[i]);
  lua_pushliteral(L, ": ");
  lua_pushvalue(L, message);
  lua_concat(L, e->path_len + 3);
  return lua_error(L);
}

/* msgpack_pack_* return the write callback's result: non-zero on failure. */
#define PACK(e, call)                                                          \
  do {                                                                         \
    if ((call) != 0) encode_fail((e), "%s", ember_wire_error());               \
  } while (0)

static int write_cb(void *data, const char *buf, size_t len) {
  return ember_wire_msg_write(data, buf, len);
}

static void encode_value(encoder_t *e, int index);

/* A new level of nesting (an array or map about to be written). */
static void enter_container(encoder_t *e) {
  if (e->depth >= WIRE_MAX_DEPTH) {
    encode_fail(e, "nesting deeper than %d levels", WIRE_MAX_DEPTH);
  }
  e->depth++;
}

/* The table or userdata at `index` is being sent until close_value. */
static void open_value(encoder_t *e, int index) {
  const void *p = lua_topointer(e->L, index);
  for (int i = 0; i < e->open_count; i++) {
    if (e->open[i] == p) {
      encode_fail(e, "a cycle (the table is already being sent)");
    }
  }
  e->open[e->open_count++] = p;
}

static void close_value(encoder_t *e) { e->open_count--; }

static void encode_string(encoder_t *e, int index) {
  size_t len;
  const char *s = lua_tolstring(e->L, index, &len);
  if (len > UINT32_MAX) {
    encode_fail(e, "a string of %I bytes is too long", (LUAI_UACINT)len);
  }
  PACK(e, msgpack_pack_str(&e->pk, len));
  PACK(e, msgpack_pack_str_body(&e->pk, s, len));
}

/* Whether the table's keys are exactly 1..n, n >= 1; *count = its entries. */
static int is_array(lua_State *L, int t, lua_Integer *count) {
  lua_Integer n = (lua_Integer)lua_rawlen(L, t), entries = 0;
  int array = n > 0;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    entries++;
    if (array) {
      lua_Integer k = lua_isinteger(L, -2) ? lua_tointeger(L, -2) : 0;
      array = k >= 1 && k <= n;
    }
    lua_pop(L, 1);
  }
  *count = entries;
  return array && entries == n;
}

static void encode_array(encoder_t *e, int t, lua_Integer n) {
  lua_State *L = e->L;
  PACK(e, msgpack_pack_array(&e->pk, (size_t)n));
  path_step_t *step = &e->path[e->path_len++];
  step->slot = 0;
  for (lua_Integer i = 1; i <= n; i++) {
    step->position = i;
    lua_rawgeti(L, t, i);
    encode_value(e, lua_gettop(L));
    lua_pop(L, 1);
  }
  e->path_len--;
}

static void encode_key(encoder_t *e, int key) {
  int type = lua_type(e->L, key);
  if (type != LUA_TSTRING && type != LUA_TNUMBER && type != LUA_TBOOLEAN) {
    encode_fail(e,
                "a table key of type %s cannot be sent (keys may be "
                "strings, numbers or booleans)",
                lua_typename(e->L, type));
  }
  encode_value(e, key);
}

static void encode_map(encoder_t *e, int t, lua_Integer count) {
  lua_State *L = e->L;
  lua_Integer written = 0;
  PACK(e, msgpack_pack_map(&e->pk, (size_t)count));
  lua_pushnil(L);
  while (lua_next(L, t)) {
    int key = lua_gettop(L) - 1;
    if (++written > count) break;
    encode_key(e, key);
    path_step_t *step = &e->path[e->path_len++];
    step->slot = key;
    encode_value(e, key + 1);
    e->path_len--;
    lua_pop(L, 1);
  }
  if (written != count) {
    encode_fail(e, "the table changed while it was being sent");
  }
}

/* The table's raw fields (its metatable is not followed). */
static void encode_fields(encoder_t *e, int t) {
  lua_Integer count;
  enter_container(e);
  if (is_array(e->L, t, &count)) {
    encode_array(e, t, count);
  } else {
    if (count > (lua_Integer)UINT32_MAX) encode_fail(e, "a table too large");
    encode_map(e, t, count);
  }
  e->depth--;
}

/*
** An instance of a registered class (its metatable on top of the stack):
** [ext CLASS(name), state], the state being mt.__pack(obj) or obj's raw
** fields.
*/
static void encode_instance(encoder_t *e, int index) {
  lua_State *L = e->L;
  int mt = lua_gettop(L);
  int is_table = lua_type(L, index) == LUA_TTABLE;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &class_name_of_key);
  lua_pushvalue(L, mt);
  if (lua_rawget(L, -2) != LUA_TSTRING) {
    if (is_table) {
      encode_fail(e, "a table with a metatable that is not registered with "
                     "rpc.register_class");
    }
    encode_fail(e, "cannot send a userdata");
  }
  size_t name_len;
  const char *name = lua_tolstring(L, -1, &name_len);
  int has_pack = lua_getfield(L, mt, "__pack") == LUA_TFUNCTION;
  if (!is_table && !has_pack) {
    encode_fail(e, "cannot send a userdata of class '%s' (its metatable has "
                   "no __pack)", name);
  }
  enter_container(e);
  open_value(e, index);
  PACK(e, msgpack_pack_array(&e->pk, 2));
  PACK(e, msgpack_pack_ext(&e->pk, name_len, EMBER_EXT_CLASS));
  PACK(e, msgpack_pack_ext_body(&e->pk, name, name_len));
  if (has_pack) {
    e->msg->flags |= EMBER_FLAG_PACKED_CLASSES;
    lua_pushvalue(L, index);
    lua_call(L, 1, 1);
    encode_value(e, lua_gettop(L));
  } else {
    encode_fields(e, index);
  }
  close_value(e);
  e->depth--;
  lua_settop(L, mt - 1);
}

static void encode_table(encoder_t *e, int index) {
  if (lua_getmetatable(e->L, index)) {
    encode_instance(e, index);
    return;
  }
  open_value(e, index);
  encode_fields(e, index);
  close_value(e);
}

static void encode_tensor(encoder_t *e, const ember_lua_tensor_box_t *box) {
  uint8_t ext[EMBER_WIRE_TENSOR_EXT_MAX];
  uint32_t index;
  if (box->t == NULL) encode_fail(e, "cannot send a closed tensor");
  if (ember_wire_msg_add_tensor(e->msg, box->t, &index) < 0) {
    encode_fail(e, "%s", ember_wire_error());
  }
  const ember_device_t *device = box->t->storage->device;
  int target = !device->is_host && e->msg->device_map != NULL &&
                       device->index >= 0 && device->index <= EMBER_WIRE_MAX_DEVICE
                   ? e->msg->device_map[device->index]
                   : -1;
  size_t len = ember_wire_tensor_ext(box->t, index, target, ext);
  PACK(e, msgpack_pack_ext(&e->pk, len, EMBER_EXT_TENSOR));
  PACK(e, msgpack_pack_ext_body(&e->pk, ext, len));
}

static void encode_userdata(encoder_t *e, int index) {
  ember_lua_tensor_box_t *box = ember__lua_tensor_box_at(e->L, index);
  if (box != NULL) {
    encode_tensor(e, box);
  } else if (lua_getmetatable(e->L, index)) {
    encode_instance(e, index);
  } else {
    encode_fail(e, "cannot send a userdata");
  }
}

/* A function travels as the "module:path" its resolver hook returns. */
static void encode_function(encoder_t *e, int index) {
  lua_State *L = e->L;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &function_ref_key) != LUA_TFUNCTION) {
    encode_fail(e, "cannot send a function (no resolver set)");
  }
  lua_pushvalue(L, index);
  lua_call(L, 1, 2);
  if (lua_type(L, -2) != LUA_TSTRING) {
    encode_fail(e, "%s",
                lua_isstring(L, -1) ? lua_tostring(L, -1)
                                    : "the function has no module:path "
                                      "reference");
  }
  size_t len;
  const char *ref = lua_tolstring(L, -2, &len);
  PACK(e, msgpack_pack_ext(&e->pk, len, EMBER_EXT_FUNCTION));
  PACK(e, msgpack_pack_ext_body(&e->pk, ref, len));
  lua_pop(L, 2);
}

static void encode_value(encoder_t *e, int index) {
  lua_State *L = e->L;
  int type = lua_type(L, index);
  /* Room for what one level holds while its children are encoded (an
  ** instance: its metatable, the class table, its name, __pack, the state);
  ** each child checks again. */
  if (type == LUA_TTABLE || type == LUA_TUSERDATA || type == LUA_TFUNCTION) {
    luaL_checkstack(L, 8, "encoding a nested value");
  }
  switch (type) {
  case LUA_TNIL:
    PACK(e, msgpack_pack_nil(&e->pk));
    break;
  case LUA_TBOOLEAN:
    PACK(e, lua_toboolean(L, index) ? msgpack_pack_true(&e->pk)
                                    : msgpack_pack_false(&e->pk));
    break;
  case LUA_TNUMBER:
    if (lua_isinteger(L, index)) {
      PACK(e, msgpack_pack_int64(&e->pk, (int64_t)lua_tointeger(L, index)));
    } else {
      PACK(e, msgpack_pack_double(&e->pk, (double)lua_tonumber(L, index)));
    }
    break;
  case LUA_TSTRING:
    encode_string(e, index);
    break;
  case LUA_TTABLE:
    encode_table(e, index);
    break;
  case LUA_TUSERDATA:
    encode_userdata(e, index);
    break;
  case LUA_TFUNCTION:
    encode_function(e, index);
    break;
  case LUA_TLIGHTUSERDATA:
    encode_fail(e, "cannot send a light userdata");
    break;
  default:
    encode_fail(e, "cannot send a %s", lua_typename(L, type));
    break;
  }
}

void ember__lua_wire_encode(lua_State *L, int index, ember_wire_msg_t *msg,
                            const char *root) {
  encoder_t e;
  e.L = L;
  e.msg = msg;
  e.root = root != NULL ? root : "value";
  e.depth = 0;
  e.path_len = 0;
  e.open_count = 0;
  msgpack_packer_init(&e.pk, msg, write_cb);
  luaL_checkstack(L, 8, "encoding a value");
  encode_value(&e, lua_absindex(L, index));
}

/* ---- Decoding ------------------------------------------------------------ */

typedef struct {
  lua_State *L;
  const char *body;
  size_t len;
  size_t pos;
  ember_tensor_t *const *payloads;
  uint32_t count;
  int cache; /* stack index: payload position -> tensor (nil until used) */
} decoder_t;

/* Raises the message (printf formats: lua_pushfstring lacks %zu and %u). */
static int decode_fail(decoder_t *d, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

static int decode_fail(decoder_t *d, const char *fmt, ...) {
  char message[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof message, fmt, ap);
  va_end(ap);
  lua_pushstring(d->L, message);
  return lua_error(d->L);
}

static void read_token(decoder_t *d, ember_wire_token_t *tok) {
  if (ember_wire_read_token(d->body, d->len, &d->pos, tok) < 0) {
    decode_fail(d, "%s", ember_wire_error());
  }
}

static void push_token(decoder_t *d, const ember_wire_token_t *tok,
                       size_t start);

static void decode_value(decoder_t *d) {
  ember_wire_token_t tok;
  size_t start = d->pos;
  read_token(d, &tok);
  push_token(d, &tok, start);
}

/* A tensor a previous reference to the same payload produced, if it has
** the same geometry; pushed. */
static int push_cached_tensor(decoder_t *d, const ember_wire_tensor_ref_t *r) {
  lua_State *L = d->L;
  if (lua_isnil(L, d->cache)) return 0;
  lua_rawgeti(L, d->cache, (lua_Integer)r->index + 1);
  ember_lua_tensor_box_t *box = ember__lua_tensor_box_at(L, -1);
  const ember_tensor_t *t = box != NULL ? box->t : NULL;
  if (t != NULL && t->dtype == r->dtype && t->ndim == r->ndim &&
      t->requires_grad == r->requires_grad &&
      memcmp(t->shape, r->shape, sizeof(int64_t) * (size_t)r->ndim) == 0) {
    return 1;
  }
  lua_pop(L, 1);
  return 0;
}

static void remember_tensor(decoder_t *d, uint32_t index) {
  lua_State *L = d->L;
  if (lua_isnil(L, d->cache)) {
    lua_newtable(L);
    lua_replace(L, d->cache);
  }
  lua_pushvalue(L, -1);
  lua_rawseti(L, d->cache, (lua_Integer)index + 1);
}

/* A received tensor the sender mapped to cuda:n goes there. */
static void move_to_device(decoder_t *d, ember_lua_tensor_box_t *box,
                           int device, size_t start) {
  const ember_device_t *target = ember_cuda_device(device);
  if (target == NULL) {
    decode_fail(d, "wire: a tensor sent to cuda:%d (the sender's device "
                   "map) at byte %zu: %s", device, start,
                ember_tensor_error());
  }
  ember_tensor_t *moved = ember_tensor_to_device(box->t, target,
                                                 box->t->dtype, 0);
  if (moved == NULL) {
    decode_fail(d, "wire: moving a received tensor to cuda:%d: %s", device,
                ember_tensor_error());
  }
  ember_tensor_release(box->t);
  box->t = moved;
}

/* A fresh leaf tensor on the payload's storage (the same one for every
** reference to that payload in this body). */
static void push_tensor_ref(decoder_t *d, const ember_wire_token_t *tok,
                            size_t start) {
  ember_wire_tensor_ref_t r;
  if (ember_wire_parse_tensor_ext(tok->data, tok->length, &r) < 0) {
    decode_fail(d, "wire: %s at byte %zu", ember_wire_error(), start);
  }
  if (r.index >= d->count) {
    decode_fail(d, "wire: tensor payload index %u out of range (the frame "
                   "has %u tensors) at byte %zu",
                (unsigned)r.index, (unsigned)d->count, start);
  }
  if (r.requires_grad && !ember_dtype_is_float(r.dtype)) {
    decode_fail(d, "wire: a %s tensor cannot require grad (at byte %zu)",
                ember_dtype_name(r.dtype), start);
  }
  if (push_cached_tensor(d, &r)) return;
  ember_lua_tensor_box_t *box = ember__lua_push_tensor_box(d->L);
  box->t = ember_wire_tensor_from_payload(d->payloads[r.index], r.dtype,
                                          r.shape, r.ndim);
  if (box->t == NULL) {
    decode_fail(d, "wire: tensor payload %u: %s", (unsigned)r.index,
                ember_wire_error());
  }
  if (r.device >= 0) move_to_device(d, box, r.device, start);
  box->t->requires_grad = r.requires_grad;
  ember__lua_account_tensor(d->L, box->t);
  ember__lua_intern_leaf(d->L, -1);
  remember_tensor(d, r.index);
}

/* A "module:path" reference, resolved by the load hook when there is one. */
static void push_function_ref(decoder_t *d, const ember_wire_token_t *tok) {
  lua_State *L = d->L;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &function_load_key) == LUA_TFUNCTION) {
    lua_pushlstring(L, tok->data, tok->length);
    lua_call(L, 1, 1);
  } else {
    lua_pop(L, 1);
    lua_pushlstring(L, tok->data, tok->length);
  }
}

/* [ext CLASS(name), state]: `tok` is the ext, the state follows. */
static void push_instance(decoder_t *d, const ember_wire_token_t *tok,
                          size_t start) {
  lua_State *L = d->L;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &class_by_name_key);
  int base = lua_gettop(L);
  const char *name = lua_pushlstring(L, tok->data, tok->length);
  lua_pushvalue(L, -1);
  if (lua_rawget(L, base) != LUA_TTABLE) {
    decode_fail(d, "wire: unknown class '%s' at byte %zu (not registered "
                   "with rpc.register_class on this worker)",
                name, start);
  }
  int mt = lua_gettop(L);
  decode_value(d); /* the state */
  if (lua_getfield(L, mt, "__unpack") == LUA_TFUNCTION) {
    lua_insert(L, -2);
    lua_call(L, 1, 1);
  } else {
    lua_pop(L, 1);
    if (!lua_istable(L, -1)) {
      decode_fail(d, "wire: the state of a '%s' instance is a %s, not a "
                     "table (and the class has no __unpack)",
                  name, luaL_typename(L, -1));
    }
    lua_pushvalue(L, mt);
    lua_setmetatable(L, -2);
  }
  lua_replace(L, base);
  lua_settop(L, base);
}

static void push_array(decoder_t *d, const ember_wire_token_t *tok) {
  lua_State *L = d->L;
  uint32_t n = tok->length;
  ember_wire_token_t first;
  size_t start = d->pos;
  if (n > 0) {
    read_token(d, &first);
    if (first.type == EMBER_WIRE_EXT && first.ext_type == EMBER_EXT_CLASS) {
      if (n != 2) {
        decode_fail(d, "wire: a class instance at byte %zu is an array of %u "
                       "elements (expected 2)",
                    start, (unsigned)n);
      }
      push_instance(d, &first, start);
      return;
    }
  }
  lua_createtable(L, (int)(n < INT32_MAX ? n : INT32_MAX), 0);
  if (n == 0) return;
  push_token(d, &first, start);
  lua_rawseti(L, -2, 1);
  for (uint32_t i = 2; i <= n; i++) {
    decode_value(d);
    lua_rawseti(L, -2, (lua_Integer)i);
  }
}

static void push_map(decoder_t *d, const ember_wire_token_t *tok) {
  lua_State *L = d->L;
  uint32_t n = tok->length;
  lua_createtable(L, 0, (int)(n < INT32_MAX ? n : INT32_MAX));
  for (uint32_t i = 0; i < n; i++) {
    size_t start = d->pos;
    decode_value(d);
    int is_nil = lua_isnil(L, -1);
    lua_Number key = lua_tonumber(L, -1);
    if (is_nil || (lua_type(L, -1) == LUA_TNUMBER && key != key)) {
      decode_fail(d, "wire: a map key at byte %zu is %s", start,
                  is_nil ? "nil" : "nan");
    }
    decode_value(d);
    lua_rawset(L, -3);
  }
}

static void push_ext(decoder_t *d, const ember_wire_token_t *tok,
                     size_t start) {
  switch (tok->ext_type) {
  case EMBER_EXT_TENSOR:
    push_tensor_ref(d, tok, start);
    break;
  case EMBER_EXT_FUNCTION:
    push_function_ref(d, tok);
    break;
  case EMBER_EXT_CLASS:
    decode_fail(d, "wire: a class name at byte %zu outside an instance",
                start);
    break;
  default:
    decode_fail(d, "wire: unknown ext type %d at byte %zu", tok->ext_type,
                start);
    break;
  }
}

static void push_token(decoder_t *d, const ember_wire_token_t *tok,
                       size_t start) {
  lua_State *L = d->L;
  /* Room for one level (an instance holds the class table, its name, the
  ** metatable, the state and __unpack); every value checks again. */
  luaL_checkstack(L, 8, "decoding a nested value");
  switch (tok->type) {
  case EMBER_WIRE_NIL:
    lua_pushnil(L);
    break;
  case EMBER_WIRE_BOOL:
    lua_pushboolean(L, tok->v.boolean);
    break;
  case EMBER_WIRE_INT:
    lua_pushinteger(L, (lua_Integer)tok->v.i);
    break;
  case EMBER_WIRE_UINT: /* beyond Lua's integers: a float, as Lua's own
                           parser makes of such a literal */
    lua_pushnumber(L, (lua_Number)tok->v.u);
    break;
  case EMBER_WIRE_FLOAT:
    lua_pushnumber(L, (lua_Number)tok->v.f);
    break;
  case EMBER_WIRE_STR:
  case EMBER_WIRE_BIN:
    lua_pushlstring(L, tok->data, tok->length);
    break;
  case EMBER_WIRE_ARRAY:
    push_array(d, tok);
    break;
  case EMBER_WIRE_MAP:
    push_map(d, tok);
    break;
  case EMBER_WIRE_EXT:
    push_ext(d, tok, start);
    break;
  }
}

void ember__lua_wire_decode(lua_State *L, const char *body, size_t len,
                            ember_tensor_t *const *payloads, uint32_t count,
                            const ember_wire_limits_t *limits) {
  ember_wire_limits_t defaults;
  if (limits == NULL) {
    ember_wire_default_limits(&defaults);
    limits = &defaults;
  }
  if (ember_wire_check_body(body, len, limits) < 0) {
    lua_pushstring(L, ember_wire_error());
    lua_error(L);
  }
  decoder_t d = {L, body, len, 0, payloads, count, 0};
  luaL_checkstack(L, 8, "decoding a value");
  lua_pushnil(L);
  d.cache = lua_gettop(L);
  decode_value(&d);
  lua_remove(L, d.cache);
}

/* ---- Classes and hooks --------------------------------------------------- */

/* wire_register_class(name, mt): instances of mt travel by value as `name`.
** A name registered again with another mt is replaced; one mt may not carry
** two names (the receiver could not tell which was meant). */
static int w_register_class(lua_State *L) {
  size_t len;
  luaL_checklstring(L, 1, &len);
  luaL_argcheck(L, len > 0, 1, "a class name cannot be empty");
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &class_by_name_key); /* 3 */
  lua_rawgetp(L, LUA_REGISTRYINDEX, &class_name_of_key); /* 4 */
  lua_pushvalue(L, 2);
  if (lua_rawget(L, 4) == LUA_TSTRING && !lua_rawequal(L, -1, 1)) {
    return luaL_error(L, "register_class: this metatable is already "
                         "registered as '%s'",
                      lua_tostring(L, -1));
  }
  lua_pop(L, 1);
  lua_pushvalue(L, 1);
  if (lua_rawget(L, 3) == LUA_TTABLE && !lua_rawequal(L, -1, 2)) {
    lua_pushnil(L);
    lua_rawset(L, 4); /* the replaced metatable no longer names a class */
  } else {
    lua_pop(L, 1);
  }
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 2);
  lua_rawset(L, 3);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 1);
  lua_rawset(L, 4);
  return 0;
}

/* wire_class_of(name) -> the registered metatable, or nil. */
static int w_class_of(lua_State *L) {
  luaL_checkstring(L, 1);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &class_by_name_key);
  lua_pushvalue(L, 1);
  lua_rawget(L, -2);
  return 1;
}

static void swap_hook(lua_State *L, const char *field, const void *key) {
  int type = lua_getfield(L, 1, field);
  luaL_argcheck(L, type == LUA_TNIL || type == LUA_TFUNCTION, 1,
                lua_pushfstring(L, "%s must be a function", field));
  lua_rawgetp(L, LUA_REGISTRYINDEX, key);
  lua_setfield(L, 2, field); /* the previous hook, for the caller */
  lua_rawsetp(L, LUA_REGISTRYINDEX, key);
}

/* wire_set_hooks{function_ref = f, function_load = g}: sets both (an absent
** one is cleared) and returns the previous ones in a table of that shape. */
static int w_set_hooks(lua_State *L) {
  if (lua_isnoneornil(L, 1)) {
    lua_settop(L, 0);
    lua_newtable(L);
  }
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_newtable(L); /* 2: the previous hooks */
  swap_hook(L, "function_ref", &function_ref_key);
  swap_hook(L, "function_load", &function_load_key);
  return 1;
}

/* ---- Functions for specs and tools --------------------------------------- */

/* Limits: the defaults, with fields of the table at `index` (if any) over
** them. */
static void opt_limits(lua_State *L, int index, ember_wire_limits_t *limits) {
  ember_wire_default_limits(limits);
  if (lua_isnoneornil(L, index)) return;
  luaL_checktype(L, index, LUA_TTABLE);
#define WIRE_LIMIT(field)                                                      \
  if (lua_getfield(L, index, #field) != LUA_TNIL)                              \
    limits->field = luaL_checkinteger(L, -1);                                  \
  lua_pop(L, 1)
  WIRE_LIMIT(max_body);
  WIRE_LIMIT(max_tensors);
  WIRE_LIMIT(max_tensor_bytes);
  WIRE_LIMIT(max_payload_bytes);
  WIRE_LIMIT(max_depth);
  WIRE_LIMIT(max_string);
#undef WIRE_LIMIT
}

/* wire_encode(value [, root]) -> body, {payload tensors} */
static int w_encode(lua_State *L) {
  luaL_checkany(L, 1);
  const char *root = luaL_optstring(L, 2, "value");
  ember_wire_msg_t *msg = ember__lua_push_msg(L);
  ember__lua_wire_encode(L, 1, msg, root);
  lua_pushlstring(L, msg->body != NULL ? msg->body : "", msg->body_len);
  lua_createtable(L, (int)msg->payload_count, 0);
  for (uint32_t i = 0; i < msg->payload_count; i++) {
    ember_lua_tensor_box_t *box = ember__lua_push_tensor_box(L);
    ember_tensor_retain(msg->payloads[i].keep);
    box->t = msg->payloads[i].keep;
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 2;
}

/* Borrowed byte views of a frame's payloads, released by __gc. */
typedef struct {
  size_t count;
  ember_tensor_t *items[];
} payload_list_t;

static int payloads_gc(lua_State *L) {
  payload_list_t *list = luaL_checkudata(L, 1, PAYLOADS_METATABLE);
  for (size_t i = 0; i < list->count; i++) ember_tensor_release(list->items[i]);
  list->count = 0;
  return 0;
}

/* A contiguous CPU tensor's bytes as a 1-D uint8 view (as the transport
** hands payloads over). */
static ember_tensor_t *byte_view(lua_State *L, lua_Integer i,
                                 const ember_tensor_t *t) {
  if (t->storage->device != &ember_cpu_device ||
      (ember_tensor_numel(t) > 0 && !ember_tensor_is_contiguous(t))) {
    luaL_error(L, "payloads[%I] must be a contiguous CPU tensor",
               (LUAI_UACINT)i);
  }
  int64_t size = (int64_t)ember_dtype_size(t->dtype);
  int64_t bytes = ember_tensor_numel(t) * size, one = 1;
  ember_tensor_t *v = ember_tensor_view_of(t, &bytes, &one, 1,
                                           t->offset * size);
  if (v == NULL) luaL_error(L, "out of memory");
  v->dtype = EMBER_UINT8;
  return v;
}

/* wire_decode(body [, payload tensors [, limits]]) -> value */
static int w_decode(lua_State *L) {
  size_t len;
  const char *body = luaL_checklstring(L, 1, &len);
  lua_Integer n = 0;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    n = (lua_Integer)lua_rawlen(L, 2);
  }
  ember_wire_limits_t limits;
  opt_limits(L, 3, &limits);
  luaL_argcheck(L, n <= (lua_Integer)limits.max_tensors, 2, "too many tensors");
  payload_list_t *list = lua_newuserdatauv(
      L, sizeof *list + sizeof(ember_tensor_t *) * (size_t)n, 0);
  list->count = 0;
  luaL_setmetatable(L, PAYLOADS_METATABLE);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, 2, i);
    ember_lua_tensor_box_t *box = ember__lua_tensor_box_at(L, -1);
    if (box == NULL || box->t == NULL) {
      return luaL_error(L, "payloads[%I] is not a tensor", (LUAI_UACINT)i);
    }
    list->items[list->count] = byte_view(L, i, box->t);
    list->count++;
    lua_pop(L, 1);
  }
  ember__lua_wire_decode(L, body, len, list->items, (uint32_t)n, &limits);
  return 1;
}

/* wire_check(body [, limits]) -> true, or nil and the reason */
static int w_check(lua_State *L) {
  size_t len;
  const char *body = luaL_checklstring(L, 1, &len);
  ember_wire_limits_t limits;
  opt_limits(L, 2, &limits);
  if (ember_wire_check_body(body, len, &limits) < 0) {
    luaL_pushfail(L);
    lua_pushstring(L, ember_wire_error());
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* wire_header(kind, request_id, body_len, tensor_count [, flags [, version]])
** -> the 24 header bytes */
static int w_header(lua_State *L) {
  ember_frame_header_t h;
  uint8_t out[EMBER_WIRE_HEADER_SIZE];
  h.kind = (uint8_t)luaL_checkinteger(L, 1);
  h.request_id = (uint64_t)luaL_checkinteger(L, 2);
  h.body_len = (uint32_t)luaL_checkinteger(L, 3);
  h.tensor_count = (uint32_t)luaL_checkinteger(L, 4);
  h.flags = (uint16_t)luaL_optinteger(L, 5, 0);
  h.version = (uint8_t)luaL_optinteger(L, 6, EMBER_WIRE_VERSION);
  ember_wire_pack_header(&h, out);
  lua_pushlstring(L, (const char *)out, sizeof out);
  return 1;
}

/* wire_parse_header(bytes [, limits]) -> {version=, kind=, flags=,
** request_id=, body_len=, tensor_count=}, or nil and the reason */
static int w_parse_header(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  ember_wire_limits_t limits;
  ember_frame_header_t h;
  opt_limits(L, 2, &limits);
  if (len != EMBER_WIRE_HEADER_SIZE) {
    luaL_pushfail(L);
    lua_pushfstring(L, "a frame header is %d bytes, not %d",
                    EMBER_WIRE_HEADER_SIZE, (int)len);
    return 2;
  }
  if (ember_wire_unpack_header((const uint8_t *)s, &limits, &h) < 0) {
    luaL_pushfail(L);
    lua_pushstring(L, ember_wire_error());
    return 2;
  }
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, h.version);
  lua_setfield(L, -2, "version");
  lua_pushinteger(L, h.kind);
  lua_setfield(L, -2, "kind");
  lua_pushinteger(L, h.flags);
  lua_setfield(L, -2, "flags");
  lua_pushinteger(L, (lua_Integer)h.request_id);
  lua_setfield(L, -2, "request_id");
  lua_pushinteger(L, h.body_len);
  lua_setfield(L, -2, "body_len");
  lua_pushinteger(L, h.tensor_count);
  lua_setfield(L, -2, "tensor_count");
  return 1;
}

static const luaL_Reg wire_funcs[] = {
    {"wire_encode", w_encode},
    {"wire_decode", w_decode},
    {"wire_check", w_check},
    {"wire_header", w_header},
    {"wire_parse_header", w_parse_header},
    {"wire_set_hooks", w_set_hooks},
    {"wire_register_class", w_register_class},
    {"wire_class_of", w_class_of},
    {NULL, NULL}};

static void new_registry_table(lua_State *L, const void *key) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, key) != LUA_TTABLE) {
    lua_newtable(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, key);
  }
  lua_pop(L, 1);
}

void ember__lua_open_wire(lua_State *L) {
  if (luaL_newmetatable(L, MSG_METATABLE)) {
    lua_pushcfunction(L, msg_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, msg_gc);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, PAYLOADS_METATABLE)) {
    lua_pushcfunction(L, payloads_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  new_registry_table(L, &class_by_name_key);
  new_registry_table(L, &class_name_of_key);
  lua_pushvalue(L, 2);
  ember__lua_setfuncs(L, 1, wire_funcs);
  lua_pop(L, 1);
}
