/*
** make_corpus OUTDIR: records the fuzz targets' seed corpus from real
** traffic, into OUTDIR/{body,store,handshake,frame}/.
**
** Nothing here writes a frame by hand: two real transports talk through a
** recording proxy (a pair of plain sockets pumped while the loop turns),
** a real store client talks to a real store server the same way, and the
** bodies are what the Lua encoder (ember__lua_wire_encode) makes of Lua
** values: RPC requests [fn, args] with tensors, class instances (an RRef's
** state, a RemoteError), responses and errors; the RRef control messages
** are made the way core/rref.c makes them ([u64] or [u64, u64]).
**
** Seed formats (each target's header comment says more):
**   body/       1 byte payload count (0-3) + a body; its tensors are 8, 24
**               and 64 bytes in that order, as fuzz_body provides them
**   store/      the bytes a store client sent on one connection
**   handshake/  1 mode byte (bit 0 secret, bit 1 the transport connects) +
**               the bytes the far side sent
**   frame/      1 byte (flags | c) + c chunk sizes + a stream of frames
**
** scripts/fuzz --corpus rebuilds it (the nonces in the handshakes are random,
** so the files change on every run; the spec/fuzz/corpus copy is committed).
*/
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <msgpack.h>
#include <stdint.h>
#include <sys/stat.h>

#include "error.h"
#include "fuzz_common.h"
#include "future.h"
#include "lua_common.h"
#include "store.h"
#include "transport.h"

#define MAX_TURNS 200000

int luaopen_ember_core(lua_State *L);

static const char *outdir;

/* ---- Files --------------------------------------------------------------- */

static void write_file(const char *target, const char *name, const void *prefix,
                       size_t prefix_len, const void *data, size_t len) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", outdir, target);
  mkdir(path, 0777);
  snprintf(path, sizeof path, "%s/%s/%s", outdir, target, name);
  FILE *f = fopen(path, "wb");
  FUZZ_ASSERT(f != NULL, "cannot write %s", path);
  fwrite(prefix, 1, prefix_len, f);
  fwrite(data, 1, len, f);
  fclose(f);
}

/* ---- A growing byte buffer ----------------------------------------------- */

typedef struct {
  uint8_t *data;
  size_t len, cap;
} bytes_t;

static void bytes_add(bytes_t *b, const void *data, size_t len) {
  if (b->len + len > b->cap) {
    b->cap = (b->len + len) * 2;
    b->data = realloc(b->data, b->cap);
    FUZZ_ASSERT(b->data != NULL, "out of memory");
  }
  memcpy(b->data + b->len, data, len);
  b->len += len;
}

/* ---- A recording proxy --------------------------------------------------- */

typedef struct {
  int listener, a, b; /* a: the side that connected to us; b: the target */
  int target_port;
  bytes_t ab, ba; /* what a sent to b, and b to a */
} proxy_t;

static void proxy_start(proxy_t *p, int target_port, int *port) {
  memset(p, 0, sizeof *p);
  p->listener = fuzz_socket_listen(port);
  p->a = p->b = -1;
  p->target_port = target_port;
}

static void send_all(int fd, const char *data, size_t len) {
  while (len > 0) {
    ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
    if (n <= 0) {
      FUZZ_ASSERT(errno == EAGAIN || errno == EINTR, "proxy send: %s",
                  strerror(errno));
      continue;
    }
    data += n;
    len -= (size_t)n;
  }
}

static void pump(int from, int to, bytes_t *record) {
  char buf[65536];
  ssize_t n;
  while ((n = recv(from, buf, sizeof buf, MSG_DONTWAIT)) > 0) {
    bytes_add(record, buf, (size_t)n);
    send_all(to, buf, (size_t)n);
  }
}

static void proxy_pump(proxy_t *p) {
  if (p->a < 0 && (p->a = accept(p->listener, NULL, NULL)) >= 0)
    p->b = fuzz_socket_connect(p->target_port);
  if (p->a < 0)
    return;
  pump(p->a, p->b, &p->ab);
  pump(p->b, p->a, &p->ba);
}

