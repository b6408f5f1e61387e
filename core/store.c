/*
** The rendezvous store: a key/value server and its client, on libuv TCP.
**
** Frames are a big-endian u32 length and a msgpack array. Requests are
** [op, id, args...], replies [id, status, results...] where status is 0, a
** negative error code followed by a message, or STATUS_CANCELLED (the answer
** to a cancelled wait, followed by the keys still missing).
**
** Frames are encoded with msgpack-c but read with the small checked reader
** below: messages are flat arrays of integers, strings and booleans, and a
** reader that checks every length against the bytes present cannot be made to
** allocate from a forged count.
**
** Lifetimes: every handle's `data` is an ember_handle_owner_t-prefixed
** struct, so ember_loop_close can close forgotten handles. A server is freed
** once it was closed and its handles have closed; a client once it has no
** references left and its handles have closed.
*/
#include "store.h"

#include <inttypes.h>
#include <limits.h>
/* Replies are small: start their buffers small (msgpack-c reads this). */
#define MSGPACK_SBUFFER_INIT_SIZE 256
#include <msgpack.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

enum { OP_SET = 1, OP_GET, OP_ADD, OP_DELETE, OP_WAIT, OP_CHECK, OP_CANCEL };

#define STATUS_OK 0
#define STATUS_CANCELLED 1

#define READ_CHUNK (64u << 10)
#define MAX_KEYS (1u << 20)  /* keys in one wait or check */
#define RETRY_MS 50          /* between rounds of connection attempts */
#define MAX_ADDRESSES 8      /* of a host name, tried in turn */
#define EXPIRY_GRACE_MS 1000 /* for the store to say which keys are missing */
#define KEYS_LISTED 10       /* in a timeout message, then "and N more" */

static unsigned char bool_true = 1, bool_false = 0;

/* --- Payloads
 * ----------------------------------------------------------------- */

static void drop_client(void *data) {
  ember_store_client_release(data);
}

const ember_payload_type_t ember_store_client_payload = {"store client",
                                                         drop_client};
const ember_payload_type_t ember_store_bytes_payload = {"store bytes", free};
const ember_payload_type_t ember_store_int_payload = {"store integer", free};
const ember_payload_type_t ember_store_bool_payload = {"store boolean", NULL};
const ember_payload_type_t ember_store_flags_payload = {"store flags", free};

/* --- Reading msgpack, every length checked
 * ------------------------------------ */

typedef struct {
  const unsigned char *p;
  const unsigned char *end;
} reader_t;

static size_t bytes_left(const reader_t *r) {
  return (size_t)(r->end - r->p);
}

static uint64_t get_be(const unsigned char *p, size_t n) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++)
    v = v << 8 | p[i];
  return v;
}

static void put_be32(char *p, uint32_t v) {
  p[0] = (char)(v >> 24);
  p[1] = (char)(v >> 16);
  p[2] = (char)(v >> 8);
  p[3] = (char)v;
}

/* Reads an n-byte big-endian number. */
static int read_be(reader_t *r, size_t n, uint64_t *out) {
  if (bytes_left(r) < n)
    return -1;
  *out = get_be(r->p, n);
  r->p += n;
  return 0;
}

static int read_tag(reader_t *r, unsigned *tag) {
  if (bytes_left(r) == 0)
    return -1;
  *tag = *r->p++;
  return 0;
}

/* An array header whose count fits in the bytes left (one byte an item at
** least). */
static int read_array(reader_t *r, uint32_t *count) {
  unsigned tag;
  uint64_t n;
  if (read_tag(r, &tag) != 0)
    return -1;
  if ((tag & 0xf0) == 0x90)
    n = tag & 0x0f;
  else if (tag == 0xdc || tag == 0xdd) {
    if (read_be(r, tag == 0xdc ? 2 : 4, &n) != 0)
      return -1;
  } else
    return -1;
  if (n > bytes_left(r))
    return -1;
  *count = (uint32_t)n;
  return 0;
}

static int read_int(reader_t *r, int64_t *out) {
  unsigned tag;
  uint64_t v;
  if (read_tag(r, &tag) != 0)
    return -1;
  if (tag <= 0x7f || tag >= 0xe0) {
    *out = (int8_t)tag;
    return 0;
  }
  if (tag >= 0xcc && tag <= 0xcf) { /* uint 8, 16, 32, 64 */
    if (read_be(r, (size_t)1 << (tag - 0xcc), &v) != 0 || v > INT64_MAX)
      return -1;
    *out = (int64_t)v;
    return 0;
  }
  if (tag >= 0xd0 && tag <= 0xd3) { /* int 8, 16, 32, 64 */
    size_t n = (size_t)1 << (tag - 0xd0);
    if (read_be(r, n, &v) != 0)
      return -1;
    if (n < 8 && (v >> (8 * n - 1)) != 0)
      v |= ~UINT64_C(0) << (8 * n); /* sign-extend */
    *out = (int64_t)v;
    return 0;
  }
  return -1;
}

/* A str or bin: points into the frame. */
static int read_bytes(reader_t *r, const char **data, uint32_t *len) {
  unsigned tag;
  uint64_t n;
  size_t width;
  if (read_tag(r, &tag) != 0)
    return -1;
  if ((tag & 0xe0) == 0xa0) {
    n = tag & 0x1f;
  } else {
    if (tag == 0xd9 || tag == 0xc4)
      width = 1;
    else if (tag == 0xda || tag == 0xc5)
      width = 2;
    else if (tag == 0xdb || tag == 0xc6)
      width = 4;
    else
      return -1;
    if (read_be(r, width, &n) != 0)
      return -1;
  }
  if (n > bytes_left(r))
    return -1;
  *data = (const char *)r->p;
  *len = (uint32_t)n;
  r->p += n;
  return 0;
}

static int read_bool(reader_t *r, int *out) {
  unsigned tag;
  if (read_tag(r, &tag) != 0 || (tag != 0xc2 && tag != 0xc3))
    return -1;
  *out = tag == 0xc3;
  return 0;
}

/* --- Incoming bytes, cut into frames ---------------------------------------
 */

typedef struct {
  char *data;
  size_t start; /* the first byte not consumed */
  size_t len;   /* bytes held */
  size_t cap;
} inbuf_t;

/* Room for the next read; base NULL (libuv then reports UV_ENOBUFS) if out of
** memory. */
static uv_buf_t inbuf_space(inbuf_t *in) {
  if (in->start > 0) {
    memmove(in->data, in->data + in->start, in->len - in->start);
    in->len -= in->start;
    in->start = 0;
  }
  if (in->cap - in->len < READ_CHUNK) {
    size_t cap =
        in->cap * 2 > in->len + READ_CHUNK ? in->cap * 2 : in->len + READ_CHUNK;
    char *data = realloc(in->data, cap);
    if (data == NULL)
      return uv_buf_init(NULL, 0);
    in->data = data;
    in->cap = cap;
  }
  return uv_buf_init(in->data + in->len, (unsigned)(in->cap - in->len));
}

/*
** The next complete frame: returns 1 and its body, 0 when more bytes are
** needed, -1 when the frame declares more than the limit (*len says how
** much). The body stays valid until the next inbuf_space.
*/
static int inbuf_next(inbuf_t *in, const char **body, uint32_t *len) {
  size_t held = in->len - in->start;
  if (held < 4)
    return 0;
  *len = (uint32_t)get_be((const unsigned char *)in->data + in->start, 4);
  if (*len > EMBER_STORE_MAX_FRAME)
    return -1;
  if (held < 4 + (size_t)*len)
    return 0;
  *body = in->data + in->start + 4;
  in->start += 4 + (size_t)*len;
  return 1;
}

/* After a burst: gives a big buffer back once it is empty. */
static void inbuf_trim(inbuf_t *in) {
  if (in->start == in->len) {
    in->start = in->len = 0;
    if (in->cap > 16 * READ_CHUNK) {
      free(in->data);
      in->data = NULL;
      in->cap = 0;
    }
  }
}

/* --- Outgoing frames --------------------------------------------------------
 */

typedef struct {
  msgpack_sbuffer sbuf;
  msgpack_packer pk;
  int failed; /* a write ran out of memory */
} outbuf_t;

typedef struct {
  uv_write_t req;
  char *data;
} write_t;

