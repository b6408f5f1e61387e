/*
** Lua bindings for the RPC agent: an Agent userdata that sends calls, hands
** requests to a Lua handler and sends its answers, plus the reply payload
** that futures of calls hold (decoded when Lua reads it).
**
** The policy (names, rendezvous, what a request runs, shutdown) is in
** lua/ember/rpc.lua; this file moves bytes between Lua values and the agent.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "error.h"
#include "faults.h"
#include "lua_common.h"

#define AGENT_METATABLE "ember.Agent"
#define FRAME_METATABLE "ember.Frame"

/* Where tensors of cuda:n sent to one peer arrive: `call` for requests to
** it (this worker's device_maps), `reply` for responses to it (the inverse
** of that peer's map for this worker). -1: the CPU. */
typedef struct {
  int8_t call[EMBER_WIRE_MAX_DEVICE + 1];
  int8_t reply[EMBER_WIRE_MAX_DEVICE + 1];
  unsigned char has_call, has_reply;
} peer_device_map_t;

typedef struct {
  ember_agent_t *agent; /* NULL once closed */
  peer_device_map_t *device_maps; /* by peer id; NULL or map_count long */
  int map_count;
  ember_lua_ctx_t *ctx;
  int request_ref; /* Lua handler(peer, id, ok, fn_or_error, args) */
  int lost_ref;    /* Lua handler(peer, why) */
  int unknown_ref; /* Lua handler(peer, name) */
  int released_ref; /* Lua handler(rref id) */
  ember_wire_limits_t limits;
} agent_box_t;

/* Decoding replies needs the limits; one agent per state is the rule. */
static ember_wire_limits_t reply_limits;

/* --- Replies ------------------------------------------------------------------ */

/* Pushes the value a frame's body holds (raises on malformed input). */
static void push_body(lua_State *L, const ember_frame_t *frame,
                      const ember_wire_limits_t *limits) {
  ember__lua_wire_decode(L, frame->body, frame->header.body_len,
                         frame->payloads, frame->header.tensor_count, limits);
}

static void push_reply(lua_State *L, void *data) {
  push_body(L, &((ember_reply_t *)data)->frame, &reply_limits);
}

/* A reply whose decoding has effects (RRefs) is decoded once; others, on
** each read, which costs less than keeping the value. */
static int reply_has_packed_classes(const void *data) {
  const ember_reply_t *reply = data;
  return (reply->frame.header.flags & EMBER_FLAG_PACKED_CLASSES) != 0;
}

/* --- Incoming requests ---------------------------------------------------------- */

/* A frame owned by Lua while a request is decoded: freed by __gc whatever
** happens. */
static ember_frame_t *push_frame(lua_State *L, ember_frame_t *frame) {
  ember_frame_t *box = lua_newuserdatauv(L, sizeof(*box), 0);
  memset(box, 0, sizeof(*box));
  luaL_setmetatable(L, FRAME_METATABLE);
  *box = *frame;
  memset(frame, 0, sizeof(*frame));
  return box;
}

static int frame_gc(lua_State *L) {
  ember_frame_free(lua_touserdata(L, 1));
  return 0;
}

/* Protected: decodes [fn, args] from the frame at index 1. */
static int decode_request(lua_State *L) {
  ember_frame_t *frame = lua_touserdata(L, 1);
  push_body(L, frame, lua_touserdata(L, 2));
  if (lua_type(L, -1) != LUA_TTABLE)
    return luaL_error(L, "malformed request: the body is not [fn, args]");
  lua_rawgeti(L, -1, 1);
  lua_rawgeti(L, -2, 2);
  return 2;
}