static void proxy_close(proxy_t *p) {
  struct linger reset = {1, 0}; /* no TIME_WAIT: see fuzz_socket_feed */
  if (p->a >= 0) {
    setsockopt(p->a, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
    setsockopt(p->b, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
    close(p->a);
    close(p->b);
  }
  close(p->listener);
  free(p->ab.data);
  free(p->ba.data);
}

/* Turns the loop (and the proxy) until *done, or `turns` turns when done is
** NULL. */
static void turn_until(ember_loop_t *loop, proxy_t *p, const int *done,
                       int turns) {
  for (int i = 0; i < (done != NULL ? MAX_TURNS : turns); i++) {
    if (done != NULL && *done)
      return;
    uv_run(ember_loop_uv(loop), UV_RUN_NOWAIT);
    proxy_pump(p);
  }
  FUZZ_ASSERT(done == NULL || *done, "the recording did not finish");
}

/* ---- Lua values to send -------------------------------------------------- */

static lua_State *L;

/*
** Returns the requests (one side's calls) and the replies (the other
** side's), each {kind =, value =}. Tensors are 8, 24 and 64 bytes, so that a
** body's payloads match the ones fuzz_body provides.
*/
static const char values_chunk[] =
    "local core = ...\n"
    "local T = core.tensor\n"
    "local refs = {[math.max] = 'math:max', [string.rep] = 'string:rep',\n"
    "              [print] = 'ember.nn:Linear'}\n"
    "core.wire_set_hooks{function_ref = function(f) return refs[f] end}\n"
    "local RRef = {}\n"
    "function RRef.__pack(r) return {r.owner, r.id, r.fork, r.sender} end\n"
    "core.wire_register_class('ember.RRef', RRef)\n"
    "local RemoteError = {}\n"
    "core.wire_register_class('ember.RemoteError', RemoteError)\n"
    "local Point = {}\n"
    "core.wire_register_class('Point', Point)\n"
    "local t8 = T.full({2}, 1.5)\n"
    "local t24 = T.arange(0, 3, 1, 'int64')\n"
    "local t64 = T.full({4, 4}, -0.25)\n"
    "local g8 = T.full({2}, 0.5); g8.requires_grad = true\n"
    "local rref = setmetatable({owner = 1, id = 4294967298, fork = 7,\n"
    "                           sender = 1}, RRef)\n"
    "local REQUEST, RESPONSE, ERROR = 10, 11, 12\n"
    "local requests = {\n"
    "  {name = 'call_scalars', kind = REQUEST,\n"
    "   value = {math.max, {1, 2.5, -3, 'x', true, false}}},\n"
    "  {name = 'call_tensors', kind = REQUEST,\n"
    "   value = {print, {t8, t24, t64, t8}}},\n"
    "  {name = 'call_table', kind = REQUEST, value = {string.rep,\n"
    "   {{name = 'w1', rank = 1, sizes = {1, 2, 3}, [2.5] = 'half',\n"
    "     [true] = 0, nested = {{{}}}, big = 2^53, neg = math.mininteger}}}},\n"
    "  {name = 'call_rref', kind = REQUEST,\n"
    "   value = {math.max, {rref, setmetatable({x = 1, y = 2}, Point)}}},\n"
    "  {name = 'call_grad', kind = REQUEST, value = {print, {g8, {g8}}}},\n"
    "}\n"
    "local replies = {\n"
    "  {name = 'reply_nil', kind = RESPONSE, value = nil},\n"
    "  {name = 'reply_tensor', kind = RESPONSE, value = {t8, {t24}}},\n"
    "  {name = 'reply_string', kind = RESPONSE,\n"
    "   value = string.rep('ember ', 50)},\n"
    "  {name = 'reply_error', kind = ERROR, value = setmetatable({\n"
    "     code = 'EREMOTE', remote_code = 'EINVAL', message = 'bad input',\n"
    "     traceback = 'stack traceback:\\n\\t[C]: in ?', worker = 'w1'},\n"
    "     RemoteError)},\n"
    "}\n"
    "return requests, replies\n";

/* Encodes the value of list[i] into msg (raises on error). */
static void encode_entry(int list, int i, ember_wire_msg_t *msg, int *kind) {
  lua_rawgeti(L, list, i);
  lua_getfield(L, -1, "kind");
  *kind = (int)lua_tointeger(L, -1);
  lua_getfield(L, -2, "value");
  ember_wire_msg_init(msg);
  ember__lua_wire_encode(L, -1, msg, "value");
  lua_pop(L, 3);
}

static const char *entry_name(int list, int i) {
  lua_rawgeti(L, list, i);
  lua_getfield(L, -1, "name");
  const char *name = lua_tostring(L, -1);
  lua_pop(L, 2); /* the string stays in the list */
  return name;
}

/* The body seeds: each value's body, with its payload count in front. */
static void write_body_seeds(int list) {
  for (int i = 1; i <= (int)lua_rawlen(L, list); i++) {
    ember_wire_msg_t msg;
    int kind;
    encode_entry(list, i, &msg, &kind);
    uint8_t count = (uint8_t)(msg.payload_count > 3 ? 3 : msg.payload_count);
    write_file("body", entry_name(list, i), &count, 1, msg.body, msg.body_len);
    ember_wire_msg_free(&msg);
  }
}

/* An RRef control message as core/rref.c makes it. */
static void send_ids(ember_transport_t *t, int peer, int kind, uint64_t a,
                     uint64_t b, int count) {
  ember_wire_msg_t msg;
  msgpack_packer pk;
  ember_wire_msg_init(&msg);
  msgpack_packer_init(&pk, &msg, (msgpack_packer_write)ember_wire_msg_write);
  msgpack_pack_array(&pk, (size_t)count);
  msgpack_pack_uint64(&pk, a);
  if (count > 1)
    msgpack_pack_uint64(&pk, b);
  FUZZ_ASSERT(ember_transport_send(t, peer, kind, 0, 0, &msg) == 0, "send");
}

static void send_list(ember_transport_t *t, int peer, int list,
                      uint64_t first_id) {
  for (int i = 1; i <= (int)lua_rawlen(L, list); i++) {
    ember_wire_msg_t msg;
    int kind;
    encode_entry(list, i, &msg, &kind);
    FUZZ_ASSERT(ember_transport_send(t, peer, kind, msg.flags,
                                     first_id + (uint64_t)i, &msg) == 0,
                "send: %s", ember_wire_error());
  }
}

/* ---- Transports ---------------------------------------------------------- */

typedef struct {
  int frames; /* delivered to on_frame */
} side_t;

static void on_frame(void *user, int peer, ember_frame_t *frame) {
  (void)peer;
  ((side_t *)user)->frames++;
  ember_frame_free(frame);
}

static void on_peer_lost(void *user, int peer, int code, const char *why) {
  (void)user;
  (void)peer;
  (void)code;
  (void)why;
}

static ember_transport_t *transport(ember_loop_t *loop, const char *name,
                                    int id, int secret, side_t *side) {
  ember_transport_opts_t opts;
  ember_transport_callbacks_t cb;
  ember_transport_t *t;
  memset(&opts, 0, sizeof opts);
  memset(&cb, 0, sizeof cb);
  opts.name = name;
  opts.id = id;
  opts.secret = secret ? "fuzz secret" : NULL;
  ember_wire_default_limits(&opts.limits);
  cb.user = side;
  cb.on_frame = on_frame;
  cb.on_peer_lost = on_peer_lost;
  FUZZ_ASSERT(ember_transport_new(loop, &opts, &cb, &t) == 0, "transport");
  return t;
}

/* Byte length of the frame at data (0 if it is not whole). */
static size_t frame_length(const uint8_t *data, size_t len) {
  if (len < EMBER_WIRE_HEADER_SIZE)
    return 0;
  uint64_t body = 0, count = 0, size;
  for (int i = 0; i < 4; i++) {
    body |= (uint64_t)data[16 + i] << (8 * i);
    count |= (uint64_t)data[20 + i] << (8 * i);
  }
  size = EMBER_WIRE_HEADER_SIZE + 8 * count;
  if (size > len)
    return 0;
  for (uint64_t j = 0; j < count; j++) {
    uint64_t n = 0;
    for (int i = 0; i < 8; i++)
      n |= (uint64_t)data[EMBER_WIRE_HEADER_SIZE + 8 * j + (uint64_t)i]
           << (8 * i);
    size += n;
  }
  size += body;
  return size <= len ? (size_t)size : 0;
}

/* Handshake seeds: the stream cut after the handshake and after each
** `step` frames, and whole. Frame seeds: the whole stream in three chunkings.
*/
static void write_stream_seeds(const char *name, uint8_t mode, const bytes_t *s,
                               int handshake_frames) {
  char file[256];
  size_t at = 0;
  int frames = 0;
  while (at < s->len) {
    size_t n = frame_length(s->data + at, s->len - at);
    FUZZ_ASSERT(n > 0, "a recorded stream ends inside a frame");
    at += n;
    frames++;
    if (frames == handshake_frames ||
        (frames > handshake_frames && (frames - handshake_frames) % 4 == 0)) {
      snprintf(file, sizeof file, "%s_%d_frames", name, frames);
      write_file("handshake", file, &mode, 1, s->data, at);
    }
  }
  snprintf(file, sizeof file, "%s_all", name);
  write_file("handshake", file, &mode, 1, s->data, s->len);
  static const uint8_t whole[] = {0}, bytewise[] = {1, 0},
                       mixed[] = {3, 6, 99, 255}, direct[] = {0x12, 100, 0};
  snprintf(file, sizeof file, "%s_whole", name);
  write_file("frame", file, whole, sizeof whole, s->data, s->len);
  snprintf(file, sizeof file, "%s_bytewise", name);
  write_file("frame", file, bytewise, sizeof bytewise, s->data, s->len);
  snprintf(file, sizeof file, "%s_mixed", name);
  write_file("frame", file, mixed, sizeof mixed, s->data, s->len);
  snprintf(file, sizeof file, "%s_direct", name);
  write_file("frame", file, direct, sizeof direct, s->data, s->len);
}

/*
** w1 connects to w0 through the proxy (`w0_connects` 0), or w0 to w1 (1).
** The connecting side sends the requests, the other the replies and RRef
** control messages, then both say GOODBYE. The recorded stream is the one
** toward w0, which fuzz_handshake plays: w1's bytes.
*/
static void record_transports(int requests, int replies, int secret,
                              int w0_connects) {
  ember_loop_t *loop;
  side_t s0 = {0}, s1 = {0};
  proxy_t proxy;
  int port, proxy_port;
  FUZZ_ASSERT(ember_loop_new(&loop) == 0, "loop");
  ember_transport_t *w0 = transport(loop, "w0", 0, secret, &s0);
  ember_transport_t *w1 = transport(loop, "w1", 1, secret, &s1);
  ember_transport_t *listener = w0_connects ? w1 : w0;
  ember_transport_t *caller = w0_connects ? w0 : w1;
  side_t *callee_side = w0_connects ? &s1 : &s0;
  side_t *caller_side = w0_connects ? &s0 : &s1;
  int callee_id = w0_connects ? 1 : 0, caller_id = 1 - callee_id;
  FUZZ_ASSERT(ember_transport_listen(listener, "127.0.0.1", 0, &port) == 0,
              "listen");
  proxy_start(&proxy, port, &proxy_port);
  /* The listener never dials: it answers on the connection it accepted. */
  ember_transport_add_peer(listener, caller_id, caller_id ? "w1" : "w0",
                           "127.0.0.1", 1);
  ember_transport_add_peer(caller, callee_id, callee_id ? "w1" : "w0",
                           "127.0.0.1", proxy_port);
  int nrequests = (int)lua_rawlen(L, requests);
  int nreplies = (int)lua_rawlen(L, replies);
  send_list(caller, callee_id, requests, 0);
  int done = 0;
  for (int i = 0; i < MAX_TURNS && !(done = callee_side->frames == nrequests);
       i++)
    turn_until(loop, &proxy, NULL, 1);
  FUZZ_ASSERT(done, "the requests did not arrive");
  send_list(listener, caller_id, replies, 0);
  send_ids(listener, caller_id, EMBER_MSG_RREF_FORK, 4294967298u, 7, 2);
  send_ids(listener, caller_id, EMBER_MSG_RREF_CONFIRM, 7, 0, 1);
  send_ids(listener, caller_id, EMBER_MSG_RREF_DELETE, 4294967298u, 7, 2);
  send_ids(listener, caller_id, EMBER_MSG_RREF_DELETE_ACK, 7, 0, 1);
  send_ids(listener, caller_id, EMBER_MSG_RREF_CHILD_ACCEPT, 9, 0, 1);
  for (int i = 0;
       i < MAX_TURNS && !(done = caller_side->frames == nreplies + 5); i++)
    turn_until(loop, &proxy, NULL, 1);
  FUZZ_ASSERT(done, "the replies did not arrive");
  ember_transport_say_goodbye(w1);
  ember_transport_say_goodbye(w0);
  turn_until(loop, &proxy, NULL, 200);

  const char *name = secret ? (w0_connects ? "connect_secret" : "accept_secret")
                            : (w0_connects ? "connect" : "accept");
  uint8_t mode = (uint8_t)((secret ? 1 : 0) | (w0_connects ? 2 : 0));
  /* Toward w0: the proxy's a->b when w1 connected, b->a when w0 did. */
  bytes_t *to_w0 = w0_connects ? &proxy.ba : &proxy.ab;
  /* HELLO + AUTH, or WELCOME. */
  write_stream_seeds(name, mode, to_w0, w0_connects ? 1 : 2);
  proxy_close(&proxy);
  ember_transport_close(w0);
  ember_transport_close(w1);
  FUZZ_ASSERT(ember_loop_close(loop) == 0, "loop close");
}

/* ---- The store ----------------------------------------------------------- */

typedef ember_future_t *(*store_script_fn)(ember_store_client_t *c);

static ember_future_t *script_set_get(ember_store_client_t *c) {
  ember_future_release(ember_store_set(c, "worker/0", "127.0.0.1:29500", 14));
  return ember_store_get(c, "worker/0", 5000);
}

static ember_future_t *script_add(ember_store_client_t *c) {
  ember_future_release(ember_store_add(c, "barrier/1", 1));
  ember_future_release(ember_store_add(c, "barrier/1", -9000000000LL));
  return ember_store_get(c, "barrier/1", 5000);
}

static ember_future_t *script_wait_check(ember_store_client_t *c) {
  static const char *const keys[] = {"rank/0", "rank/1", "rank/2"};
  ember_future_t *wait = ember_store_wait(c, keys, 3, 5000);
  ember_future_release(ember_store_set(c, "rank/0", "w0", 2));
  ember_future_release(ember_store_set(c, "rank/1", "w1", 2));
  ember_future_release(ember_store_set(c, "rank/2", "", 0));
  ember_future_release(wait);
  return ember_store_check(c, keys, 3);
}

static ember_future_t *script_delete(ember_store_client_t *c) {
  ember_future_release(ember_store_set(c, "tmp", "x", 1));
  ember_future_release(ember_store_delete(c, "tmp"));
  return ember_store_delete(c, "tmp");
}

/* A get that times out: the client cancels it and hears what is missing. */
static ember_future_t *script_get_cancel(ember_store_client_t *c) {
  static const char *const keys[] = {"never/a", "never/b"};
  ember_future_release(ember_store_get(c, "never", 30));
  return ember_store_wait(c, keys, 2, 30);
}

static void record_store(const char *name, store_script_fn script) {
  ember_loop_t *loop;
  ember_store_server_t *server;
  proxy_t proxy;
  int proxy_port;
  FUZZ_ASSERT(ember_loop_new(&loop) == 0, "loop");
  FUZZ_ASSERT(ember_store_server_start(loop, "127.0.0.1", 0, &server) == 0,
              "store server");
  proxy_start(&proxy, ember_store_server_port(server), &proxy_port);
  ember_future_t *connect =
      ember_store_connect(loop, "127.0.0.1", proxy_port, 5000);
  int done = 0;
  for (int i = 0; i < MAX_TURNS && !done; i++) {
    turn_until(loop, &proxy, NULL, 1);
    done = ember_future_state(connect) != EMBER_FUTURE_PENDING;
  }
  FUZZ_ASSERT(ember_future_state(connect) == EMBER_FUTURE_DONE, "connect");
  ember_store_client_t *client = ember_future_payload(connect, NULL);
  ember_store_client_retain(client);
  ember_future_release(connect);
  ember_future_t *last = script(client);
  done = 0;
  for (int i = 0; i < MAX_TURNS && !done; i++) {
    turn_until(loop, &proxy, NULL, 1);
    done = ember_future_state(last) != EMBER_FUTURE_PENDING;
  }
  FUZZ_ASSERT(done, "the store script did not finish");
  turn_until(loop, &proxy, NULL, 50);
  ember_future_release(last);
  write_file("store", name, NULL, 0, proxy.ab.data, proxy.ab.len);
  ember_store_client_close(client);
  ember_store_client_release(client);
  proxy_close(&proxy);
  ember_store_server_close(server);
  FUZZ_ASSERT(ember_loop_close(loop) == 0, "loop close");
}

/* ---- Main ---------------------------------------------------------------- */

static int run(lua_State *Ls) {
  (void)Ls;
  luaL_requiref(L, "ember.core", luaopen_ember_core, 0);
  FUZZ_ASSERT(luaL_loadstring(L, values_chunk) == LUA_OK, "values chunk: %s",
              lua_tostring(L, -1));
  lua_insert(L, -2);
  lua_call(L, 1, 2);
  int requests = lua_absindex(L, -2), replies = lua_absindex(L, -1);
  write_body_seeds(requests);
  write_body_seeds(replies);
  for (int mode = 0; mode < 4; mode++)
    record_transports(requests, replies, mode & 1, (mode & 2) != 0);
  record_store("set_get", script_set_get);
  record_store("add", script_add);
  record_store("wait_check", script_wait_check);
  record_store("delete", script_delete);
  record_store("get_cancel", script_get_cancel);
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s OUTDIR\n", argv[0]);
    return 2;
  }
  outdir = argv[1];
  mkdir(outdir, 0777);
  fuzz_report = stderr;
  L = luaL_newstate();
  luaL_openlibs(L);
  lua_pushcfunction(L, run);
  if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
    fprintf(stderr, "make_corpus: %s\n", lua_tostring(L, -1));
    return 1;
  }
  lua_close(L);
  FUZZ_ASSERT(ember_future_live_count() == 0, "a future was leaked");
  return 0;
}