static void out_begin(outbuf_t *out, uint32_t items) {
  msgpack_sbuffer_init(&out->sbuf);
  msgpack_packer_init(&out->pk, &out->sbuf, msgpack_sbuffer_write);
  out->failed = msgpack_sbuffer_write(&out->sbuf, "\0\0\0\0", 4) != 0;
  out->failed |= msgpack_pack_array(&out->pk, items) != 0;
}

static void out_int(outbuf_t *out, int64_t v) {
  out->failed |= msgpack_pack_int64(&out->pk, v) != 0;
}

static void out_str(outbuf_t *out, const char *s, size_t len) {
  out->failed |= msgpack_pack_str_with_body(&out->pk, s, len) != 0;
}

static void out_bin(outbuf_t *out, const void *data, size_t len) {
  out->failed |= msgpack_pack_bin_with_body(&out->pk, data, len) != 0;
}

static void out_bool(outbuf_t *out, int v) {
  out->failed |=
      (v ? msgpack_pack_true(&out->pk) : msgpack_pack_false(&out->pk)) != 0;
}

static void out_discard(outbuf_t *out) {
  msgpack_sbuffer_destroy(&out->sbuf);
}

static void write_cb(uv_write_t *req, int status) {
  write_t *sent = req->data;
  (void)status; /* a failed write shows up on the read side */
  free(sent->data);
  free(sent);
}

/* Sends the frame (and frees it either way). */
static int out_send(outbuf_t *out, uv_stream_t *stream) {
  size_t size = out->sbuf.size;
  write_t *pending;
  uv_buf_t buf;
  int err;

  if (out->failed || (pending = malloc(sizeof(*pending))) == NULL) {
    out_discard(out);
    return EMBER_ENOMEM;
  }
  if (size - 4 > EMBER_STORE_MAX_FRAME) {
    free(pending);
    out_discard(out);
    return UV_E2BIG;
  }
  put_be32(out->sbuf.data, (uint32_t)(size - 4));
  pending->data = msgpack_sbuffer_release(&out->sbuf);
  pending->req.data = pending;
  buf = uv_buf_init(pending->data, (unsigned)size);
  if ((err = uv_write(&pending->req, stream, &buf, 1, write_cb)) != 0) {
    free(pending->data);
    free(pending);
  }
  return err;
}

/* --- Addresses
 * ---------------------------------------------------------------- */

static int parse_numeric(const char *host, int port,
                         struct sockaddr_storage *addr) {
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)addr) == 0)
    return 0;
  return uv_ip6_addr(host, port, (struct sockaddr_in6 *)addr);
}

static void format_endpoint(char *out, size_t size, const char *host,
                            int port) {
  snprintf(out, size, strchr(host, ':') != NULL ? "[%s]:%d" : "%s:%d", host,
           port);
}

static void format_peer(uv_tcp_t *tcp, char *out, size_t size) {
  struct sockaddr_storage addr;
  int len = sizeof(addr);
  char host[INET6_ADDRSTRLEN] = "?";
  int port = 0;

  if (uv_tcp_getpeername(tcp, (struct sockaddr *)&addr, &len) == 0) {
    if (addr.ss_family == AF_INET6) {
      uv_ip6_name((struct sockaddr_in6 *)&addr, host, sizeof(host));
      port = ntohs(((struct sockaddr_in6 *)&addr)->sin6_port);
    } else {
      uv_ip4_name((struct sockaddr_in *)&addr, host, sizeof(host));
      port = ntohs(((struct sockaddr_in *)&addr)->sin_port);
    }
  }
  format_endpoint(out, size, host, port);
}

/* ============================================================================
** Server
** ========================================================================== */

typedef struct entry_s entry_t;
typedef struct waiter_s waiter_t;
typedef struct conn_s conn_t;

/* One key a waiter still waits for, linked into that key's entry. */
typedef struct wait_link_s {
  struct wait_link_s *prev, *next;
  entry_t *entry; /* NULL once the key has arrived */
  waiter_t *waiter;
} wait_link_t;

/* A key; an entry without a value exists only while someone waits for it. */
struct entry_s {
  entry_t *next; /* in its bucket */
  uint32_t hash;
  uint32_t key_len;
  int has_value;
  char *value;
  size_t value_len;
  wait_link_t *waiters;
  char key[]; /* key_len bytes and a NUL */
};

/* A get or wait the server answers when its keys arrive. */
struct waiter_s {
  waiter_t *prev, *next; /* in its connection's list */
  conn_t *conn;
  int64_t id;
  int op;
  uint32_t missing;
  uint32_t count;
  wait_link_t links[];
};

struct conn_s {
  ember_handle_owner_t owner;
  uv_tcp_t tcp;
  ember_store_server_t *server;
  conn_t *prev, *next;
  waiter_t *waiters;
  inbuf_t in;
  char peer[INET6_ADDRSTRLEN + 16];
};

struct ember_store_server_s {
  ember_handle_owner_t owner;
  uv_tcp_t listener;
  int port;
  int closed; /* ember_store_server_close was called */
  unsigned open_handles;
  conn_t *conns;
  entry_t **buckets;
  size_t bucket_count; /* a power of two */
  size_t entry_count;
};

/* --- The table
 * ---------------------------------------------------------------- */

static uint32_t hash_key(const char *key, size_t len) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (size_t i = 0; i < len; i++)
    h = (h ^ (unsigned char)key[i]) * 16777619u;
  return h;
}

/* The link that points at the entry for key, or at the end of its bucket. */
static entry_t **table_slot(ember_store_server_t *server, const char *key,
                            uint32_t len, uint32_t hash) {
  entry_t **slot = &server->buckets[hash & (server->bucket_count - 1)];
  while (*slot != NULL && ((*slot)->hash != hash || (*slot)->key_len != len ||
                           memcmp((*slot)->key, key, len) != 0))
    slot = &(*slot)->next;
  return slot;
}

static entry_t *table_find(ember_store_server_t *server, const char *key,
                           uint32_t len) {
  return *table_slot(server, key, len, hash_key(key, len));
}

static void table_grow(ember_store_server_t *server) {
  size_t count = server->bucket_count * 2;
  entry_t **buckets = calloc(count, sizeof(*buckets));
  if (buckets == NULL)
    return; /* longer chains, still correct */
  for (size_t i = 0; i < server->bucket_count; i++) {
    entry_t *entry = server->buckets[i], *next;
    for (; entry != NULL; entry = next) {
      next = entry->next;
      entry->next = buckets[entry->hash & (count - 1)];
      buckets[entry->hash & (count - 1)] = entry;
    }
  }
  free(server->buckets);
  server->buckets = buckets;
  server->bucket_count = count;
}

/* The entry for key, made (without a value) if missing; NULL if out of
** memory. */
static entry_t *table_find_or_add(ember_store_server_t *server, const char *key,
                                  uint32_t len) {
  uint32_t hash = hash_key(key, len);
  entry_t **slot = table_slot(server, key, len, hash);
  entry_t *entry;
  if (*slot != NULL)
    return *slot;
  if ((entry = calloc(1, sizeof(*entry) + len + 1)) == NULL)
    return NULL;
  entry->hash = hash;
  entry->key_len = len;
  memcpy(entry->key, key, len);
  *slot = entry;
  if (++server->entry_count > server->bucket_count)
    table_grow(server);
  return entry;
}

static void entry_free(entry_t *entry) {
  free(entry->value);
  free(entry);
}

static void table_remove(ember_store_server_t *server, entry_t *entry) {
  entry_t **slot = table_slot(server, entry->key, entry->key_len, entry->hash);
  *slot = entry->next;
  server->entry_count--;
  entry_free(entry);
}

static void drop_if_unused(ember_store_server_t *server, entry_t *entry) {
  if (!entry->has_value && entry->waiters == NULL)
    table_remove(server, entry);
}

static int entry_set(entry_t *entry, const char *value, size_t len) {
  char *copy = malloc(len + 1);
  if (copy == NULL)
    return EMBER_ENOMEM;
  memcpy(copy, value, len);
  copy[len] = '\0';
  free(entry->value);
  entry->value = copy;
  entry->value_len = len;
  entry->has_value = 1;
  return 0;
}

static void table_free(ember_store_server_t *server) {
  for (size_t i = 0; i < server->bucket_count; i++) {
    entry_t *entry = server->buckets[i], *next;
    for (; entry != NULL; entry = next) {
      next = entry->next;
      entry_free(entry);
    }
  }
  free(server->buckets);
}

