/*
** Lua bindings for the rendezvous store (store.h).
**
**   core.store_serve(host, port)            -> server (server:port(),
**                                              server:close())
**   core.store_connect(host, port, timeout) -> future of a client
**   client:set(key, value)      -> future of true
**   client:get(key, timeout)    -> future of the value (a string)
**   client:add(key, delta)      -> future of the new integer
**   client:delete(key)          -> future of whether the key existed
**   client:wait(keys, timeout)  -> future of true once all keys exist
**   client:check(keys)          -> future of a list of booleans
**   client:local_address()      -> this end's IP address (a string)
**   client:close()
**
** Timeouts are in seconds; nil means none. Failures (ETIMEDOUT, EPEERLOST)
** come out of the futures as ember.Error values.
*/
#include <math.h>
#include <string.h>

#include "error.h"
#include "lua_common.h"
#include "store.h"

#define SERVER_METATABLE "ember.StoreServer"
#define CLIENT_METATABLE "ember.StoreClient"

typedef struct {
  ember_store_server_t *server; /* NULL once closed */
} server_box_t;

typedef struct {
  ember_store_client_t *client; /* one reference; NULL once closed */
} client_box_t;

/* Finalizers that run while the state closes find the loop gone. */
static ember_lua_ctx_t *open_ctx(lua_State *L, const char *what) {
  ember_lua_ctx_t *ctx = EMBER_LUA_CTX(L);
  if (ctx->closing)
    luaL_error(L, "%s: ember's loop is closed (the Lua state is closing)",
               what);
  return ctx;
}

static const char *check_host(lua_State *L, int index) {
  size_t len;
  const char *host = luaL_checklstring(L, index, &len);
  luaL_argcheck(L, len > 0 && strlen(host) == len, index,
                "a host name or address");
  return host;
}

static int check_port(lua_State *L, int index, int lowest) {
  lua_Integer port = luaL_checkinteger(L, index);
  luaL_argcheck(L, port >= lowest && port <= 65535, index,
                lowest ? "a port between 1 and 65535"
                       : "a port between 0 and 65535");
  return (int)port;
}

static const char *check_key(lua_State *L, int index) {
  size_t len;
  const char *key = luaL_checklstring(L, index, &len);
  luaL_argcheck(L, strlen(key) == len, index, "a key must not contain '\\0'");
  return key;
}

/* Seconds (nil: none) to milliseconds (EMBER_STORE_NO_TIMEOUT: none). */
static uint64_t opt_timeout_ms(lua_State *L, int index) {
  lua_Number seconds;
  if (lua_isnoneornil(L, index))
    return EMBER_STORE_NO_TIMEOUT;
  seconds = luaL_checknumber(L, index);
  luaL_argcheck(L, seconds > 0, index,
                "a timeout in seconds (> 0), or nil for none");
  if (seconds >= 1e9) /* math.huge included */
    return EMBER_STORE_NO_TIMEOUT;
  return (uint64_t)ceil(seconds * 1000.0);
}

/*
** The strings of the list at `index`, in a userdata pushed on the stack (so
** an error half-way leaks nothing). They stay valid while the list does.
*/
static const char **check_keys(lua_State *L, int index, size_t *count) {
  const char **keys;
  luaL_checktype(L, index, LUA_TTABLE);
  *count = (size_t)luaL_len(L, index);
  keys = lua_newuserdatauv(L, (*count ? *count : 1) * sizeof(*keys), 0);
  for (size_t i = 0; i < *count; i++) {
    size_t len;
    if (lua_rawgeti(L, index, (lua_Integer)i + 1) != LUA_TSTRING)
      luaL_argerror(L, index,
                    lua_pushfstring(L, "keys[%d] must be a string, not %s",
                                    (int)i + 1, luaL_typename(L, -1)));
    keys[i] = lua_tolstring(L, -1, &len);
    if (strlen(keys[i]) != len)
      luaL_argerror(
          L, index,
          lua_pushfstring(L, "keys[%d] must not contain '\\0'", (int)i + 1));
    lua_pop(L, 1); /* the list keeps it alive */
  }
  return keys;
}

static int push_op(lua_State *L, ember_future_t *future, const char *what) {
  if (future == NULL)
    return luaL_error(L, "%s: out of memory", what);
  ember__lua_push_future(L, future);
  return 1;
}

/* --- Server
 * ---------------------------------------------------------------------- */