/* Protected, on the context's thread: decodes the request and calls the Lua
** handler(peer, id, ok, fn_or_error, args). */
static int run_request(lua_State *L) {
  agent_box_t *box = lua_touserdata(L, 1);
  ember_frame_t *frame = lua_touserdata(L, 2);
  int peer = (int)lua_tointeger(L, 3);
  uint64_t id = frame->header.request_id;
  ember_frame_t *owned;
  int status;

  lua_settop(L, 0);
  owned = push_frame(L, frame); /* index 1 */
  lua_rawgeti(L, LUA_REGISTRYINDEX, box->request_ref);
  lua_pushinteger(L, peer);
  lua_pushinteger(L, (lua_Integer)id);
  lua_pushcfunction(L, decode_request);
  lua_pushlightuserdata(L, owned);
  lua_pushlightuserdata(L, &box->limits);
  status = lua_pcall(L, 2, 2, 0);
  if (status == LUA_OK) {
    lua_pushboolean(L, 1);
    lua_insert(L, -3);
  } else {
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    lua_pushnil(L);
  }
  ember_frame_free(owned); /* tensors in it are referenced by their views */
  lua_call(L, 5, 0);
  return 0;
}

/* Answers a request that Lua could not take with an error message (a
** msgpack string), so that the caller is not left waiting. */
static void refuse_request(agent_box_t *box, int peer, uint64_t id,
                           const char *why) {
  ember_wire_msg_t msg;
  size_t len = strlen(why);
  unsigned char head[5] = {0xdb, (unsigned char)(len >> 24),
                           (unsigned char)(len >> 16),
                           (unsigned char)(len >> 8), (unsigned char)len};
  ember_wire_msg_init(&msg);
  if (ember_wire_msg_write(&msg, head, sizeof(head)) != 0 ||
      ember_wire_msg_write(&msg, why, len) != 0) {
    ember_wire_msg_free(&msg);
    ember_wire_msg_init(&msg);
    ember_wire_msg_write(&msg, "\xc0", 1);
  }
  ember_agent_respond(box->agent, peer, id, 1, &msg);
}

static void on_request_cb(void *user, int peer, ember_frame_t *frame) {
  agent_box_t *box = user;
  lua_State *L = box->ctx->L;
  uint64_t id = frame->header.request_id;
  if (box->ctx->closing || !lua_checkstack(L, 8)) {
    ember_frame_free(frame);
    refuse_request(box, peer, id, "the worker could not take the request");
    return;
  }
  lua_pushcfunction(L, run_request);
  lua_pushlightuserdata(L, box);
  lua_pushlightuserdata(L, frame);
  lua_pushinteger(L, peer);
  if (lua_pcall(L, 3, 0, 0) != LUA_OK) {
    /* The handler never raises once it has the request: this is before. */
    const char *message = lua_tostring(L, -1);
    char why[300];
    snprintf(why, sizeof(why), "the worker could not dispatch the request: %s",
             message != NULL ? message : "(an error object)");
    lua_pop(L, 1);
    refuse_request(box, peer, id, why);
  }
  ember_frame_free(frame); /* a no-op when run_request took it */
}

/* Protected: calls the handler (a registry ref at 1) with the values at 2, 3. */
static int run_handler(lua_State *L) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, (int)lua_tointeger(L, 1));
  lua_rotate(L, 2, 1);
  lua_call(L, lua_gettop(L) - 2, 0);
  return 0;
}

/* Calls a Lua handler of the agent with (number[, text]); an error in it is
** reported, not raised: C callbacks have no one to raise to. */
static void call_handler(agent_box_t *box, int ref, const char *what,
                         lua_Integer number, const char *text) {
  lua_State *L = box->ctx->L;
  if (box->ctx->closing || ref == LUA_NOREF || !lua_checkstack(L, 6))
    return;
  lua_pushcfunction(L, run_handler);
  lua_pushinteger(L, ref);
  lua_pushinteger(L, number);
  if (text != NULL)
    lua_pushstring(L, text);
  if (lua_pcall(L, text != NULL ? 3 : 2, 0, 0) != LUA_OK) {
    fprintf(stderr, "ember: error in %s: %s\n", what, lua_tostring(L, -1));
    lua_pop(L, 1);
  }
}

static void on_peer_lost_cb(void *user, int peer, const char *why) {
  agent_box_t *box = user;
  call_handler(box, box->lost_ref, "on_peer_lost", peer, why);
}

static void on_unknown_peer_cb(void *user, int peer, const char *name) {
  agent_box_t *box = user;
  call_handler(box, box->unknown_ref, "on_unknown_peer", peer, name);
}

/* Protected: decodes a completed call's reply now (it is kept, decoded, in
** the future: later reads get the same value). */
static int decode_reply_now(lua_State *L) {
  ember__lua_push_outcome_value(L, lua_touserdata(L, 1));
  return 0;
}