/* --- Replies
 * ------------------------------------------------------------------ */

static int conn_closing(conn_t *conn) {
  return uv_is_closing((uv_handle_t *)&conn->tcp);
}

static void conn_send(conn_t *conn, outbuf_t *out) {
  if (conn_closing(conn))
    out_discard(out);
  else
    out_send(out, (uv_stream_t *)&conn->tcp); /* failures close on read */
}

/* Begins a success reply with `extra` results to follow. */
static void out_reply_head(outbuf_t *out, int64_t id, uint32_t extra) {
  out_begin(out, 2 + extra);
  out_int(out, id);
  out_int(out, STATUS_OK);
}

static void reply_ok(conn_t *conn, int64_t id) {
  outbuf_t out;
  out_reply_head(&out, id, 0);
  conn_send(conn, &out);
}

static void reply_value(conn_t *conn, int64_t id, const entry_t *entry) {
  outbuf_t out;
  out_reply_head(&out, id, 1);
  out_bin(&out, entry->value, entry->value_len);
  conn_send(conn, &out);
}

static void reply_int(conn_t *conn, int64_t id, int64_t value) {
  outbuf_t out;
  out_reply_head(&out, id, 1);
  out_int(&out, value);
  conn_send(conn, &out);
}

static void reply_bool(conn_t *conn, int64_t id, int value) {
  outbuf_t out;
  out_reply_head(&out, id, 1);
  out_bool(&out, value);
  conn_send(conn, &out);
}

static void reply_error(conn_t *conn, int64_t id, int code,
                        const char *message) {
  outbuf_t out;
  out_begin(&out, 3);
  out_int(&out, id);
  out_int(&out, code);
  out_str(&out, message, strlen(message));
  conn_send(conn, &out);
}

/* --- Waiters
 * ------------------------------------------------------------------ */

static void waiter_free(waiter_t *waiter) {
  conn_t *conn = waiter->conn;
  if (waiter->prev != NULL)
    waiter->prev->next = waiter->next;
  else
    conn->waiters = waiter->next;
  if (waiter->next != NULL)
    waiter->next->prev = waiter->prev;
  free(waiter);
}

/* Forgets a waiter that will not be answered (cancelled, or its client
** left). */
static void waiter_drop(waiter_t *waiter) {
  ember_store_server_t *server = waiter->conn->server;
  for (uint32_t i = 0; i < waiter->count; i++) {
    wait_link_t *link = &waiter->links[i];
    entry_t *entry = link->entry;
    if (entry == NULL)
      continue;
    if (link->prev != NULL)
      link->prev->next = link->next;
    else
      entry->waiters = link->next;
    if (link->next != NULL)
      link->next->prev = link->prev;
    drop_if_unused(server, entry);
  }
  waiter_free(waiter);
}

static waiter_t *waiter_new(conn_t *conn, int64_t id, int op, uint32_t keys) {
  waiter_t *waiter = calloc(1, sizeof(*waiter) + keys * sizeof(wait_link_t));
  if (waiter == NULL)
    return NULL;
  waiter->conn = conn;
  waiter->id = id;
  waiter->op = op;
  waiter->next = conn->waiters;
  if (conn->waiters != NULL)
    conn->waiters->prev = waiter;
  conn->waiters = waiter;
  return waiter;
}

/* Makes the waiter wait for `entry`, which has no value yet. */
static void waiter_link(waiter_t *waiter, entry_t *entry) {
  wait_link_t *link = &waiter->links[waiter->count++];
  link->entry = entry;
  link->waiter = waiter;
  link->next = entry->waiters;
  if (entry->waiters != NULL)
    entry->waiters->prev = link;
  entry->waiters = link;
  waiter->missing++;
}

/* The key of `entry` arrived: answers the waiters that waited only for it. */
static void wake_waiters(entry_t *entry) {
  wait_link_t *link = entry->waiters, *next;
  entry->waiters = NULL;
  for (; link != NULL; link = next) {
    waiter_t *waiter = link->waiter;
    next = link->next;
    link->entry = NULL;
    if (--waiter->missing > 0)
      continue;
    if (waiter->op == OP_GET)
      reply_value(waiter->conn, waiter->id, entry);
    else
      reply_ok(waiter->conn, waiter->id);
    waiter_free(waiter);
  }
}

/* --- Requests
 * ------------------------------------------------------------------ */

/* Handlers return NULL, or why the request is malformed (the connection is
** then closed). */
typedef const char *(*handler_fn)(conn_t *conn, int64_t id, reader_t *r,
                                  uint32_t args);

static const char *malformed = "malformed request";
static const char *out_of_memory = "out of memory";

static const char *handle_set(conn_t *conn, int64_t id, reader_t *r,
                              uint32_t args) {
  const char *key, *value;
  uint32_t key_len, value_len;
  entry_t *entry;
  if (args != 2 || read_bytes(r, &key, &key_len) != 0 ||
      read_bytes(r, &value, &value_len) != 0)
    return malformed;
  if ((entry = table_find_or_add(conn->server, key, key_len)) == NULL ||
      entry_set(entry, value, value_len) != 0)
    return out_of_memory;
  reply_ok(conn, id);
  wake_waiters(entry);
  return NULL;
}

static const char *handle_get(conn_t *conn, int64_t id, reader_t *r,
                              uint32_t args) {
  const char *key;
  uint32_t key_len;
  entry_t *entry;
  waiter_t *waiter;
  if (args != 1 || read_bytes(r, &key, &key_len) != 0)
    return malformed;
  if ((entry = table_find_or_add(conn->server, key, key_len)) == NULL)
    return out_of_memory;
  if (entry->has_value) {
    reply_value(conn, id, entry);
    return NULL;
  }
  if ((waiter = waiter_new(conn, id, OP_GET, 1)) == NULL) {
    drop_if_unused(conn->server, entry);
    return out_of_memory;
  }
  waiter_link(waiter, entry);
  return NULL;
}

/* Strict decimal: what add itself stores. */
static int parse_int64(const char *s, size_t len, int64_t *out) {
  size_t i = len > 0 && s[0] == '-';
  uint64_t v = 0, limit = i ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
  if (i == len)
    return -1;
  for (; i < len; i++) {
    if (s[i] < '0' || s[i] > '9' || v > (limit - (uint64_t)(s[i] - '0')) / 10)
      return -1;
    v = v * 10 + (uint64_t)(s[i] - '0');
  }
  *out = s[0] == '-' ? (int64_t)(0 - v) : (int64_t)v;
  return 0;
}

static const char *handle_add(conn_t *conn, int64_t id, reader_t *r,
                              uint32_t args) {
  const char *key;
  uint32_t key_len;
  int64_t delta, value = 0;
  entry_t *entry;
  char text[32], message[200];

  if (args != 2 || read_bytes(r, &key, &key_len) != 0 ||
      read_int(r, &delta) != 0)
    return malformed;
  if ((entry = table_find_or_add(conn->server, key, key_len)) == NULL)
    return out_of_memory;
  if (entry->has_value &&
      parse_int64(entry->value, entry->value_len, &value) != 0) {
    snprintf(message, sizeof(message),
             "store: add: the value of key '%.100s' is not an integer",
             entry->key);
    reply_error(conn, id, UV_EINVAL, message);
    return NULL;
  }
  if ((delta > 0 && value > INT64_MAX - delta) ||
      (delta < 0 && value < INT64_MIN - delta)) {
    snprintf(message, sizeof(message),
             "store: add: %" PRId64 " + %" PRId64 " overflows key '%.100s'",
             value, delta, entry->key);
    reply_error(conn, id, UV_ERANGE, message);
    drop_if_unused(conn->server, entry);
    return NULL;
  }
  value += delta;
  snprintf(text, sizeof(text), "%" PRId64, value);
  if (entry_set(entry, text, strlen(text)) != 0) {
    drop_if_unused(conn->server, entry);
    return out_of_memory;
  }
  reply_int(conn, id, value);
  wake_waiters(entry);
  return NULL;
}

static const char *handle_delete(conn_t *conn, int64_t id, reader_t *r,
                                 uint32_t args) {
  const char *key;
  uint32_t key_len;
  entry_t *entry;
  int existed;
  if (args != 1 || read_bytes(r, &key, &key_len) != 0)
    return malformed;
  entry = table_find(conn->server, key, key_len);
  existed = entry != NULL && entry->has_value;
  if (existed) /* an entry with a value has no waiters */
    table_remove(conn->server, entry);
  reply_bool(conn, id, existed);
  return NULL;
}