static server_box_t *check_server_box(lua_State *L) {
  return luaL_checkudata(L, 1, SERVER_METATABLE);
}

static int store_serve(lua_State *L) {
  const char *host = check_host(L, 1);
  int port = check_port(L, 2, 0);
  ember_lua_ctx_t *ctx = open_ctx(L, "store_serve");
  server_box_t *box = lua_newuserdatauv(L, sizeof(*box), 0);
  int err;

  box->server = NULL; /* created safe */
  luaL_setmetatable(L, SERVER_METATABLE);
  if ((err = ember_store_server_start(ctx->loop, host, port, &box->server)))
    return ember__lua_raise(L, err, "store_serve: cannot listen on %s:%d: %s",
                            host, port, ember_strerror(err));
  return 1;
}

static int server_port(lua_State *L) {
  server_box_t *box = check_server_box(L);
  luaL_argcheck(L, box->server != NULL, 1, "the store server is closed");
  lua_pushinteger(L, ember_store_server_port(box->server));
  return 1;
}

static int server_close(lua_State *L) {
  server_box_t *box = check_server_box(L);
  if (box->server != NULL) {
    ember_store_server_close(box->server);
    box->server = NULL;
  }
  return 0;
}

static int server_tostring(lua_State *L) {
  server_box_t *box = check_server_box(L);
  if (box->server == NULL)
    lua_pushliteral(L, "ember.StoreServer (closed)");
  else
    lua_pushfstring(L, "ember.StoreServer (port %d)",
                    ember_store_server_port(box->server));
  return 1;
}

/* --- Client
 * ---------------------------------------------------------------------- */

static int store_connect(lua_State *L) {
  const char *host = check_host(L, 1);
  int port = check_port(L, 2, 1);
  uint64_t timeout_ms = opt_timeout_ms(L, 3);
  ember_lua_ctx_t *ctx = open_ctx(L, "store_connect");
  return push_op(L, ember_store_connect(ctx->loop, host, port, timeout_ms),
                 "store_connect");
}

static ember_store_client_t *check_client(lua_State *L, const char *what) {
  client_box_t *box = luaL_checkudata(L, 1, CLIENT_METATABLE);
  luaL_argcheck(L, box->client != NULL, 1, "the store client is closed");
  open_ctx(L, what);
  return box->client;
}

static int client_set(lua_State *L) {
  ember_store_client_t *client = check_client(L, "set");
  const char *key = check_key(L, 2);
  size_t len;
  const char *value = luaL_checklstring(L, 3, &len);
  return push_op(L, ember_store_set(client, key, value, len), "set");
}

static int client_get(lua_State *L) {
  ember_store_client_t *client = check_client(L, "get");
  const char *key = check_key(L, 2);
  uint64_t timeout_ms = opt_timeout_ms(L, 3);
  return push_op(L, ember_store_get(client, key, timeout_ms), "get");
}

static int client_add(lua_State *L) {
  ember_store_client_t *client = check_client(L, "add");
  const char *key = check_key(L, 2);
  lua_Integer delta = luaL_checkinteger(L, 3);
  return push_op(L, ember_store_add(client, key, (int64_t)delta), "add");
}

static int client_delete(lua_State *L) {
  ember_store_client_t *client = check_client(L, "delete");
  const char *key = check_key(L, 2);
  return push_op(L, ember_store_delete(client, key), "delete");
}

static int client_wait(lua_State *L) {
  ember_store_client_t *client = check_client(L, "wait");
  uint64_t timeout_ms = opt_timeout_ms(L, 3);
  size_t count;
  const char **keys = check_keys(L, 2, &count);
  return push_op(L, ember_store_wait(client, keys, count, timeout_ms), "wait");
}

static int client_check(lua_State *L) {
  ember_store_client_t *client = check_client(L, "check");
  size_t count;
  const char **keys = check_keys(L, 2, &count);
  return push_op(L, ember_store_check(client, keys, count), "check");
}

/* The address this host reaches the store from, for peers to reach it at. */
static int client_local_address(lua_State *L) {
  ember_store_client_t *client = check_client(L, "local_address");
  char address[INET6_ADDRSTRLEN + 1];
  int err = ember_store_client_local_address(client, address, sizeof(address));
  if (err != 0)
    return ember__lua_raise(L, err, "local_address: %s", ember_strerror(err));
  lua_pushstring(L, address);
  return 1;
}