/* Protected: decodes the frame at 1 (a Frame userdata) and drops the value. */
static int decode_and_drop(lua_State *L) {
  push_body(L, lua_touserdata(L, 1), &reply_limits);
  return 0;
}

static void report_decode_error(lua_State *L, const char *what) {
  fprintf(stderr, "ember: cannot decode %s: %s\n", what,
          lua_tostring(L, -1) ? lua_tostring(L, -1) : "(an error object)");
  lua_pop(L, 1);
}

static void on_packed_reply_cb(void *user, ember_future_t *future) {
  agent_box_t *box = user;
  lua_State *L = box->ctx->L;
  if (box->ctx->closing || !lua_checkstack(L, 8))
    return;
  lua_pushcfunction(L, decode_reply_now);
  lua_pushlightuserdata(L, future);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK)
    lua_pop(L, 1); /* whoever reads the reply gets the same error */
}

static void on_unclaimed_reply_cb(void *user, int peer, ember_frame_t *frame) {
  agent_box_t *box = user;
  lua_State *L = box->ctx->L;
  (void)peer;
  if (box->ctx->closing || !lua_checkstack(L, 8)) {
    ember_frame_free(frame);
    return;
  }
  lua_pushcfunction(L, decode_and_drop);
  push_frame(L, frame);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK)
    report_decode_error(L, "a late reply");
}

static void on_rref_released_cb(void *user, ember_rref_id_t rref) {
  agent_box_t *box = user;
  call_handler(box, box->released_ref, "on_rref_released", (lua_Integer)rref,
               NULL);
}

/* --- The Agent type --------------------------------------------------------------- */

ember_agent_t *ember__lua_agent_at(lua_State *L, int index, int closed_ok) {
  agent_box_t *box = luaL_checkudata(L, index, AGENT_METATABLE);
  if (box->agent == NULL && !closed_ok)
    luaL_error(L, "the RPC agent is shut down");
  return box->agent;
}

static agent_box_t *check_agent(lua_State *L) {
  agent_box_t *box = luaL_checkudata(L, 1, AGENT_METATABLE);
  if (box->agent == NULL)
    luaL_error(L, "the RPC agent is shut down");
  return box;
}

static uint64_t opt_uint(lua_State *L, int table, const char *field,
                         uint64_t fallback, uint64_t max) {
  lua_Integer v;
  int isnum;
  if (lua_getfield(L, table, field) == LUA_TNIL) {
    lua_pop(L, 1);
    return fallback;
  }
  v = lua_tointegerx(L, -1, &isnum);
  if (!isnum || v <= 0 || (uint64_t)v > max)
    luaL_error(L, "agent option '%s' must be an integer from 1 to %I", field,
               (lua_Integer)max);
  lua_pop(L, 1);
  return (uint64_t)v;
}

static void read_limits(lua_State *L, int opts, ember_wire_limits_t *limits) {
  ember_wire_default_limits(limits);
  limits->max_body = (uint32_t)opt_uint(L, opts, "max_body", limits->max_body,
                                        UINT32_MAX);
  limits->max_tensors = (uint32_t)opt_uint(L, opts, "max_tensors",
                                           limits->max_tensors, UINT32_MAX);
  limits->max_tensor_bytes = opt_uint(L, opts, "max_tensor_bytes",
                                      limits->max_tensor_bytes, INT64_MAX);
  limits->max_payload_bytes = opt_uint(L, opts, "max_message_bytes",
                                       limits->max_payload_bytes, INT64_MAX);
}