static const char *handle_wait(conn_t *conn, int64_t id, reader_t *r,
                               uint32_t args) {
  waiter_t *waiter;
  if (args > MAX_KEYS)
    return "too many keys";
  if ((waiter = waiter_new(conn, id, OP_WAIT, args)) == NULL)
    return out_of_memory;
  for (uint32_t i = 0; i < args; i++) {
    const char *key;
    uint32_t key_len;
    entry_t *entry;
    if (read_bytes(r, &key, &key_len) != 0) {
      waiter_drop(waiter);
      return malformed;
    }
    if ((entry = table_find_or_add(conn->server, key, key_len)) == NULL) {
      waiter_drop(waiter);
      return out_of_memory;
    }
    if (!entry->has_value)
      waiter_link(waiter, entry);
  }
  if (waiter->missing == 0) {
    reply_ok(conn, id);
    waiter_free(waiter);
  }
  return NULL;
}

static const char *handle_check(conn_t *conn, int64_t id, reader_t *r,
                                uint32_t args) {
  outbuf_t out;
  if (args > MAX_KEYS)
    return "too many keys";
  out_reply_head(&out, id, args);
  for (uint32_t i = 0; i < args; i++) {
    const char *key;
    uint32_t key_len;
    entry_t *entry;
    if (read_bytes(r, &key, &key_len) != 0) {
      out_discard(&out);
      return malformed;
    }
    entry = table_find(conn->server, key, key_len);
    out_bool(&out, entry != NULL && entry->has_value);
  }
  conn_send(conn, &out);
  return NULL;
}

/* The client gave up on a get or wait: it learns which keys are missing. */
static const char *handle_cancel(conn_t *conn, int64_t id, reader_t *r,
                                 uint32_t args) {
  waiter_t *waiter = conn->waiters;
  outbuf_t out;
  (void)r;
  if (args != 0)
    return malformed;
  while (waiter != NULL && waiter->id != id)
    waiter = waiter->next;
  if (waiter == NULL)
    return NULL; /* answered already: the reply crossed the cancel */
  out_begin(&out, 2 + waiter->missing);
  out_int(&out, id);
  out_int(&out, STATUS_CANCELLED);
  for (uint32_t i = 0; i < waiter->count; i++) {
    entry_t *entry = waiter->links[i].entry;
    if (entry != NULL)
      out_str(&out, entry->key, entry->key_len);
  }
  conn_send(conn, &out);
  waiter_drop(waiter);
  return NULL;
}

static const handler_fn handlers[] = {
    [OP_SET] = handle_set,       [OP_GET] = handle_get,
    [OP_ADD] = handle_add,       [OP_DELETE] = handle_delete,
    [OP_WAIT] = handle_wait,     [OP_CHECK] = handle_check,
    [OP_CANCEL] = handle_cancel,
};

static const char *handle_request(conn_t *conn, const char *body,
                                  uint32_t len) {
  reader_t r = {(const unsigned char *)body, (const unsigned char *)body + len};
  uint32_t count;
  int64_t op, id;
  const char *why;

  if (read_array(&r, &count) != 0 || count < 2 || read_int(&r, &op) != 0 ||
      read_int(&r, &id) != 0)
    return malformed;
  if (op < OP_SET || op > OP_CANCEL)
    return "unknown operation";
  if ((why = handlers[op](conn, id, &r, count - 2)) != NULL)
    return why;
  return r.p == r.end ? NULL : "trailing bytes after the request";
}

/* --- Connections
 * ---------------------------------------------------------------- */

static void server_free_if_done(ember_store_server_t *server) {
  if (server->closed && server->open_handles == 0) {
    table_free(server);
    free(server);
  }
}

static void conn_closed_cb(uv_handle_t *handle) {
  conn_t *conn = handle->data;
  ember_store_server_t *server = conn->server;
  while (conn->waiters != NULL)
    waiter_drop(conn->waiters);
  if (conn->prev != NULL)
    conn->prev->next = conn->next;
  else
    server->conns = conn->next;
  if (conn->next != NULL)
    conn->next->prev = conn->prev;
  free(conn->in.data);
  free(conn);
  server->open_handles--;
  server_free_if_done(server);
}

/* Closes the connection; `why` (NULL for a normal end) goes to stderr. */
static void conn_close(conn_t *conn, const char *why) {
  if (conn_closing(conn))
    return;
  if (why != NULL) {
    fprintf(stderr, "ember store: closing connection from %s: %s\n", conn->peer,
            why);
    fflush(stderr);
  }
  while (conn->waiters != NULL)
    waiter_drop(conn->waiters);
  uv_close((uv_handle_t *)&conn->tcp, conn_closed_cb);
}

static void conn_alloc_cb(uv_handle_t *handle, size_t hint, uv_buf_t *buf) {
  conn_t *conn = handle->data;
  (void)hint;
  *buf = inbuf_space(&conn->in);
}

static void conn_read_cb(uv_stream_t *stream, ssize_t nread,
                         const uv_buf_t *buf) {
  conn_t *conn = stream->data;
  const char *body, *why = NULL;
  char reason[96];
  uint32_t len;
  int got;

  (void)buf;
  if (nread < 0) {
    conn_close(conn, nread == UV_EOF || nread == UV_ECONNRESET
                         ? NULL
                         : uv_strerror((int)nread));
    return;
  }
  conn->in.len += (size_t)nread;
  while (why == NULL && (got = inbuf_next(&conn->in, &body, &len)) != 0) {
    if (got < 0) {
      snprintf(reason, sizeof(reason),
               "a frame of %" PRIu32 " bytes is over the %u MiB limit", len,
               EMBER_STORE_MAX_FRAME >> 20);
      why = reason;
    } else {
      why = handle_request(conn, body, len);
    }
  }
  if (why != NULL)
    conn_close(conn, why);
  else
    inbuf_trim(&conn->in);
}

static void on_connection_cb(uv_stream_t *listener, int status) {
  ember_store_server_t *server = listener->data;
  conn_t *conn;

  if (status < 0 || (conn = calloc(1, sizeof(*conn))) == NULL)
    return;
  conn->owner.close_cb = conn_closed_cb;
  conn->server = server;
  uv_tcp_init(listener->loop, &conn->tcp);
  conn->tcp.data = conn;
  server->open_handles++;
  conn->next = server->conns;
  if (server->conns != NULL)
    server->conns->prev = conn;
  server->conns = conn;
  if (uv_accept(listener, (uv_stream_t *)&conn->tcp) != 0) {
    uv_close((uv_handle_t *)&conn->tcp, conn_closed_cb);
    return;
  }
  uv_tcp_nodelay(&conn->tcp, 1);
  uv_unref((uv_handle_t *)&conn->tcp);
  format_peer(&conn->tcp, conn->peer, sizeof(conn->peer));
  if (uv_read_start((uv_stream_t *)&conn->tcp, conn_alloc_cb, conn_read_cb))
    conn_close(conn, "cannot read from the connection");
}

/* --- The server
 * ----------------------------------------------------------------- */

static void listener_closed_cb(uv_handle_t *handle) {
  ember_store_server_t *server = handle->data;
  server->open_handles--;
  server_free_if_done(server);
}

/* Resolves the address to bind: numeric, or a name (looked up at once). */
static int bind_address(uv_loop_t *uv, const char *host, int port,
                        struct sockaddr_storage *addr) {
  struct addrinfo hints, *res;
  uv_getaddrinfo_t req;
  char service[16];
  int err;

  if (parse_numeric(host, port, addr) == 0)
    return 0;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  snprintf(service, sizeof(service), "%d", port);
  if ((err = uv_getaddrinfo(uv, &req, NULL, host, service, &hints)) != 0)
    return err;
  res = req.addrinfo;
  memcpy(addr, res->ai_addr, res->ai_addrlen);
  uv_freeaddrinfo(res);
  return 0;
}