/* Closes the connection (for every handle on it); pending ops fail. */
static int client_close(lua_State *L) {
  client_box_t *box = luaL_checkudata(L, 1, CLIENT_METATABLE);
  ember_store_client_t *client = box->client;
  if (client != NULL) {
    box->client = NULL;
    if (!EMBER_LUA_CTX(L)->closing)
      ember_store_client_close(client);
    ember_store_client_release(client);
  }
  return 0;
}

/* Drops this handle's reference; the connection closes with the last one. */
static int client_gc(lua_State *L) {
  client_box_t *box = luaL_checkudata(L, 1, CLIENT_METATABLE);
  if (box->client != NULL) {
    ember_store_client_release(box->client);
    box->client = NULL;
  }
  return 0;
}

static int client_tostring(lua_State *L) {
  client_box_t *box = luaL_checkudata(L, 1, CLIENT_METATABLE);
  if (box->client == NULL)
    lua_pushliteral(L, "ember.StoreClient (closed)");
  else
    lua_pushfstring(L, "ember.StoreClient: %p", (void *)box->client);
  return 1;
}

/* --- Payload pushers
 * ---------------------------------------------------------- */

static void push_client(lua_State *L, void *data) {
  client_box_t *box = lua_newuserdatauv(L, sizeof(*box), 0);
  box->client = NULL;
  luaL_setmetatable(L, CLIENT_METATABLE);
  ember_store_client_retain(data);
  box->client = data;
}

static void push_bytes(lua_State *L, void *data) {
  ember_store_bytes_t *bytes = data;
  lua_pushlstring(L, bytes->data, bytes->len);
}

static void push_int(lua_State *L, void *data) {
  lua_pushinteger(L, (lua_Integer) * (int64_t *)data);
}

static void push_bool(lua_State *L, void *data) {
  lua_pushboolean(L, *(unsigned char *)data);
}

static void push_flags(lua_State *L, void *data) {
  ember_store_flags_t *flags = data;
  lua_createtable(L, (int)flags->count, 0);
  for (size_t i = 0; i < flags->count; i++) {
    lua_pushboolean(L, flags->exists[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
}

/* --- Registration
 * -------------------------------------------------------------- */

static const luaL_Reg server_methods[] = {
    {"port", server_port}, {"close", server_close}, {NULL, NULL}};

static const luaL_Reg server_metamethods[] = {{"__gc", server_close},
                                              {"__close", server_close},
                                              {"__tostring", server_tostring},
                                              {NULL, NULL}};

static const luaL_Reg client_methods[] = {
    {"set", client_set},
    {"get", client_get},
    {"add", client_add},
    {"delete", client_delete},
    {"wait", client_wait},
    {"check", client_check},
    {"local_address", client_local_address},
    {"close", client_close},
    {NULL, NULL}};

static const luaL_Reg client_metamethods[] = {{"__gc", client_gc},
                                              {"__close", client_close},
                                              {"__tostring", client_tostring},
                                              {NULL, NULL}};

static const luaL_Reg core_funcs[] = {{"store_serve", store_serve},
                                      {"store_connect", store_connect},
                                      {NULL, NULL}};

static void new_metatable(lua_State *L, const char *name,
                          const luaL_Reg *metamethods,
                          const luaL_Reg *methods) {
  if (luaL_newmetatable(L, name)) {
    ember__lua_setfuncs(L, 1, metamethods);
    lua_newtable(L);
    ember__lua_setfuncs(L, 1, methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
}

/* Expects the context at index 1 and the module table at index 2. */
void ember__lua_open_store(lua_State *L) {
  new_metatable(L, SERVER_METATABLE, server_metamethods, server_methods);
  new_metatable(L, CLIENT_METATABLE, client_metamethods, client_methods);
  if (ember__lua_register_payload(&ember_store_client_payload, push_client) ||
      ember__lua_register_payload(&ember_store_bytes_payload, push_bytes) ||
      ember__lua_register_payload(&ember_store_int_payload, push_int) ||
      ember__lua_register_payload(&ember_store_bool_payload, push_bool) ||
      ember__lua_register_payload(&ember_store_flags_payload, push_flags))
    luaL_error(L, "ember.core: too many payload types to register");
  lua_pushvalue(L, 2);
  ember__lua_setfuncs(L, 1, core_funcs);
  lua_pop(L, 1);
}