/*
** core.agent_new{name=, id=, secret=, on_request=fn, on_peer_lost=fn,
** on_unknown_peer=fn(id, name), on_rref_released=fn(rref id),
** busy_poll_us=, max_body=, max_tensors=, max_tensor_bytes=,
** max_message_bytes=, faults=, heartbeat_interval_ms=, heartbeat_window_ms=}
*/
static int agent_new(lua_State *L) {
  ember_lua_ctx_t *ctx = EMBER_LUA_CTX(L);
  ember_transport_opts_t opts;
  ember_agent_callbacks_t callbacks;
  agent_box_t *box;
  lua_Integer busy_poll_us;
  int err;

  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  memset(&opts, 0, sizeof(opts));
  box = lua_newuserdatauv(L, sizeof(*box), 0); /* index 2 */
  memset(box, 0, sizeof(*box));
  box->request_ref = box->lost_ref = box->unknown_ref = box->released_ref =
      LUA_NOREF;
  luaL_setmetatable(L, AGENT_METATABLE);
  box->ctx = ctx;

  lua_getfield(L, 1, "name");
  opts.name = luaL_checkstring(L, -1);
  lua_getfield(L, 1, "id");
  opts.id = (int)luaL_checkinteger(L, -1);
  lua_getfield(L, 1, "secret");
  opts.secret = lua_tostring(L, -1);
  lua_getfield(L, 1, "busy_poll_us");
  busy_poll_us = luaL_optinteger(L, -1, 0);
  if (busy_poll_us < 0 || busy_poll_us > 1000000)
    return luaL_error(L, "agent option 'busy_poll_us' must be an integer "
                         "from 0 to 1000000");
  opts.busy_poll_us = (unsigned)busy_poll_us;
  lua_getfield(L, 1, "faults");
  opts.faults = lua_tostring(L, -1);
  opts.heartbeat_interval_ms =
      (uint32_t)opt_uint(L, 1, "heartbeat_interval_ms", 0, UINT32_MAX);
  opts.heartbeat_window_ms =
      (uint32_t)opt_uint(L, 1, "heartbeat_window_ms", 0, UINT32_MAX);
  read_limits(L, 1, &opts.limits);
  box->limits = opts.limits;
  reply_limits = opts.limits;
  if (lua_getfield(L, 1, "on_request") != LUA_TFUNCTION)
    return luaL_error(L, "agent_new: on_request must be a function");
  box->request_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if (lua_getfield(L, 1, "on_peer_lost") == LUA_TFUNCTION)
    box->lost_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  else
    lua_pop(L, 1);
  if (lua_getfield(L, 1, "on_unknown_peer") == LUA_TFUNCTION)
    box->unknown_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  else
    lua_pop(L, 1);
  if (lua_getfield(L, 1, "on_rref_released") == LUA_TFUNCTION)
    box->released_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  else
    lua_pop(L, 1);

  callbacks.user = box;
  callbacks.on_request = on_request_cb;
  callbacks.on_peer_lost = on_peer_lost_cb;
  callbacks.on_unknown_peer = on_unknown_peer_cb;
  callbacks.on_rref_released = on_rref_released_cb;
  callbacks.on_packed_reply = on_packed_reply_cb;
  callbacks.on_unclaimed_reply = on_unclaimed_reply_cb;
  if ((err = ember_agent_new(ctx->loop, &opts, &callbacks, &box->agent)) != 0)
    return ember__lua_raise(L, err, "cannot start the RPC agent: %s",
                            err == EMBER_EINVAL ? ember_wire_error()
                                                : ember_strerror(err));
  lua_settop(L, 2);
  return 1;
}

/* agent:listen(host, port) -> the bound port */
static int agent_listen(lua_State *L) {
  agent_box_t *box = check_agent(L);
  const char *host = luaL_checkstring(L, 2);
  int port = (int)luaL_checkinteger(L, 3), bound = 0;
  int err = ember_transport_listen(ember_agent_transport(box->agent), host,
                                   port, &bound);
  if (err != 0)
    return ember__lua_raise(L, err, "%s", ember_wire_error());
  lua_pushinteger(L, bound);
  return 1;
}

static int agent_add_peer(lua_State *L) {
  agent_box_t *box = check_agent(L);
  int id = (int)luaL_checkinteger(L, 2);
  const char *name = luaL_checkstring(L, 3);
  const char *host = luaL_checkstring(L, 4);
  int port = (int)luaL_checkinteger(L, 5);
  /* 6th argument: false for a peer whose silence is not a loss (a client). */
  int watch = lua_isnoneornil(L, 6) || lua_toboolean(L, 6);
  ember_transport_t *t = ember_agent_transport(box->agent);
  int err = ember_transport_add_peer(t, id, name, host, port);
  if (err == 0 && !watch)
    err = ember_transport_watch_peer(t, id, 0);
  if (err != 0)
    return ember__lua_raise(L, err, "add_peer: %s", ember_wire_error());
  return 0;
}