int ember_store_server_start(ember_loop_t *loop, const char *host, int port,
                             ember_store_server_t **out) {
  uv_loop_t *uv = ember_loop_uv(loop);
  ember_store_server_t *server;
  struct sockaddr_storage addr;
  int len = sizeof(addr), err;

  *out = NULL;
  if (host == NULL || port < 0 || port > 65535)
    return EMBER_EINVAL;
  if ((err = bind_address(uv, *host ? host : "0.0.0.0", port, &addr)) != 0)
    return err;
  if ((server = calloc(1, sizeof(*server))) == NULL ||
      (server->buckets = calloc(64, sizeof(entry_t *))) == NULL) {
    free(server);
    return EMBER_ENOMEM;
  }
  server->bucket_count = 64;
  server->owner.close_cb = listener_closed_cb;
  uv_tcp_init(uv, &server->listener);
  server->listener.data = server;
  server->open_handles = 1;
  err = uv_tcp_bind(&server->listener, (struct sockaddr *)&addr, 0);
  if (err == 0)
    err = uv_listen((uv_stream_t *)&server->listener, SOMAXCONN,
                    on_connection_cb);
  if (err == 0)
    err = uv_tcp_getsockname(&server->listener, (struct sockaddr *)&addr, &len);
  if (err != 0) {
    ember_store_server_close(server);
    return err;
  }
  server->port = ntohs(addr.ss_family == AF_INET6
                           ? ((struct sockaddr_in6 *)&addr)->sin6_port
                           : ((struct sockaddr_in *)&addr)->sin_port);
  uv_unref((uv_handle_t *)&server->listener);
  *out = server;
  return 0;
}

int ember_store_server_port(const ember_store_server_t *server) {
  return server->closed ? 0 : server->port;
}

void ember_store_server_close(ember_store_server_t *server) {
  server->closed = 1;
  if (!uv_is_closing((uv_handle_t *)&server->listener))
    uv_close((uv_handle_t *)&server->listener, listener_closed_cb);
  for (conn_t *conn = server->conns; conn != NULL; conn = conn->next)
    conn_close(conn, NULL);
  server_free_if_done(server);
}

/* ============================================================================
** Client
** ========================================================================== */

typedef enum {
  CLIENT_CONNECTING,
  CLIENT_CONNECTED,
  CLIENT_CLOSED
} client_state_t;

/* One connection attempt's socket; it outlives the attempt until closed. */
typedef struct {
  ember_handle_owner_t owner;
  uv_tcp_t tcp;
  uv_connect_t connect;
  ember_store_client_t *client; /* NULL once a failed attempt let it go */
} socket_t;

typedef struct op_s op_t;

/* A request waiting for its reply. */
struct op_s {
  ember_handle_owner_t owner; /* for the timer */
  uv_timer_t timer;
  int has_timer;
  int expiring; /* a wait past its timeout, asking what is missing */
  ember_store_client_t *client;
  ember_future_t *future; /* NULL once completed */
  op_t *prev, *next;
  int64_t id;
  int kind;
  uint64_t timeout_ms;
  size_t key_count;
  char **keys; /* get and wait with a timeout: for the message */
};

struct ember_store_client_s {
  ember_handle_owner_t owner; /* for the connect timer */
  uv_timer_t timer;
  uv_loop_t *uv;
  unsigned refs;
  unsigned open_handles; /* the timer, the socket and the ops' timers */
  client_state_t state;
  int resolving; /* a getaddrinfo request is in flight */
  uv_getaddrinfo_t resolver;
  struct sockaddr_storage addresses[MAX_ADDRESSES]; /* of the last lookup */
  unsigned address_count;
  unsigned next_address; /* the next one to try */
  socket_t *socket;
  ember_future_t *connecting; /* holds a reference while set */
  uint64_t deadline;          /* of connecting, in uv_now ms; 0: none */
  uint64_t timeout_ms;
  int last_error;
  int close_code;
  char close_reason[160];
  int64_t next_id;
  op_t *ops;
  op_t *ops_tail;
  inbuf_t in;
  int port;
  char endpoint[300]; /* HOST:PORT, for messages */
  char host[];
};

static void client_shutdown(ember_store_client_t *client, int code,
                            const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

static void client_free_if_done(ember_store_client_t *client) {
  if (client->refs == 0 && client->open_handles == 0 && !client->resolving) {
    free(client->in.data);
    free(client);
  }
}

void ember_store_client_retain(ember_store_client_t *client) {
  client->refs++;
}

void ember_store_client_release(ember_store_client_t *client) {
  if (--client->refs > 0)
    return;
  if (client->state != CLIENT_CLOSED) /* comes back here, closed */
    client_shutdown(client, UV_ECANCELED, "store: the client was closed");
  else
    client_free_if_done(client);
}

void ember_store_client_close(ember_store_client_t *client) {
  client_shutdown(client, UV_ECANCELED, "store: the client was closed");
}

/* Keeps the loop alive only while replies are awaited. */
static void client_update_ref(ember_store_client_t *client) {
  uv_handle_t *tcp;
  if (client->socket == NULL || client->state != CLIENT_CONNECTED)
    return;
  tcp = (uv_handle_t *)&client->socket->tcp;
  if (client->ops != NULL)
    uv_ref(tcp);
  else
    uv_unref(tcp);
}

int ember_store_client_local_address(ember_store_client_t *client, char *out,
                                     size_t size) {
  struct sockaddr_storage addr;
  int len = sizeof(addr), err;
  if (client->state != CLIENT_CONNECTED)
    return UV_ENOTCONN;
  err =
      uv_tcp_getsockname(&client->socket->tcp, (struct sockaddr *)&addr, &len);
  if (err != 0)
    return err;
  if (addr.ss_family == AF_INET6)
    return uv_ip6_name((struct sockaddr_in6 *)&addr, out, size);
  return uv_ip4_name((struct sockaddr_in *)&addr, out, size);
}

/* --- Operations
 * ------------------------------------------------------------------ */

static char *format_alloc(const char *fmt, va_list ap) {
  va_list copy;
  int len;
  char *message;
  va_copy(copy, ap);
  len = vsnprintf(NULL, 0, fmt, copy);
  va_end(copy);
  if (len < 0 || (message = malloc((size_t)len + 1)) == NULL)
    return NULL;
  vsnprintf(message, (size_t)len + 1, fmt, ap);
  return message;
}

static void fail_future(ember_future_t *future, int code, const char *fmt,
                        va_list ap) {
  char *message = format_alloc(fmt, ap);
  if (ember_future_set_error(
          future, code, message ? &ember_message_payload : NULL, message) != 0)
    free(message);
}

static void op_free(op_t *op) {
  for (size_t i = 0; op->keys != NULL && i < op->key_count; i++)
    free(op->keys[i]);
  free(op->keys);
  free(op);
}

/* Takes the op off the pending list; returns its future for the caller to
** complete and release. */
static ember_future_t *op_detach(op_t *op) {
  ember_store_client_t *client = op->client;
  ember_future_t *future = op->future;
  op->future = NULL;
  if (op->prev != NULL)
    op->prev->next = op->next;
  else
    client->ops = op->next;
  if (op->next != NULL)
    op->next->prev = op->prev;
  else
    client->ops_tail = op->prev;
  op->prev = op->next = NULL;
  if (op->has_timer)
    uv_timer_stop(&op->timer);
  client_update_ref(client);
  return future;
}

static void op_timer_closed_cb(uv_handle_t *handle) {
  op_t *op = handle->data;
  ember_store_client_t *client = op->client;
  if (op->future != NULL) { /* closed by ember_loop_close */
    ember_future_t *future = op_detach(op);
    ember_future_fail(future, UV_ECANCELED, "store: the loop was closed");
    ember_future_release(future);
  }
  op_free(op);
  client->open_handles--;
  ember_store_client_release(client);
}

/* Frees a detached op (once its timer has closed). */
static void op_dispose(op_t *op) {
  ember_store_client_t *client = op->client;
  if (op->has_timer) {
    if (!uv_is_closing((uv_handle_t *)&op->timer))
      uv_close((uv_handle_t *)&op->timer, op_timer_closed_cb);
    return;
  }
  op_free(op);
  ember_store_client_release(client);
}

static void op_succeed(op_t *op, const ember_payload_type_t *type, void *data) {
  ember_future_t *future = op_detach(op);
  if (ember_future_set_result(future, type, data) != 0 && type->drop != NULL)
    type->drop(data);
  ember_future_release(future);
  op_dispose(op);
}

static void op_fail(op_t *op, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

static void op_fail(op_t *op, int code, const char *fmt, ...) {
  ember_future_t *future = op_detach(op);
  va_list ap;
  va_start(ap, fmt);
  fail_future(future, code, fmt, ap);
  va_end(ap);
  ember_future_release(future);
  op_dispose(op);
}

/* A message listing keys: "'a', 'b' and 3 more". */
typedef struct {
  char text[KEYS_LISTED * 110 + 40];
  size_t len;
  size_t keys;
} key_list_t;

static void key_list_add(key_list_t *list, const char *key, size_t len) {
  if (list->keys++ < KEYS_LISTED)
    list->len += (size_t)snprintf(
        list->text + list->len, sizeof(list->text) - list->len, "%s'%.*s'",
        list->keys > 1 ? ", " : "", (int)(len < 100 ? len : 100), key);
}

static const char *key_list_end(key_list_t *list) {
  if (list->keys > KEYS_LISTED)
    snprintf(list->text + list->len, sizeof(list->text) - list->len,
             " and %zu more", list->keys - KEYS_LISTED);
  return list->text;
}

static double seconds(uint64_t ms) {
  return (double)ms / 1000.0;
}

static void op_send_cancel(op_t *op) {
  ember_store_client_t *client = op->client;
  outbuf_t out;
  out_begin(&out, 2);
  out_int(&out, OP_CANCEL);
  out_int(&out, op->id);
  out_send(&out, (uv_stream_t *)&client->socket->tcp);
}

/* An expired wait whose missing keys the store never named. */
static void op_fail_expired(op_t *op) {
  key_list_t waited = {.len = 0};
  for (size_t i = 0; i < op->key_count; i++)
    key_list_add(&waited, op->keys[i], strlen(op->keys[i]));
  op_fail(op, UV_ETIMEDOUT,
          "store: keys not set within %g s (the store did not say which "
          "are missing) among: %s",
          seconds(op->timeout_ms), key_list_end(&waited));
}

/*
** A get fails at once. A wait first asks the server which of its keys are
** missing (it answers STATUS_CANCELLED with them), and fails with all its
** keys if no answer comes within EXPIRY_GRACE_MS.
*/
static void op_timeout_cb(uv_timer_t *timer) {
  op_t *op = timer->data;
  if (op->kind == OP_GET) {
    op_send_cancel(op);
    op_fail(op, UV_ETIMEDOUT, "store: key '%s' was not set within %g s",
            op->keys[0], seconds(op->timeout_ms));
  } else if (!op->expiring) {
    op->expiring = 1;
    op_send_cancel(op);
    uv_update_time(op->timer.loop);
    uv_timer_start(&op->timer, op_timeout_cb, EXPIRY_GRACE_MS, 0);
  } else {
    op_fail_expired(op);
  }
}

/* Fails every pending op; a wait already past its timeout says so. */
static void fail_all_ops(ember_store_client_t *client, int code,
                         const char *message) {
  while (client->ops != NULL) {
    if (client->ops->expiring)
      op_fail_expired(client->ops);
    else
      op_fail(client->ops, code, "%s", message);
  }
}

/* A failed future for an op that cannot start. */
static ember_future_t *failed_future(int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

static ember_future_t *failed_future(int code, const char *fmt, ...) {
  ember_future_t *future = ember_future_new();
  va_list ap;
  if (future == NULL)
    return NULL;
  va_start(ap, fmt);
  fail_future(future, code, fmt, ap);
  va_end(ap);
  return future;
}

static char **copy_keys(const char *const *keys, size_t count) {
  char **copy = calloc(count ? count : 1, sizeof(*copy));
  for (size_t i = 0; copy != NULL && i < count; i++) {
    size_t len = strlen(keys[i]);
    if ((copy[i] = malloc(len + 1)) == NULL) {
      while (i-- > 0)
        free(copy[i]);
      free(copy);
      return NULL;
    }
    memcpy(copy[i], keys[i], len + 1);
  }
  return copy;
}

/* A new op, not yet sent; NULL if out of memory. */
static op_t *op_new(ember_store_client_t *client, int kind,
                    const char *const *keys, size_t count,
                    uint64_t timeout_ms) {
  op_t *op = calloc(1, sizeof(*op));
  if (op == NULL)
    return NULL;
  op->future = ember_future_new();
  op->keys = timeout_ms ? copy_keys(keys, count) : NULL;
  if (op->future == NULL || (timeout_ms && op->keys == NULL)) {
    if (op->future != NULL)
      ember_future_release(op->future);
    op_free(op);
    return NULL;
  }
  op->client = client;
  op->kind = kind;
  op->id = client->next_id++;
  op->key_count = count;
  op->timeout_ms = timeout_ms;
  return op;
}

/*
** Sends the request in `out` for the op and makes it pending. Returns the
** op's future for the caller (failed if the request could not be sent).
*/
static ember_future_t *op_start(op_t *op, outbuf_t *out) {
  ember_store_client_t *client = op->client;
  ember_future_t *future = op->future;
  int err = out_send(out, (uv_stream_t *)&client->socket->tcp);

  ember_future_retain(future); /* the caller's */
  client->refs++;              /* the op's */
  op->prev = client->ops_tail;
  if (client->ops_tail != NULL)
    client->ops_tail->next = op;
  else
    client->ops = op;
  client->ops_tail = op;
  if (op->timeout_ms != 0) {
    op->owner.close_cb = op_timer_closed_cb;
    uv_timer_init(client->uv, &op->timer);
    op->timer.data = op;
    op->has_timer = 1;
    client->open_handles++;
    uv_update_time(op->timer.loop); /* the loop may have been idle long */
    uv_timer_start(&op->timer, op_timeout_cb, op->timeout_ms, 0);
  }
  client_update_ref(client);
  if (err != 0)
    op_fail(op, err, "store: cannot send the request: %s", ember_strerror(err));
  return future;
}

/*
** Starts an op: checks the client and keys, then writes [kind, id] and the
** caller adds the arguments. Returns NULL with *early set to a failed future
** (or NULL when out of memory) when the op cannot start.
*/
static op_t *op_begin(ember_store_client_t *client, int kind,
                      const char *const *keys, size_t count,
                      uint64_t timeout_ms, uint32_t extra_args, outbuf_t *out,
                      ember_future_t **early) {
  op_t *op;
  *early = NULL;
  if (client->state != CLIENT_CONNECTED) {
    *early = failed_future(client->close_code, "%s", client->close_reason);
    return NULL;
  }
  if (count > MAX_KEYS) {
    *early = failed_future(UV_EINVAL, "store: too many keys (%zu; at most %u)",
                           count, MAX_KEYS);
    return NULL;
  }
  for (size_t i = 0; i < count; i++) {
    if (keys[i] == NULL) {
      *early = failed_future(UV_EINVAL, "store: key %zu is NULL", i + 1);
      return NULL;
    }
  }
  if ((op = op_new(client, kind, keys, count, timeout_ms)) == NULL)
    return NULL;
  out_begin(out, 2 + extra_args);
  out_int(out, kind);
  out_int(out, op->id);
  return op;
}

static void out_keys(outbuf_t *out, const char *const *keys, size_t count) {
  for (size_t i = 0; i < count; i++)
    out_str(out, keys[i], strlen(keys[i]));
}

ember_future_t *ember_store_set(ember_store_client_t *client, const char *key,
                                const void *value, size_t len) {
  ember_future_t *early;
  outbuf_t out;
  op_t *op;
  if (value == NULL && len > 0)
    return failed_future(UV_EINVAL, "store: set: value is NULL");
  if (len > EMBER_STORE_MAX_FRAME)
    return failed_future(UV_E2BIG,
                         "store: set: a value of %zu bytes is over "
                         "the %u MiB limit",
                         len, EMBER_STORE_MAX_FRAME >> 20);
  if ((op = op_begin(client, OP_SET, &key, 1, 0, 2, &out, &early)) == NULL)
    return early;
  out_keys(&out, &key, 1);
  out_bin(&out, value, len);
  return op_start(op, &out);
}

ember_future_t *ember_store_get(ember_store_client_t *client, const char *key,
                                uint64_t timeout_ms) {
  ember_future_t *early;
  outbuf_t out;
  op_t *op = op_begin(client, OP_GET, &key, 1, timeout_ms, 1, &out, &early);
  if (op == NULL)
    return early;
  out_keys(&out, &key, 1);
  return op_start(op, &out);
}

ember_future_t *ember_store_add(ember_store_client_t *client, const char *key,
                                int64_t delta) {
  ember_future_t *early;
  outbuf_t out;
  op_t *op = op_begin(client, OP_ADD, &key, 1, 0, 2, &out, &early);
  if (op == NULL)
    return early;
  out_keys(&out, &key, 1);
  out_int(&out, delta);
  return op_start(op, &out);
}

ember_future_t *ember_store_delete(ember_store_client_t *client,
                                   const char *key) {
  ember_future_t *early;
  outbuf_t out;
  op_t *op = op_begin(client, OP_DELETE, &key, 1, 0, 1, &out, &early);
  if (op == NULL)
    return early;
  out_keys(&out, &key, 1);
  return op_start(op, &out);
}

ember_future_t *ember_store_wait(ember_store_client_t *client,
                                 const char *const *keys, size_t count,
                                 uint64_t timeout_ms) {
  ember_future_t *early;
  outbuf_t out;
  op_t *op = op_begin(client, OP_WAIT, keys, count, timeout_ms, (uint32_t)count,
                      &out, &early);
  if (op == NULL)
    return early;
  out_keys(&out, keys, count);
  return op_start(op, &out);
}

ember_future_t *ember_store_check(ember_store_client_t *client,
                                  const char *const *keys, size_t count) {
  ember_future_t *early;
  outbuf_t out;
  op_t *op =
      op_begin(client, OP_CHECK, keys, count, 0, (uint32_t)count, &out, &early);
  if (op == NULL)
    return early;
  out_keys(&out, keys, count);
  return op_start(op, &out);
}

/* --- Replies
 * -------------------------------------------------------------------- */

static const char *bad_reply = "a malformed reply";

static const char *succeed_with_bytes(op_t *op, reader_t *r) {
  const char *data;
  uint32_t len;
  ember_store_bytes_t *bytes;
  if (read_bytes(r, &data, &len) != 0)
    return bad_reply;
  if ((bytes = malloc(sizeof(*bytes) + len + 1)) == NULL) {
    op_fail(op, EMBER_ENOMEM, "store: out of memory");
    return NULL;
  }
  bytes->len = len;
  memcpy(bytes->data, data, len);
  bytes->data[len] = '\0';
  op_succeed(op, &ember_store_bytes_payload, bytes);
  return NULL;
}

static const char *succeed_with_int(op_t *op, reader_t *r) {
  int64_t value, *box;
  if (read_int(r, &value) != 0)
    return bad_reply;
  if ((box = malloc(sizeof(*box))) == NULL) {
    op_fail(op, EMBER_ENOMEM, "store: out of memory");
    return NULL;
  }
  *box = value;
  op_succeed(op, &ember_store_int_payload, box);
  return NULL;
}

static const char *succeed_with_flags(op_t *op, reader_t *r, uint32_t results) {
  ember_store_flags_t *flags;
  int exists;
  if (results != op->key_count)
    return bad_reply;
  if ((flags = malloc(sizeof(*flags) + results + 1)) == NULL) {
    op_fail(op, EMBER_ENOMEM, "store: out of memory");
    return NULL;
  }
  flags->count = results;
  for (uint32_t i = 0; i < results; i++) {
    if (read_bool(r, &exists) != 0) {
      free(flags);
      return bad_reply;
    }
    flags->exists[i] = (unsigned char)exists;
  }
  op_succeed(op, &ember_store_flags_payload, flags);
  return NULL;
}

static const char *op_succeeded(op_t *op, reader_t *r, uint32_t results) {
  int existed;
  switch (op->kind) {
  case OP_GET:
    return results == 1 ? succeed_with_bytes(op, r) : bad_reply;
  case OP_ADD:
    return results == 1 ? succeed_with_int(op, r) : bad_reply;
  case OP_CHECK:
    return succeed_with_flags(op, r, results);
  case OP_DELETE:
    if (results != 1 || read_bool(r, &existed) != 0)
      return bad_reply;
    op_succeed(op, &ember_store_bool_payload,
               existed ? &bool_true : &bool_false);
    return NULL;
  default: /* set, wait */
    if (results != 0)
      return bad_reply;
    op_succeed(op, &ember_store_bool_payload, &bool_true);
    return NULL;
  }
}

static const char *op_failed(op_t *op, int64_t code, reader_t *r,
                             uint32_t results) {
  const char *message;
  uint32_t len;
  if (results != 1 || read_bytes(r, &message, &len) != 0)
    return bad_reply;
  op_fail(op, code < INT_MIN ? EMBER_EFAILED : (int)code, "%.*s", (int)len,
          message);
  return NULL;
}

/* The server's answer to an expired wait: the keys still missing. */
static const char *op_expired(op_t *op, reader_t *r, uint32_t results) {
  key_list_t missing = {.len = 0};
  for (uint32_t i = 0; i < results; i++) {
    const char *key;
    uint32_t len;
    if (read_bytes(r, &key, &len) != 0)
      return bad_reply;
    key_list_add(&missing, key, len);
  }
  op_fail(op, UV_ETIMEDOUT, "store: keys not set within %g s: %s",
          seconds(op->timeout_ms), key_list_end(&missing));
  return NULL;
}

static op_t *find_op(ember_store_client_t *client, int64_t id) {
  op_t *op = client->ops;
  while (op != NULL && op->id != id)
    op = op->next;
  return op;
}

/* Returns NULL, or why the reply is malformed. */
static const char *handle_reply(ember_store_client_t *client, const char *body,
                                uint32_t len) {
  reader_t r = {(const unsigned char *)body, (const unsigned char *)body + len};
  uint32_t count;
  int64_t id, status;
  op_t *op;

  if (read_array(&r, &count) != 0 || count < 2 || read_int(&r, &id) != 0 ||
      read_int(&r, &status) != 0)
    return bad_reply;
  if ((op = find_op(client, id)) == NULL)
    return NULL; /* its op timed out: dropped */
  if (status == STATUS_OK)
    return op_succeeded(op, &r, count - 2);
  if (status < 0)
    return op_failed(op, status, &r, count - 2);
  if (status == STATUS_CANCELLED && op->expiring)
    return op_expired(op, &r, count - 2);
  return bad_reply;
}

static void client_alloc_cb(uv_handle_t *handle, size_t hint, uv_buf_t *buf) {
  socket_t *sock = handle->data;
  (void)hint;
  *buf = inbuf_space(&sock->client->in);
}

static void client_read_cb(uv_stream_t *stream, ssize_t nread,
                           const uv_buf_t *buf) {
  socket_t *sock = stream->data;
  ember_store_client_t *client = sock->client;
  const char *body, *why = NULL;
  uint32_t len;
  int got;

  (void)buf;
  if (nread < 0) {
    if (nread == UV_EOF)
      client_shutdown(client, EMBER_EPEERLOST,
                      "the store at %s closed the connection",
                      client->endpoint);
    else
      client_shutdown(client, EMBER_EPEERLOST,
                      "the store at %s closed the connection (%s)",
                      client->endpoint, uv_strerror((int)nread));
    return;
  }
  client->in.len += (size_t)nread;
  client->refs++; /* replies run callbacks that may drop the client */
  while (why == NULL && client->state == CLIENT_CONNECTED &&
         (got = inbuf_next(&client->in, &body, &len)) != 0)
    why = got < 0 ? "a frame over the size limit"
                  : handle_reply(client, body, len);
  if (why != NULL)
    client_shutdown(client, EMBER_EFAILED, "the store at %s sent %s",
                    client->endpoint, why);
  else
    inbuf_trim(&client->in);
  ember_store_client_release(client);
}

/* --- Connecting
 * ----------------------------------------------------------------- */

static void socket_closed_cb(uv_handle_t *handle) {
  socket_t *sock = handle->data;
  ember_store_client_t *client = sock->client;
  free(sock);
  if (client == NULL)
    return; /* a failed attempt's */
  client->socket = NULL;
  if (client->state != CLIENT_CLOSED) /* closed by ember_loop_close */
    client_shutdown(client, UV_ECANCELED, "store: the loop was closed");
  client->open_handles--;
  client_free_if_done(client);
}

static void timer_closed_cb(uv_handle_t *handle) {
  ember_store_client_t *client = handle->data;
  if (client->state != CLIENT_CLOSED) /* closed by ember_loop_close */
    client_shutdown(client, UV_ECANCELED, "store: the loop was closed");
  client->open_handles--;
  client_free_if_done(client);
}

/* Lets go of a failed attempt's socket. */
static void discard_socket(ember_store_client_t *client) {
  socket_t *sock = client->socket;
  if (sock == NULL)
    return;
  client->socket = NULL;
  sock->client = NULL;
  client->open_handles--;
  if (!uv_is_closing((uv_handle_t *)&sock->tcp))
    uv_close((uv_handle_t *)&sock->tcp, socket_closed_cb);
}

static void connect_attempt(ember_store_client_t *client);

static uint64_t remaining_ms(ember_store_client_t *client) {
  uint64_t now;
  uv_update_time(client->uv);
  now = uv_now(client->uv);
  return now >= client->deadline ? 0 : client->deadline - now;
}

static void connect_timed_out(ember_store_client_t *client) {
  discard_socket(client);
  client_shutdown(client, UV_ETIMEDOUT,
                  "cannot reach the store at %s within %g s (last error: %s)",
                  client->endpoint, seconds(client->timeout_ms),
                  client->last_error ? uv_strerror(client->last_error)
                                     : "no answer");
}

/* The timer: retries after a failed attempt, or ends at the deadline. */
static void connect_timer_cb(uv_timer_t *timer) {
  ember_store_client_t *client = timer->data;
  if (client->deadline != 0 && remaining_ms(client) == 0)
    connect_timed_out(client);
  else
    connect_attempt(client);
}

/* Tries the host's next address at once; after the last one, waits a bit and
** looks the host up again. */
static void attempt_failed(ember_store_client_t *client, int err) {
  uint64_t delay = RETRY_MS;
  client->last_error = err;
  discard_socket(client);
  if (client->deadline != 0) {
    uint64_t left = remaining_ms(client);
    if (left == 0) {
      connect_timed_out(client);
      return;
    }
    delay = left < delay ? left : delay;
  }
  if (client->next_address < client->address_count)
    connect_attempt(client);
  else
    uv_timer_start(&client->timer, connect_timer_cb, delay, 0);
}

static void connected(ember_store_client_t *client) {
  socket_t *sock = client->socket;
  ember_future_t *future = client->connecting;
  int err;

  uv_tcp_nodelay(&sock->tcp, 1);
  uv_tcp_keepalive(&sock->tcp, 1, 60);
  err =
      uv_read_start((uv_stream_t *)&sock->tcp, client_alloc_cb, client_read_cb);
  if (err != 0) {
    attempt_failed(client, err);
    return;
  }
  uv_timer_stop(&client->timer);
  client->state = CLIENT_CONNECTED;
  client_update_ref(client);
  client->connecting = NULL;
  client->refs++; /* the payload's */
  ember_future_set_result(future, &ember_store_client_payload, client);
  ember_future_release(future);
  ember_store_client_release(client); /* the connecting stage's */
}

static void connect_cb(uv_connect_t *req, int status) {
  socket_t *sock = req->data;
  ember_store_client_t *client = sock->client;
  if (client == NULL || status == UV_ECANCELED ||
      client->state != CLIENT_CONNECTING)
    return;
  if (status < 0)
    attempt_failed(client, status);
  else
    connected(client);
}

static void connect_to(ember_store_client_t *client,
                       const struct sockaddr *addr) {
  socket_t *sock = calloc(1, sizeof(*sock));
  int err;
  if (sock == NULL) {
    attempt_failed(client, EMBER_ENOMEM);
    return;
  }
  sock->owner.close_cb = socket_closed_cb;
  sock->client = client;
  sock->connect.data = sock;
  uv_tcp_init(client->uv, &sock->tcp);
  sock->tcp.data = sock;
  client->socket = sock;
  client->open_handles++;
  if ((err = uv_tcp_connect(&sock->connect, &sock->tcp, addr, connect_cb)))
    attempt_failed(client, err);
}

static void connect_next(ember_store_client_t *client) {
  unsigned next = client->next_address++;
  connect_to(client, (struct sockaddr *)&client->addresses[next]);
}

static void resolved_cb(uv_getaddrinfo_t *req, int status,
                        struct addrinfo *res) {
  ember_store_client_t *client = req->data;
  client->resolving = 0;
  for (struct addrinfo *ai = status == 0 ? res : NULL;
       ai != NULL && client->address_count < MAX_ADDRESSES; ai = ai->ai_next) {
    if (ai->ai_addrlen <= sizeof(struct sockaddr_storage))
      memcpy(&client->addresses[client->address_count++], ai->ai_addr,
             ai->ai_addrlen);
  }
  uv_freeaddrinfo(res);
  if (client->state != CLIENT_CONNECTING)
    client_free_if_done(client);
  else if (status < 0 || client->address_count == 0)
    attempt_failed(client, status < 0 ? status : UV_EAI_NONAME);
  else
    connect_next(client);
}

static void connect_attempt(ember_store_client_t *client) {
  struct addrinfo hints;
  char service[16];
  int err;

  if (client->deadline != 0)
    uv_timer_start(&client->timer, connect_timer_cb, remaining_ms(client), 0);
  if (client->next_address < client->address_count) {
    connect_next(client);
    return;
  }
  client->address_count = client->next_address = 0;
  if (parse_numeric(client->host, client->port, &client->addresses[0]) == 0) {
    client->address_count = 1;
    connect_next(client);
    return;
  }
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  snprintf(service, sizeof(service), "%d", client->port);
  client->resolver.data = client;
  err = uv_getaddrinfo(client->uv, &client->resolver, resolved_cb, client->host,
                       service, &hints);
  if (err != 0)
    attempt_failed(client, err);
  else
    client->resolving = 1;
}

/*
** Ends the client: fails the connect future or every pending op with `code`
** and the message, and closes its handles. Runs once.
*/
static void client_shutdown(ember_store_client_t *client, int code,
                            const char *fmt, ...) {
  va_list ap;
  if (client->state == CLIENT_CLOSED)
    return;
  client->state = CLIENT_CLOSED;
  client->refs++; /* completions below run callbacks */
  client->close_code = code;
  va_start(ap, fmt);
  vsnprintf(client->close_reason, sizeof(client->close_reason), fmt, ap);
  va_end(ap);
  if (client->connecting != NULL) {
    ember_future_t *future = client->connecting;
    client->connecting = NULL;
    ember_future_fail(future, code, "%s", client->close_reason);
    ember_future_release(future);
    client->refs--; /* the connecting stage's; ours keeps it above 0 */
  }
  fail_all_ops(client, code, client->close_reason);
  if (client->socket != NULL &&
      !uv_is_closing((uv_handle_t *)&client->socket->tcp))
    uv_close((uv_handle_t *)&client->socket->tcp, socket_closed_cb);
  if (!uv_is_closing((uv_handle_t *)&client->timer))
    uv_close((uv_handle_t *)&client->timer, timer_closed_cb);
  if (client->resolving)
    uv_cancel((uv_req_t *)&client->resolver);
  ember_store_client_release(client);
}

ember_future_t *ember_store_connect(ember_loop_t *loop, const char *host,
                                    int port, uint64_t timeout_ms) {
  ember_store_client_t *client;
  ember_future_t *future;
  size_t host_len;

  if (host == NULL || *host == '\0' || port <= 0 || port > 65535)
    return failed_future(UV_EINVAL, "store: connect: bad address %s:%d",
                         host ? host : "(null)", port);
  host_len = strlen(host);
  if ((client = calloc(1, sizeof(*client) + host_len + 1)) == NULL)
    return NULL;
  if ((client->connecting = ember_future_new()) == NULL) {
    free(client);
    return NULL;
  }
  memcpy(client->host, host, host_len + 1);
  format_endpoint(client->endpoint, sizeof(client->endpoint), host, port);
  client->uv = ember_loop_uv(loop);
  client->port = port;
  client->refs = 1; /* the connecting stage's */
  client->next_id = 1;
  client->timeout_ms = timeout_ms;
  if (timeout_ms != 0) {
    uv_update_time(client->uv);
    client->deadline = uv_now(client->uv) + timeout_ms;
  }
  client->owner.close_cb = timer_closed_cb;
  uv_timer_init(client->uv, &client->timer);
  client->timer.data = client;
  client->open_handles = 1;
  future = client->connecting;
  ember_future_retain(future); /* the caller's */
  connect_attempt(client);
  return future;
}