/* The map for tensors sent to `peer` (as a request, or as a reply), or
** NULL: they arrive on its CPU. */
static const int8_t *device_map_for(const agent_box_t *box, int peer,
                                    int reply) {
  if (peer < 0 || peer >= box->map_count) return NULL;
  const peer_device_map_t *m = &box->device_maps[peer];
  if (reply) return m->has_reply ? m->reply : NULL;
  return m->has_call ? m->call : NULL;
}

/* Reads {[from] = to, ...} (0-based device indices) at index i into map. */
static void read_device_map(lua_State *L, int i, int8_t *map) {
  for (int d = 0; d <= EMBER_WIRE_MAX_DEVICE; d++) map[d] = -1;
  luaL_checktype(L, i, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, i) != 0) {
    int ok_from, ok_to;
    lua_Integer from = lua_tointegerx(L, -2, &ok_from);
    lua_Integer to = lua_tointegerx(L, -1, &ok_to);
    if (!ok_from || !ok_to || from < 0 || from > EMBER_WIRE_MAX_DEVICE ||
        to < -1 || to > EMBER_WIRE_MAX_DEVICE) {
      luaL_error(L, "set_device_map: a device map takes device indices from "
                    "0 to %d", EMBER_WIRE_MAX_DEVICE);
    }
    map[from] = (int8_t)to;
    lua_pop(L, 1);
  }
}

/* agent:set_device_map(peer, call_map or nil, reply_map or nil) */
static int agent_set_device_map(lua_State *L) {
  agent_box_t *box = check_agent(L);
  lua_Integer peer = luaL_checkinteger(L, 2);
  luaL_argcheck(L, peer >= 0 && peer < 65536, 2, "peer id out of range");
  if (peer >= box->map_count) {
    int count = (int)peer + 1;
    peer_device_map_t *grown =
        realloc(box->device_maps, sizeof *grown * (size_t)count);
    if (grown == NULL) return luaL_error(L, "out of memory");
    memset(grown + box->map_count, 0,
           sizeof *grown * (size_t)(count - box->map_count));
    box->device_maps = grown;
    box->map_count = count;
  }
  peer_device_map_t *m = &box->device_maps[peer];
  m->has_call = !lua_isnoneornil(L, 3);
  if (m->has_call) read_device_map(L, 3, m->call);
  m->has_reply = !lua_isnoneornil(L, 4);
  if (m->has_reply) read_device_map(L, 4, m->reply);
  return 0;
}

/* agent:call(peer, fn, args, timeout_seconds) -> future */
static int agent_call(lua_State *L) {
  agent_box_t *box = check_agent(L);
  int peer = (int)luaL_checkinteger(L, 2);
  lua_Number timeout = luaL_optnumber(L, 5, 0);
  ember_wire_msg_t *msg;
  ember_future_t *future;
  int err;

  luaL_argcheck(L, timeout >= 0 && timeout < 1e9, 5,
                "timeout must be between 0 and 1e9 seconds");
  msg = ember__lua_push_msg(L);
  if (ember_wire_msg_write(msg, "\x92", 1) != 0) /* [fn, args] */
    return luaL_error(L, "out of memory");
  msg->device_map = device_map_for(box, peer, 0);
  ember__lua_wire_encode(L, 3, msg, "fn");
  ember__lua_wire_encode(L, 4, msg, "args");
  err = ember_agent_call(box->agent, peer, msg,
                         (uint64_t)(timeout * 1000.0 + 0.5), &future);
  if (err != 0)
    return ember__lua_raise(L, err, "%s", ember_wire_error());
  ember__lua_push_future(L, future);
  return 1;
}

/* agent:respond(peer, request_id, failed, value) */
static int agent_respond(lua_State *L) {
  agent_box_t *box = check_agent(L);
  int peer = (int)luaL_checkinteger(L, 2);
  lua_Integer id = luaL_checkinteger(L, 3);
  int failed = lua_toboolean(L, 4);
  ember_wire_msg_t *msg;
  int err;

  lua_settop(L, 5);
  msg = ember__lua_push_msg(L);
  msg->device_map = device_map_for(box, peer, 1);
  ember__lua_wire_encode(L, 5, msg, failed ? "error" : "result");
  err = ember_agent_respond(box->agent, peer, (uint64_t)id, failed, msg);
  if (err != 0)
    return ember__lua_raise(L, err, "respond: %s", ember_wire_error());
  return 0;
}

static int agent_drained(lua_State *L) {
  agent_box_t *box = check_agent(L);
  ember_future_t *future = ember_agent_drained(box->agent);
  if (future == NULL)
    return luaL_error(L, "out of memory");
  ember__lua_push_future(L, future);
  return 1;
}

static int agent_flushed(lua_State *L) {
  agent_box_t *box = check_agent(L);
  ember_future_t *future =
      ember_transport_flushed(ember_agent_transport(box->agent));
  if (future == NULL)
    return luaL_error(L, "out of memory");
  ember__lua_push_future(L, future);
  return 1;
}

static int agent_goodbye(lua_State *L) {
  agent_box_t *box = check_agent(L);
  ember_transport_say_goodbye(ember_agent_transport(box->agent));
  return 0;
}

/* agent:goodbyes_done() -> a future: every GOODBYE acknowledged or given up */
static int agent_goodbyes_done(lua_State *L) {
  agent_box_t *box = check_agent(L);
  ember_future_t *future =
      ember_transport_goodbyes_done(ember_agent_transport(box->agent));
  if (future == NULL)
    return luaL_error(L, "out of memory");
  ember__lua_push_future(L, future);
  return 1;
}

/* Sets t[name] = v on the table at the top. */
static void set_count(lua_State *L, const char *name, uint64_t v) {
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, name);
}

/* The transport's own counters: fault injection, heartbeats, goodbyes. */
static void set_transport_counters(lua_State *L, ember_transport_t *t) {
  ember_transport_stats_t ts;
  ember_transport_stats(t, &ts);
  set_count(L, "faults_dropped", ts.faults_dropped);
  set_count(L, "faults_delayed", ts.faults_delayed);
  set_count(L, "heartbeats_sent", ts.heartbeats_sent);
  set_count(L, "heartbeats_received", ts.heartbeats_received);
  set_count(L, "goodbyes_resent", ts.goodbyes_resent);
}

static void set_counters(lua_State *L, const ember_agent_stats_t *s) {
  lua_pushinteger(L, (lua_Integer)s->calls_sent);
  lua_setfield(L, -2, "calls_sent");
  lua_pushinteger(L, (lua_Integer)s->calls_served);
  lua_setfield(L, -2, "calls_served");
  lua_pushinteger(L, (lua_Integer)s->calls_failed);
  lua_setfield(L, -2, "calls_failed");
  lua_pushinteger(L, (lua_Integer)s->timeouts);
  lua_setfield(L, -2, "timeouts");
  lua_pushinteger(L, (lua_Integer)s->late_replies);
  lua_setfield(L, -2, "late_replies");
  lua_pushinteger(L, (lua_Integer)s->pending);
  lua_setfield(L, -2, "in_flight");
  lua_pushinteger(L, (lua_Integer)s->serving);
  lua_setfield(L, -2, "serving");
}

/* agent:stats() -> {totals..., peers = {[id] = {...}}} */
static int agent_stats(lua_State *L) {
  agent_box_t *box = check_agent(L);
  ember_transport_t *t = ember_agent_transport(box->agent);
  ember_agent_stats_t s;
  uint64_t bytes_in = 0, bytes_out = 0;
  int count = ember_transport_peer_count(t);

  lua_newtable(L);
  ember_agent_stats(box->agent, &s);
  set_counters(L, &s);
  set_transport_counters(L, t);
  lua_newtable(L);
  for (int id = 0; id < count; id++) {
    ember_peer_stats_t ps;
    if (ember_transport_peer_stats(t, id, &ps) != 0)
      continue;
    lua_newtable(L);
    ember_agent_peer_stats(box->agent, id, &s);
    set_counters(L, &s);
    lua_pushinteger(L, (lua_Integer)ps.bytes_in);
    lua_setfield(L, -2, "bytes_in");
    lua_pushinteger(L, (lua_Integer)ps.bytes_out);
    lua_setfield(L, -2, "bytes_out");
    lua_pushboolean(L, ps.connected);
    lua_setfield(L, -2, "connected");
    lua_pushboolean(L, ps.lost);
    lua_setfield(L, -2, "lost");
    lua_pushboolean(L, ps.left);
    lua_setfield(L, -2, "left");
    set_count(L, "heartbeats_in", ps.heartbeats_in);
    set_count(L, "heartbeats_out", ps.heartbeats_out);
    lua_rawseti(L, -2, id);
    bytes_in += ps.bytes_in;
    bytes_out += ps.bytes_out;
  }
  lua_setfield(L, -2, "peers");
  lua_pushinteger(L, (lua_Integer)bytes_in);
  lua_setfield(L, -2, "bytes_in");
  lua_pushinteger(L, (lua_Integer)bytes_out);
  lua_setfield(L, -2, "bytes_out");
  return 1;
}

static void close_box(lua_State *L, agent_box_t *box) {
  if (box->agent != NULL) {
    ember_agent_t *agent = box->agent;
    box->agent = NULL;
    ember_agent_close(agent);
  }
  if (!box->ctx->closing) {
    luaL_unref(L, LUA_REGISTRYINDEX, box->request_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, box->lost_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, box->unknown_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, box->released_ref);
  }
  box->request_ref = box->lost_ref = box->unknown_ref = box->released_ref =
      LUA_NOREF;
  free(box->device_maps);
  box->device_maps = NULL;
  box->map_count = 0;
}

static int agent_close(lua_State *L) {
  close_box(L, luaL_checkudata(L, 1, AGENT_METATABLE));
  return 0;
}

static int agent_tostring(lua_State *L) {
  agent_box_t *box = luaL_checkudata(L, 1, AGENT_METATABLE);
  lua_pushfstring(L, "ember.Agent (%s)", box->agent ? "running" : "closed");
  return 1;
}

static const luaL_Reg agent_methods[] = {
    {"listen", agent_listen},   {"add_peer", agent_add_peer},
    {"call", agent_call},       {"respond", agent_respond},
    {"drained", agent_drained}, {"flushed", agent_flushed},
    {"goodbye", agent_goodbye}, {"goodbyes_done", agent_goodbyes_done},
    {"stats", agent_stats},
    {"set_device_map", agent_set_device_map},
    {"close", agent_close},     {NULL, NULL}};

static const luaL_Reg agent_metamethods[] = {{"__gc", agent_close},
                                             {"__close", agent_close},
                                             {"__tostring", agent_tostring},
                                             {NULL, NULL}};

/* core.check_faults(spec) -> nil, or why the spec is malformed (so that
** init_rpc can refuse it before it joins the world). */
static int check_faults(lua_State *L) {
  const char *spec = luaL_optstring(L, 1, NULL);
  char why[800];
  ember_faults_t *faults;
  int err = ember_faults_parse(spec, &faults, why, sizeof(why));
  ember_faults_free(faults);
  if (err == 0)
    return 0;
  lua_pushstring(L, err == EMBER_EINVAL ? why : ember_strerror(err));
  return 1;
}

static const luaL_Reg rpc_funcs[] = {{"agent_new", agent_new},
                                     {"check_faults", check_faults},
                                     {NULL, NULL}};

/* Expects the context at index 1 and the module table at index 2. */
void ember__lua_open_rpc(lua_State *L) {
  if (luaL_newmetatable(L, AGENT_METATABLE)) {
    ember__lua_setfuncs(L, 1, agent_metamethods);
    lua_newtable(L);
    ember__lua_setfuncs(L, 1, agent_methods);
    ember__lua_setfuncs(L, 1, ember__lua_rref_methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, FRAME_METATABLE)) {
    lua_pushcfunction(L, frame_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  ember_wire_default_limits(&reply_limits);
  ember__lua_register_cached_payload(lua_touserdata(L, 1), &ember_reply_payload,
                                     push_reply, reply_has_packed_classes);
  lua_pushvalue(L, 2);
  ember__lua_setfuncs(L, 1, rpc_funcs);
  lua_pop(L, 1);
}
