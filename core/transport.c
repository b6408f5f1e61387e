/*
** The transport: connections to peers, frame reading and writing, handshakes.
** See transport.h for the protocol; this file is the libuv side of it.
*/
#include "transport.h"

#include <msgpack.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

#define NONCE_BYTES 32
#define PROOF_BYTES crypto_auth_BYTES
#define STAGING_BYTES (64 * 1024)
/* Reads of at least this much go straight into the frame's own buffers. */
#define DIRECT_READ_MIN (16 * 1024)
#define MAX_WRITE_BUFS 1024
#define HANDSHAKE_MAX_BODY 1024
/* How long a HELLO from an undeclared id may wait for its peer to be declared
** (a client joining is looked up in the store; a rank of the world is declared
** as soon as its worker has read the world). */
#define PARK_TIMEOUT_MS 30000

typedef struct frame_out_s {
  struct frame_out_s *next;
  uint64_t bytes; /* on the wire, all parts */
  size_t head_len;
  ember_wire_msg_t msg;
  uint8_t head[]; /* header and tensor lengths */
} frame_out_t;

typedef struct {
  frame_out_t *head;
  frame_out_t *tail;
} frame_queue_t;

typedef enum {
  CONN_CONNECTING,  /* initiator: TCP connect in progress */
  CONN_AWAIT_WELCOME,
  CONN_AWAIT_HELLO, /* acceptor */
  CONN_AWAIT_PEER,  /* acceptor: HELLO from an id not declared yet */
  CONN_AWAIT_AUTH,
  CONN_READY,
  CONN_CLOSING
} conn_state_t;

typedef struct peer_s peer_t;

typedef struct conn_s {
  ember_handle_owner_t owner; /* first: the handle's data points here */
  uv_tcp_t tcp;
  uv_connect_t connect_req;
  uv_write_t write_req;
  ember_transport_t *t;
  peer_t *peer; /* NULL on an acceptor until HELLO names it */
  int initiator;
  conn_state_t state;
  char address[64]; /* the remote address, for messages */
  uint8_t my_nonce[NONCE_BYTES];
  uint8_t peer_nonce[NONCE_BYTES];
  /* A HELLO parked until its peer is declared (workers learn the world at
  ** slightly different times; clients join while it runs). */
  int parked_id;
  char parked_name[256];
  uint64_t parked_until; /* loop time (ms) after which it is dropped */
  /* Reading: frames are parsed by the reader (made when reading starts). */
  ember_frame_reader_t *reader;
  int reading_direct; /* the last alloc_cb gave out the frame's own buffer */
  char *staging;
  /* Writing. */
  frame_queue_t queue;   /* waiting to be written */
  frame_queue_t writing; /* in the write in flight */
  uv_buf_t *bufs;
  unsigned bufs_cap;
  int dirty; /* listed in the transport's dirty list */
  struct conn_s *next_dirty;
  struct conn_s *next; /* all connections */
  struct conn_s *prev;
} conn_t;

struct peer_s {
  int id;
  char *name;
  char *host;
  int port;
  conn_t *conn;     /* the ready connection */
  conn_t *outgoing; /* ours, while its handshake runs */
  frame_queue_t queue; /* frames waiting for a ready connection */
  int lost, left, left_reported;
  ember_peer_stats_t stats;
};

struct ember_transport_s {
  ember_handle_owner_t owner; /* the listener's */
  ember_loop_t *loop;
  uv_tcp_t listener;
  int listening;
  uv_prepare_t flusher;
  ember_handle_owner_t flusher_owner;
  int flusher_open;
  /* Drops parked HELLOs whose deadline passed; armed while any is parked. */
  uv_timer_t park_timer;
  ember_handle_owner_t park_owner;
  uint64_t park_timeout_ms;
  /* Busy polling: for busy_poll_ns after a read or a write the loop polls
  ** without sleeping, yielding the CPU between polls (see note_io). */
  uv_idle_t poller;
  ember_handle_owner_t poller_owner;
  uint64_t last_io_ns, busy_poll_ns;
  char *name;
  int id;
  int has_secret;
  uint8_t key[crypto_auth_KEYBYTES];
  ember_wire_limits_t limits;
  ember_wire_limits_t handshake_limits;
  ember_transport_callbacks_t cb;
  peer_t **peers;
  int peer_count;
  conn_t *conns;
  conn_t *dirty;
  uint64_t unsent;
  ember_waiters_t flush_waiters;
  int closing;
  int handles_open; /* freed when it reaches 0 after closing */
};

static void busy_poll_cb(uv_idle_t *handle) {
  ember_transport_t *t = (ember_transport_t *)((char *)handle -
                                               offsetof(ember_transport_t, poller));
  if (uv_hrtime() - t->last_io_ns > t->busy_poll_ns)
    uv_idle_stop(handle);
  else
    sched_yield(); /* a worker sharing this core may have work to do */
}

/*
** An answer usually follows a message within tens of microseconds. Sleeping
** in epoll until it comes costs a wake-up on each side, which on a virtual
** machine is most of a round trip (~100 us against ~20 us when polling), so
** after each read or write the loop keeps polling for a short while. An idle
** handle makes libuv poll with a zero timeout; it stops itself once nothing
** has moved for busy_poll_ns.
*/
static void note_io(ember_transport_t *t) {
  if (t->busy_poll_ns == 0 || t->closing)
    return;
  t->last_io_ns = uv_hrtime();
  if (!uv_is_active((uv_handle_t *)&t->poller))
    uv_idle_start(&t->poller, busy_poll_cb);
}

static void conn_close(conn_t *conn, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
static void conn_start_reading(conn_t *conn);
static void mark_dirty(conn_t *conn);

/* --- Frames out ------------------------------------------------------------- */

static void frame_out_free(frame_out_t *frame) {
  ember_wire_msg_free(&frame->msg);
  free(frame);
}

static void queue_push(frame_queue_t *q, frame_out_t *frame) {
  frame->next = NULL;
  if (q->tail != NULL)
    q->tail->next = frame;
  else
    q->head = frame;
  q->tail = frame;
}

/* Moves all of `from` to the end of `to`. */
static void queue_splice(frame_queue_t *to, frame_queue_t *from) {
  if (from->head == NULL)
    return;
  if (to->tail != NULL)
    to->tail->next = from->head;
  else
    to->head = from->head;
  to->tail = from->tail;
  from->head = from->tail = NULL;
}

static void check_flushed(ember_transport_t *t);

static void queue_drop(ember_transport_t *t, frame_queue_t *q) {
  frame_out_t *frame = q->head;
  while (frame != NULL) {
    frame_out_t *next = frame->next;
    t->unsent -= frame->bytes;
    frame_out_free(frame);
    frame = next;
  }
  q->head = q->tail = NULL;
  check_flushed(t);
}

static void put_u64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

/* A frame holding msg's contents (moved out; msg is re-initialised). */
static frame_out_t *frame_out_new(int kind, uint16_t flags, uint64_t request_id,
                                  ember_wire_msg_t *msg) {
  uint32_t count = msg->payload_count;
  size_t head_len = EMBER_WIRE_HEADER_SIZE + 8 * (size_t)count;
  frame_out_t *frame = malloc(sizeof(*frame) + head_len);
  ember_frame_header_t header;

  if (frame == NULL)
    return NULL;
  header.version = EMBER_WIRE_VERSION;
  header.kind = (uint8_t)kind;
  header.flags = flags;
  header.request_id = request_id;
  header.body_len = (uint32_t)msg->body_len;
  header.tensor_count = count;
  ember_wire_pack_header(&header, frame->head);
  frame->head_len = head_len;
  frame->bytes = head_len + msg->body_len;
  for (uint32_t i = 0; i < count; i++) {
    put_u64(frame->head + EMBER_WIRE_HEADER_SIZE + 8 * i,
            msg->payloads[i].nbytes);
    frame->bytes += msg->payloads[i].nbytes;
  }
  frame->msg = *msg;
  ember_wire_msg_init(msg);
  frame->next = NULL;
  return frame;
}

/* Queues a frame on a connection (handshake frames, or frames for a ready
** peer) and schedules the write. */
static void conn_queue(conn_t *conn, frame_out_t *frame) {
  conn->t->unsent += frame->bytes;
  queue_push(&conn->queue, frame);
  mark_dirty(conn);
}

/* --- Writing ---------------------------------------------------------------- */

static void start_write(conn_t *conn);

static void write_cb(uv_write_t *req, int status) {
  conn_t *conn = req->data;
  ember_transport_t *t = conn->t;
  frame_out_t *frame = conn->writing.head;

  while (frame != NULL) {
    frame_out_t *next = frame->next;
    t->unsent -= frame->bytes;
    if (conn->peer != NULL && status == 0) {
      conn->peer->stats.bytes_out += frame->bytes;
      conn->peer->stats.frames_out++;
    }
    frame_out_free(frame);
    frame = next;
  }
  conn->writing.head = conn->writing.tail = NULL;
  if (status != 0) {
    if (status != UV_ECANCELED)
      conn_close(conn, status, "write failed: %s", uv_strerror(status));
    check_flushed(t);
    return;
  }
  if (conn->queue.head != NULL && conn->state != CONN_CLOSING)
    start_write(conn);
  check_flushed(t);
}

/* uv_buf_t lengths are unsigned int: bigger payloads go in several parts. */
#define MAX_BUF_BYTES 0x40000000u

static unsigned frame_parts(const frame_out_t *frame) {
  unsigned parts = 1 + (frame->msg.body_len > 0);
  for (uint32_t i = 0; i < frame->msg.payload_count; i++)
    parts += (unsigned)((frame->msg.payloads[i].nbytes + MAX_BUF_BYTES - 1) /
                        MAX_BUF_BYTES);
  return parts;
}

static int ensure_bufs(conn_t *conn, unsigned need) {
  uv_buf_t *grown;
  if (need <= conn->bufs_cap)
    return 0;
  if ((grown = realloc(conn->bufs, need * sizeof(uv_buf_t))) == NULL)
    return EMBER_ENOMEM;
  conn->bufs = grown;
  conn->bufs_cap = need;
  return 0;
}

static unsigned add_frame_bufs(conn_t *conn, unsigned n, frame_out_t *frame) {
  conn->bufs[n++] = uv_buf_init((char *)frame->head, (unsigned)frame->head_len);
  if (frame->msg.body_len > 0)
    conn->bufs[n++] = uv_buf_init(frame->msg.body, (unsigned)frame->msg.body_len);
  for (uint32_t i = 0; i < frame->msg.payload_count; i++) {
    const ember_wire_payload_t *p = &frame->msg.payloads[i];
    for (uint64_t off = 0; off < p->nbytes; off += MAX_BUF_BYTES) {
      uint64_t chunk = p->nbytes - off;
      if (chunk > MAX_BUF_BYTES)
        chunk = MAX_BUF_BYTES;
      conn->bufs[n++] = uv_buf_init((char *)p->data + off, (unsigned)chunk);
    }
  }
  return n;
}

/* Writes everything queued (up to MAX_WRITE_BUFS buffers) in one writev. */
static void start_write(conn_t *conn) {
  unsigned n = 0;
  frame_out_t *frame;
  int err;

  if (conn->writing.head != NULL || conn->queue.head == NULL ||
      conn->state == CONN_CLOSING || conn->state == CONN_CONNECTING)
    return;
  while ((frame = conn->queue.head) != NULL) {
    unsigned parts = frame_parts(frame);
    if (n > 0 && n + parts > MAX_WRITE_BUFS)
      break;
    if (ensure_bufs(conn, n + parts) != 0) {
      conn_close(conn, EMBER_ENOMEM, "out of memory writing a frame");
      return;
    }
    conn->queue.head = frame->next;
    if (conn->queue.head == NULL)
      conn->queue.tail = NULL;
    queue_push(&conn->writing, frame);
    n = add_frame_bufs(conn, n, frame);
  }
  conn->write_req.data = conn;
  note_io(conn->t);
  err = uv_write(&conn->write_req, (uv_stream_t *)&conn->tcp, conn->bufs, n,
                 write_cb);
  if (err != 0) {
    /* The frames stay on `writing` and are freed with the connection. */
    conn_close(conn, err, "write failed: %s", uv_strerror(err));
  }
}

static void flush_cb(uv_prepare_t *handle);

static void mark_dirty(conn_t *conn) {
  ember_transport_t *t = conn->t;
  if (conn->dirty || t->closing)
    return;
  conn->dirty = 1;
  conn->next_dirty = t->dirty;
  t->dirty = conn;
  if (!uv_is_active((uv_handle_t *)&t->flusher))
    uv_prepare_start(&t->flusher, flush_cb);
}

static ember_transport_t *transport_of_flusher(uv_prepare_t *handle) {
  return (ember_transport_t *)((char *)handle -
                               offsetof(ember_transport_t, flusher));
}

/* Just before the loop polls: write what was queued during this turn. */
static void flush_cb(uv_prepare_t *handle) {
  ember_transport_t *t = transport_of_flusher(handle);
  while (t->dirty != NULL) {
    conn_t *conn = t->dirty;
    t->dirty = conn->next_dirty;
    conn->dirty = 0;
    start_write(conn);
  }
  uv_prepare_stop(handle);
}

/* --- Flush waiters ---------------------------------------------------------- */

static void check_flushed(ember_transport_t *t) {
  if (t->unsent == 0 && t->flush_waiters.count > 0)
    ember_waiters_complete(&t->flush_waiters);
}

ember_future_t *ember_transport_flushed(ember_transport_t *t) {
  return ember_waiters_add(&t->flush_waiters, t->unsent == 0);
}

uint64_t ember_transport_unsent_bytes(const ember_transport_t *t) {
  return t->unsent;
}

/* --- Peers ------------------------------------------------------------------ */

static peer_t *find_peer(const ember_transport_t *t, int id) {
  if (id < 0 || id >= t->peer_count)
    return NULL;
  return t->peers[id];
}

static void unpark_hellos(ember_transport_t *t, int id);

int ember_transport_add_peer(ember_transport_t *t, int id, const char *name,
                             const char *host, int port) {
  peer_t *peer;
  if (id < 0 || id == t->id || find_peer(t, id) != NULL)
    return ember__wire_fail(EMBER_EINVAL, "peer id %d is taken or invalid", id);
  if (id >= t->peer_count) {
    peer_t **grown = realloc(t->peers, (size_t)(id + 1) * sizeof(*grown));
    if (grown == NULL)
      return EMBER_ENOMEM;
    for (int i = t->peer_count; i <= id; i++)
      grown[i] = NULL;
    t->peers = grown;
    t->peer_count = id + 1;
  }
  if ((peer = calloc(1, sizeof(*peer))) == NULL)
    return EMBER_ENOMEM;
  peer->id = id;
  peer->name = strdup(name);
  peer->host = strdup(host);
  peer->port = port;
  if (peer->name == NULL || peer->host == NULL) {
    free(peer->name);
    free(peer->host);
    free(peer);
    return EMBER_ENOMEM;
  }
  t->peers[id] = peer;
  unpark_hellos(t, id);
  return 0;
}

const char *ember_transport_peer_name(const ember_transport_t *t, int id) {
  peer_t *peer = find_peer(t, id);
  if (peer != NULL)
    return peer->name;
  return id == t->id ? t->name : NULL;
}

int ember_transport_peer_count(const ember_transport_t *t) {
  return t->peer_count > t->id + 1 ? t->peer_count : t->id + 1;
}

int ember_transport_peer_stats(const ember_transport_t *t, int id,
                               ember_peer_stats_t *stats) {
  peer_t *peer = find_peer(t, id);
  if (peer == NULL)
    return EMBER_EINVAL;
  *stats = peer->stats;
  stats->connected = peer->conn != NULL;
  stats->lost = peer->lost;
  stats->left = peer->left;
  return 0;
}

/* The peer is gone: drop what waits for it and tell the owner. */
static void peer_lost(peer_t *peer, ember_transport_t *t, int code,
                      const char *why) {
  if (peer->lost || peer->left)
    return;
  peer->lost = 1;
  queue_drop(t, &peer->queue);
  if (!t->closing && t->cb.on_peer_lost != NULL)
    t->cb.on_peer_lost(t->cb.user, peer->id, code, why);
}

/* --- Connections ------------------------------------------------------------ */

static void conn_free(conn_t *conn) {
  ember_transport_t *t = conn->t;
  queue_drop(t, &conn->queue);
  queue_drop(t, &conn->writing);
  ember_frame_reader_free(conn->reader);
  free(conn->staging);
  free(conn->bufs);
  free(conn);
}

static void transport_maybe_free(ember_transport_t *t);

static void conn_close_cb(uv_handle_t *handle) {
  conn_t *conn = handle->data;
  ember_transport_t *t = conn->t;
  conn_free(conn);
  t->handles_open--;
  transport_maybe_free(t);
}

static void conn_unlink(conn_t *conn) {
  ember_transport_t *t = conn->t;
  if (conn->prev != NULL)
    conn->prev->next = conn->next;
  else if (t->conns == conn)
    t->conns = conn->next;
  if (conn->next != NULL)
    conn->next->prev = conn->prev;
  conn->next = conn->prev = NULL;
  if (conn->dirty) {
    conn_t **link = &t->dirty;
    while (*link != NULL && *link != conn)
      link = &(*link)->next_dirty;
    if (*link == conn)
      *link = conn->next_dirty;
    conn->dirty = 0;
  }
}

static const char *peer_label(const conn_t *conn, char *buf, size_t size) {
  if (conn->peer != NULL)
    snprintf(buf, size, "worker '%s' (id %d) at %s", conn->peer->name,
             conn->peer->id, conn->address);
  else
    snprintf(buf, size, "%s", conn->address);
  return buf;
}

/*
** Closes a connection. A ready connection whose peer did not say goodbye
** loses the peer; an outgoing one that failed before it was ready does too.
** `code` 0 closes quietly (a duplicate, or our own shutdown).
*/
static void conn_close(conn_t *conn, int code, const char *fmt, ...) {
  ember_transport_t *t = conn->t;
  peer_t *peer = conn->peer;
  char why[256], label[160];
  int was_active;

  if (conn->state == CONN_CLOSING)
    return;
  /* An acceptor's connection that fails before it is ready loses nothing:
  ** the peer may still connect properly. */
  was_active = peer != NULL && (peer->conn == conn ||
                                (peer->outgoing == conn && conn->initiator));
  conn->state = CONN_CLOSING;
  conn_unlink(conn);
  if (peer != NULL) {
    if (peer->conn == conn)
      peer->conn = NULL;
    if (peer->outgoing == conn)
      peer->outgoing = NULL;
  }
  why[0] = '\0';
  if (fmt != NULL) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
  }
  if (code != 0 && !t->closing && !(peer != NULL && peer->left)) {
    fprintf(stderr, "ember[%s]: closing the connection with %s: %s\n", t->name,
            peer_label(conn, label, sizeof(label)), why);
    fflush(stderr);
  }
  uv_close((uv_handle_t *)&conn->tcp, conn_close_cb);
  if (was_active && peer->left && !peer->left_reported && !t->closing &&
      peer->conn == NULL) {
    /* It said goodbye: calls still waiting on it will get no answer. */
    char message[300];
    peer->left_reported = 1;
    snprintf(message, sizeof(message), "worker '%s' (id %d) has shut down",
             peer->name, peer->id);
    queue_drop(t, &peer->queue);
    if (t->cb.on_peer_lost != NULL)
      t->cb.on_peer_lost(t->cb.user, peer->id, EMBER_ESHUTDOWN, message);
    return;
  }
  if (code != 0 && was_active && !t->closing && peer->conn == NULL &&
      peer->outgoing == NULL) {
    char message[512];
    snprintf(message, sizeof(message), "worker '%s' (id %d) was lost: %s",
             peer->name, peer->id, why);
    peer_lost(peer, t, code == UV_EOF ? EMBER_EPEERLOST : code, message);
  }
}

static conn_t *conn_new(ember_transport_t *t, int initiator) {
  conn_t *conn = calloc(1, sizeof(*conn));
  if (conn == NULL)
    return NULL;
  conn->staging = malloc(STAGING_BYTES);
  conn->bufs = malloc(MAX_WRITE_BUFS * sizeof(uv_buf_t));
  conn->bufs_cap = MAX_WRITE_BUFS;
  if (conn->staging == NULL || conn->bufs == NULL) {
    free(conn->staging);
    free(conn->bufs);
    free(conn);
    return NULL;
  }
  conn->owner.close_cb = conn_close_cb;
  conn->t = t;
  conn->initiator = initiator;
  uv_tcp_init(ember_loop_uv(t->loop), &conn->tcp);
  conn->tcp.data = conn;
  uv_tcp_nodelay(&conn->tcp, 1);
  t->handles_open++;
  conn->next = t->conns;
  if (t->conns != NULL)
    t->conns->prev = conn;
  t->conns = conn;
  snprintf(conn->address, sizeof(conn->address), "(unknown address)");
  return conn;
}

static void remember_address(conn_t *conn) {
  struct sockaddr_storage addr;
  int len = sizeof(addr);
  char host[48];
  if (uv_tcp_getpeername(&conn->tcp, (struct sockaddr *)&addr, &len) != 0)
    return;
  if (addr.ss_family == AF_INET6) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&addr;
    uv_ip6_name(a, host, sizeof(host));
    snprintf(conn->address, sizeof(conn->address), "[%s]:%d", host,
             ntohs(a->sin6_port));
  } else {
    struct sockaddr_in *a = (struct sockaddr_in *)&addr;
    uv_ip4_name(a, host, sizeof(host));
    snprintf(conn->address, sizeof(conn->address), "%s:%d", host,
             ntohs(a->sin_port));
  }
}

/* --- Handshake -------------------------------------------------------------- */

/* proof = HMAC(key, role | first nonce | second nonce | names). */
static void make_proof(const ember_transport_t *t, char role,
                       const uint8_t *nonce_a, const uint8_t *nonce_b,
                       const char *name_a, const char *name_b,
                       uint8_t out[PROOF_BYTES]) {
  crypto_auth_hmacsha512256_state st;
  crypto_auth_hmacsha512256_init(&st, t->key, sizeof(t->key));
  crypto_auth_hmacsha512256_update(&st, (const uint8_t *)&role, 1);
  crypto_auth_hmacsha512256_update(&st, nonce_a, NONCE_BYTES);
  crypto_auth_hmacsha512256_update(&st, nonce_b, NONCE_BYTES);
  crypto_auth_hmacsha512256_update(&st, (const uint8_t *)name_a,
                                   strlen(name_a) + 1);
  crypto_auth_hmacsha512256_update(&st, (const uint8_t *)name_b,
                                   strlen(name_b) + 1);
  crypto_auth_hmacsha512256_final(&st, out);
}

static int msg_packer_write(void *data, const char *buf, size_t len) {
  return ember_wire_msg_write(data, buf, len);
}

static void pack_str(msgpack_packer *pk, const char *s) {
  size_t len = strlen(s);
  msgpack_pack_str(pk, len);
  msgpack_pack_str_body(pk, s, len);
}

static void pack_bin(msgpack_packer *pk, const uint8_t *p, size_t len) {
  msgpack_pack_bin(pk, len);
  msgpack_pack_bin_body(pk, p, len);
}

static int send_handshake(conn_t *conn, int kind, ember_wire_msg_t *msg) {
  frame_out_t *frame = frame_out_new(kind, 0, 0, msg);
  if (frame == NULL) {
    ember_wire_msg_free(msg);
    return EMBER_ENOMEM;
  }
  conn_queue(conn, frame);
  return 0;
}

/* HELLO and WELCOME begin alike: [name, id, a fresh nonce, ...]. */
static void pack_greeting(conn_t *conn, msgpack_packer *pk, size_t fields) {
  ember_transport_t *t = conn->t;
  randombytes_buf(conn->my_nonce, NONCE_BYTES);
  msgpack_pack_array(pk, fields);
  pack_str(pk, t->name);
  msgpack_pack_int64(pk, t->id);
  pack_bin(pk, conn->my_nonce, NONCE_BYTES);
}

/* Our proof of the secret in `role` (empty without a secret). Both sides
** hash the peer's nonce first, then their own. */
static void pack_proof(conn_t *conn, msgpack_packer *pk, char role) {
  ember_transport_t *t = conn->t;
  uint8_t proof[PROOF_BYTES];
  if (!t->has_secret) {
    pack_bin(pk, proof, 0);
    return;
  }
  make_proof(t, role, conn->peer_nonce, conn->my_nonce, t->name,
             conn->peer->name, proof);
  pack_bin(pk, proof, PROOF_BYTES);
}

static int send_hello(conn_t *conn) {
  ember_wire_msg_t msg;
  msgpack_packer pk;
  ember_wire_msg_init(&msg);
  msgpack_packer_init(&pk, &msg, msg_packer_write);
  pack_greeting(conn, &pk, 3);
  return send_handshake(conn, EMBER_MSG_HELLO, &msg);
}

static int send_welcome(conn_t *conn, const char *status) {
  ember_wire_msg_t msg;
  msgpack_packer pk;
  ember_wire_msg_init(&msg);
  msgpack_packer_init(&pk, &msg, msg_packer_write);
  pack_greeting(conn, &pk, 5);
  pack_proof(conn, &pk, 'W');
  pack_str(&pk, status);
  return send_handshake(conn, EMBER_MSG_WELCOME, &msg);
}

static int send_auth(conn_t *conn) {
  ember_wire_msg_t msg;
  msgpack_packer pk;
  ember_wire_msg_init(&msg);
  msgpack_packer_init(&pk, &msg, msg_packer_write);
  msgpack_pack_array(&pk, 1);
  pack_proof(conn, &pk, 'A');
  return send_handshake(conn, EMBER_MSG_AUTH, &msg);
}

/* The parts of a handshake body, read from a msgpack array. */
typedef struct {
  const char *name;
  size_t name_len;
  int64_t id;
  const uint8_t *nonce;
  size_t nonce_len;
  const uint8_t *proof;
  size_t proof_len;
  const char *status;
  size_t status_len;
} handshake_t;

/* The next item of a handshake body, which must be of `type`. */
static int next_item(const ember_frame_t *frame, size_t *pos,
                     ember_wire_token_type_t type, ember_wire_token_t *tok) {
  if (ember_wire_read_token(frame->body, frame->header.body_len, pos, tok) != 0)
    return -1;
  return tok->type == type ? 0 : -1;
}

static int next_str(const ember_frame_t *frame, size_t *pos, const char **s,
                    size_t *len) {
  ember_wire_token_t tok;
  if (next_item(frame, pos, EMBER_WIRE_STR, &tok) != 0)
    return -1;
  *s = tok.data;
  *len = tok.length;
  return 0;
}

static int next_bin(const ember_frame_t *frame, size_t *pos, const uint8_t **p,
                    size_t *len) {
  ember_wire_token_t tok;
  if (next_item(frame, pos, EMBER_WIRE_BIN, &tok) != 0)
    return -1;
  *p = (const uint8_t *)tok.data;
  *len = tok.length;
  return 0;
}

/*
** Reads a HELLO/WELCOME/AUTH body (it passed ember_wire_check_body) with the
** checked token reader, which allocates nothing: strings point into the
** body. msgpack-c never sees an untrusted body. -1 when it is not the
** expected shape.
*/
static int parse_handshake(const ember_frame_t *frame, handshake_t *out) {
  ember_wire_token_t tok;
  size_t pos = 0, expected;

  memset(out, 0, sizeof(*out));
  switch (frame->header.kind) {
  case EMBER_MSG_HELLO: expected = 3; break;
  case EMBER_MSG_WELCOME: expected = 5; break;
  default: expected = 1; break;
  }
  if (next_item(frame, &pos, EMBER_WIRE_ARRAY, &tok) != 0 ||
      tok.length != expected)
    return -1;
  if (frame->header.kind == EMBER_MSG_AUTH)
    return next_bin(frame, &pos, &out->proof, &out->proof_len);
  if (next_str(frame, &pos, &out->name, &out->name_len) != 0 ||
      next_item(frame, &pos, EMBER_WIRE_INT, &tok) != 0 || tok.v.i < 0)
    return -1;
  out->id = tok.v.i;
  if (next_bin(frame, &pos, &out->nonce, &out->nonce_len) != 0 ||
      out->nonce_len != NONCE_BYTES)
    return -1;
  if (frame->header.kind == EMBER_MSG_WELCOME &&
      (next_bin(frame, &pos, &out->proof, &out->proof_len) != 0 ||
       next_str(frame, &pos, &out->status, &out->status_len) != 0))
    return -1;
  return 0;
}

static int names_match(const peer_t *peer, const handshake_t *h) {
  return strlen(peer->name) == h->name_len &&
         memcmp(peer->name, h->name, h->name_len) == 0;
}

/* Checks a proof from the peer: 0 when good, else why in `why`. */
static int check_proof(conn_t *conn, char role, const uint8_t *nonce_a,
                       const uint8_t *nonce_b, const char *name_a,
                       const char *name_b, const handshake_t *h, char *why,
                       size_t size) {
  ember_transport_t *t = conn->t;
  uint8_t expected[PROOF_BYTES];
  if (!t->has_secret) {
    if (h->proof_len != 0) {
      snprintf(why, size, "the peer proves a secret but this worker has none "
                          "(set EMBER_SECRET or init_rpc's secret)");
      return -1;
    }
    return 0;
  }
  if (h->proof_len == 0) {
    snprintf(why, size, "the peer sent no proof of the secret (it has no "
                        "EMBER_SECRET)");
    return -1;
  }
  make_proof(t, role, nonce_a, nonce_b, name_a, name_b, expected);
  if (h->proof_len != PROOF_BYTES ||
      sodium_memcmp(expected, h->proof, PROOF_BYTES) != 0) {
    snprintf(why, size, "wrong proof of the secret (the peer has another "
                        "EMBER_SECRET)");
    return -1;
  }
  return 0;
}

/* The connection carries the peer's frames from now on. */
static void conn_ready(conn_t *conn) {
  peer_t *peer = conn->peer;
  conn->state = CONN_READY;
  if (peer->outgoing == conn)
    peer->outgoing = NULL;
  if (peer->conn != NULL) {
    /* A rare race left two proven connections: both carry the peer's
    ** frames in, ours keeps carrying frames out. */
    return;
  }
  if (peer->outgoing != NULL) {
    /* The peer's connection won (lower id): ours is not needed. Its frames
    ** wait in the peer's queue, so none are lost. */
    conn_close(peer->outgoing, 0, NULL);
  }
  peer->conn = conn;
  queue_splice(&conn->queue, &peer->queue);
  if (conn->queue.head != NULL)
    mark_dirty(conn);
}

/* --- Parked HELLOs ------------------------------------------------------------ */

static void park_timer_cb(uv_timer_t *handle);

/* Arms the park timer for the earliest deadline of the parked HELLOs (or
** stops it when none is parked). */
static void arm_park_timer(ember_transport_t *t) {
  uint64_t now = uv_now(ember_loop_uv(t->loop)), due = 0;
  for (conn_t *conn = t->conns; conn != NULL; conn = conn->next)
    if (conn->state == CONN_AWAIT_PEER &&
        (due == 0 || conn->parked_until < due))
      due = conn->parked_until;
  if (due == 0) {
    uv_timer_stop(&t->park_timer);
    return;
  }
  uv_timer_start(&t->park_timer, park_timer_cb, due > now ? due - now : 0, 0);
}

static void park_timer_cb(uv_timer_t *handle) {
  ember_transport_t *t = (ember_transport_t *)((char *)handle -
                                               offsetof(ember_transport_t,
                                                        park_timer));
  uint64_t now = uv_now(ember_loop_uv(t->loop));
  conn_t *conn = t->conns;
  while (conn != NULL) {
    conn_t *next = conn->next;
    if (conn->state == CONN_AWAIT_PEER && conn->parked_until <= now)
      conn_close(conn, UV_ETIMEDOUT,
                 "HELLO from unknown id %d ('%s'): no peer of that id "
                 "was declared within %.3g s",
                 conn->parked_id, conn->parked_name,
                 (double)t->park_timeout_ms / 1000.0);
    conn = next;
  }
  arm_park_timer(t);
}

void ember__transport_set_park_timeout(ember_transport_t *t, uint64_t ms) {
  t->park_timeout_ms = ms;
}

/*
** Keeps the HELLO until ember_transport_add_peer declares its id, or its
** deadline passes; tells the owner (on_unknown_peer), who may declare it.
*/
static void park_hello(conn_t *conn, const handshake_t *h) {
  ember_transport_t *t = conn->t;
  if (h->id < 0 || h->id > 0x7fffffff || h->id == t->id ||
      h->name_len >= sizeof(conn->parked_name)) {
    conn_close(conn, EMBER_EINVAL, "HELLO from an unknown worker (id %lld)",
               (long long)h->id);
    return;
  }
  conn->state = CONN_AWAIT_PEER;
  conn->parked_id = (int)h->id;
  memcpy(conn->parked_name, h->name, h->name_len);
  conn->parked_name[h->name_len] = '\0';
  memcpy(conn->peer_nonce, h->nonce, NONCE_BYTES);
  conn->parked_until = uv_now(ember_loop_uv(t->loop)) + t->park_timeout_ms;
  arm_park_timer(t); /* its deadline may be the earliest */
  /* Last: the callback may declare the peer at once (or close us). */
  if (t->cb.on_unknown_peer != NULL && !t->closing)
    t->cb.on_unknown_peer(t->cb.user, conn->parked_id, conn->parked_name);
}

static void on_hello(conn_t *conn, const handshake_t *h);

/* A peer was declared: answer the HELLOs that waited for it. */
static void unpark_hellos(ember_transport_t *t, int id) {
  conn_t *conn = t->conns;
  while (conn != NULL) {
    conn_t *next = conn->next;
    if (conn->state == CONN_AWAIT_PEER && conn->parked_id == id) {
      handshake_t h;
      memset(&h, 0, sizeof(h));
      h.id = id;
      h.name = conn->parked_name;
      h.name_len = strlen(conn->parked_name);
      h.nonce = conn->peer_nonce;
      h.nonce_len = NONCE_BYTES;
      on_hello(conn, &h);
    }
    conn = next;
  }
}

static void on_hello(conn_t *conn, const handshake_t *h) {
  ember_transport_t *t = conn->t;
  peer_t *peer = find_peer(t, h->id <= 0x7fffffff ? (int)h->id : -1);

  if (peer == NULL) {
    park_hello(conn, h);
    return;
  }
  if (!names_match(peer, h)) {
    conn_close(conn, EMBER_EINVAL, "HELLO from an unknown worker '%.*s' (id %lld)",
               (int)(h->name_len > 64 ? 64 : h->name_len), h->name,
               (long long)h->id);
    return;
  }
  if (peer->lost || peer->left) {
    conn_close(conn, EMBER_EINVAL, "worker '%s' was lost or left earlier",
               peer->name);
    return;
  }
  conn->peer = peer;
  memmove(conn->peer_nonce, h->nonce, NONCE_BYTES);
  /*
  ** Only connections that are ours or proven (ready) decide the tie: an
  ** unauthenticated HELLO must not make us drop a real connection.
  */
  if (peer->conn != NULL || (peer->outgoing != NULL && t->id < peer->id)) {
    /* Ours wins: the peer will use the connection we made. */
    send_welcome(conn, "duplicate");
    conn->state = CONN_AWAIT_AUTH;
    conn->peer = NULL; /* not the peer's connection */
    return;
  }
  /* Theirs (the lower id's) wins once it proves itself: see conn_ready. */
  send_welcome(conn, "ok");
  conn->state = CONN_AWAIT_AUTH;
}

static void on_welcome(conn_t *conn, const handshake_t *h) {
  peer_t *peer = conn->peer;
  char why[200];
  if (h->id != peer->id || !names_match(peer, h)) {
    conn_close(conn, EMBER_EINVAL,
               "expected worker '%s' (id %d) but '%.*s' (id %lld) answered",
               peer->name, peer->id,
               (int)(h->name_len > 64 ? 64 : h->name_len), h->name,
               (long long)h->id);
    return;
  }
  memcpy(conn->peer_nonce, h->nonce, NONCE_BYTES);
  if (check_proof(conn, 'W', conn->my_nonce, conn->peer_nonce, peer->name,
                  conn->t->name, h, why, sizeof(why)) != 0) {
    conn_close(conn, EMBER_EINVAL, "handshake failed: %s", why);
    return;
  }
  if (h->status_len == 9 && memcmp(h->status, "duplicate", 9) == 0) {
    /* The peer's own connection carries our frames. */
    conn_close(conn, 0, NULL);
    return;
  }
  send_auth(conn);
  conn_ready(conn);
}

static void on_auth(conn_t *conn, const handshake_t *h) {
  peer_t *peer = conn->peer;
  char why[200];
  if (peer == NULL) {
    /* A duplicate we refused: the peer closes it. */
    return;
  }
  if (check_proof(conn, 'A', conn->my_nonce, conn->peer_nonce, peer->name,
                  conn->t->name, h, why, sizeof(why)) != 0) {
    conn->peer = NULL;
    conn_close(conn, EMBER_EINVAL, "worker '%s' failed the handshake: %s",
               peer->name, why);
    return;
  }
  conn_ready(conn);
}

static int expected_handshake_kind(const conn_t *conn) {
  if (conn->state == CONN_AWAIT_PEER)
    return -1; /* it must wait for our WELCOME */
  return conn->state == CONN_AWAIT_HELLO     ? EMBER_MSG_HELLO
         : conn->state == CONN_AWAIT_WELCOME ? EMBER_MSG_WELCOME
                                             : EMBER_MSG_AUTH;
}

static void handle_handshake(conn_t *conn, ember_frame_t *frame) {
  handshake_t h;
  int kind = frame->header.kind;
  if (kind != expected_handshake_kind(conn)) {
    conn_close(conn, EMBER_EINVAL,
               "a frame of kind %d before the handshake was done", kind);
    return;
  }
  if (ember_wire_check_body(frame->body, frame->header.body_len,
                            &conn->t->handshake_limits) != 0) {
    conn_close(conn, EMBER_EINVAL, "bad handshake: %s", ember_wire_error());
    return;
  }
  if (parse_handshake(frame, &h) != 0) {
    conn_close(conn, EMBER_EINVAL, "malformed handshake frame (kind %d)", kind);
  } else if (kind == EMBER_MSG_HELLO) {
    on_hello(conn, &h);
  } else if (kind == EMBER_MSG_WELCOME) {
    on_welcome(conn, &h);
  } else {
    on_auth(conn, &h);
  }
}

/* --- Reading ---------------------------------------------------------------- */

static const ember_wire_limits_t *conn_limits(const conn_t *conn) {
  return conn->state == CONN_READY ? &conn->t->limits
                                   : &conn->t->handshake_limits;
}

static void deliver_frame(conn_t *conn, ember_frame_t *in) {
  ember_transport_t *t = conn->t;
  ember_frame_t frame = *in;
  peer_t *peer = conn->peer;

  if (conn->state != CONN_READY) {
    handle_handshake(conn, &frame);
    ember_frame_free(&frame);
    return;
  }
  peer->stats.frames_in++;
  if (frame.header.kind == EMBER_MSG_GOODBYE) {
    peer->left = 1;
    ember_frame_free(&frame);
    return;
  }
  if (frame.header.kind == EMBER_MSG_HEARTBEAT ||
      frame.header.kind < EMBER_MSG_REQUEST) {
    ember_frame_free(&frame);
    return;
  }
  if (t->cb.on_frame != NULL)
    t->cb.on_frame(t->cb.user, peer->id, &frame);
  else
    ember_frame_free(&frame);
}

/* Before the handshake is done only its next frame is welcome; refused
** before anything is allocated for it. */
static int header_cb(void *user, const ember_frame_header_t *header) {
  conn_t *conn = user;
  if (conn->state != CONN_READY &&
      header->kind != expected_handshake_kind(conn)) {
    conn_close(conn, EMBER_EINVAL,
               "a frame of kind %d before the handshake was done",
               header->kind);
    return UV_ECANCELED;
  }
  return 0;
}

static int frame_cb(void *user, ember_frame_t *frame) {
  conn_t *conn = user;
  deliver_frame(conn, frame);
  if (conn->state == CONN_CLOSING)
    return UV_ECANCELED;
  /* The handshake may have made the connection ready. */
  ember_frame_reader_set_limits(conn->reader, conn_limits(conn));
  return 0;
}

/* Big parts of a frame are read straight into its own memory (a tensor
** payload into its final storage), the rest through the staging buffer. */
static void alloc_cb(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
  conn_t *conn = handle->data;
  size_t room = 0;
  char *target = ember_frame_reader_direct(conn->reader, &room);
  (void)suggested;
  if (target != NULL && room >= DIRECT_READ_MIN) {
    conn->reading_direct = 1;
    *buf = uv_buf_init(target, room > 0x40000000u ? 0x40000000u
                                                  : (unsigned)room);
    return;
  }
  conn->reading_direct = 0;
  *buf = uv_buf_init(conn->staging, STAGING_BYTES);
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  conn_t *conn = stream->data;
  int err;
  (void)buf;
  if (nread < 0) {
    if (conn->peer == NULL && conn->state != CONN_READY)
      conn_close(conn, 0, NULL); /* a refused duplicate, or a stranger */
    else if (nread == UV_EOF && conn->state != CONN_READY)
      conn_close(conn, UV_EOF,
                 "the peer closed the connection during the handshake");
    else if (nread == UV_EOF)
      conn_close(conn, UV_EOF, "the connection was closed by the peer");
    else
      conn_close(conn, (int)nread, "%s", uv_strerror((int)nread));
    return;
  }
  if (nread == 0)
    return;
  if (conn->peer != NULL)
    conn->peer->stats.bytes_in += (uint64_t)nread;
  note_io(conn->t);
  if (conn->reading_direct)
    err = ember_frame_reader_advance(conn->reader, (size_t)nread);
  else
    err = ember_frame_reader_feed(conn->reader, conn->staging, (size_t)nread);
  if (err != 0 && conn->state != CONN_CLOSING)
    conn_close(conn, err, err == EMBER_EINVAL ? "bad frame: %s" : "%s",
               ember_frame_reader_error(conn->reader));
}

static void conn_start_reading(conn_t *conn) {
  ember_frame_reader_callbacks_t cb = {conn, header_cb, frame_cb};
  int err;
  if (conn->reader == NULL &&
      (conn->reader = ember_frame_reader_new(conn_limits(conn), &cb)) == NULL) {
    conn_close(conn, EMBER_ENOMEM, "out of memory");
    return;
  }
  err = uv_read_start((uv_stream_t *)&conn->tcp, alloc_cb, read_cb);
  if (err != 0)
    conn_close(conn, err, "cannot read: %s", uv_strerror(err));
}

/* --- Accepting and connecting ----------------------------------------------- */

static void connection_cb(uv_stream_t *server, int status) {
  ember_transport_t *t = (ember_transport_t *)((char *)server -
                                               offsetof(ember_transport_t, listener));
  conn_t *conn;
  if (status != 0 || t->closing)
    return;
  if ((conn = conn_new(t, 0)) == NULL)
    return;
  conn->state = CONN_AWAIT_HELLO;
  if (uv_accept(server, (uv_stream_t *)&conn->tcp) != 0) {
    conn_close(conn, 0, NULL);
    return;
  }
  remember_address(conn);
  conn_start_reading(conn);
}

static void connect_cb(uv_connect_t *req, int status) {
  conn_t *conn = req->data;
  if (status == UV_ECANCELED || conn->state == CONN_CLOSING)
    return;
  if (status != 0) {
    conn_close(conn, status, "cannot connect to %s:%d: %s", conn->peer->host,
               conn->peer->port, uv_strerror(status));
    return;
  }
  remember_address(conn);
  conn->state = CONN_AWAIT_WELCOME;
  conn_start_reading(conn);
  if (conn->state == CONN_CLOSING)
    return;
  if (send_hello(conn) != 0) {
    conn_close(conn, EMBER_ENOMEM, "out of memory");
    return;
  }
}

static int resolve(const char *host, int port, struct sockaddr_storage *addr) {
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)addr) == 0)
    return 0;
  if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)addr) == 0)
    return 0;
  return ember__wire_fail(EMBER_EINVAL, "'%s' is not an IP address", host);
}

static int connect_peer(ember_transport_t *t, peer_t *peer) {
  struct sockaddr_storage addr;
  conn_t *conn;
  int err;
  if ((err = resolve(peer->host, peer->port, &addr)) != 0)
    return err;
  if ((conn = conn_new(t, 1)) == NULL)
    return EMBER_ENOMEM;
  conn->peer = peer;
  conn->state = CONN_CONNECTING;
  peer->outgoing = conn;
  conn->connect_req.data = conn;
  err = uv_tcp_connect(&conn->connect_req, &conn->tcp,
                       (const struct sockaddr *)&addr, connect_cb);
  if (err != 0) {
    peer->outgoing = NULL;
    conn->peer = NULL;
    conn_close(conn, 0, NULL);
    return err;
  }
  return 0;
}

int ember_transport_send(ember_transport_t *t, int id, int kind,
                         uint16_t flags, uint64_t request_id,
                         ember_wire_msg_t *msg) {
  peer_t *peer = find_peer(t, id);
  frame_out_t *frame;
  int err;

  if (peer == NULL || t->closing) {
    ember_wire_msg_free(msg);
    ember_wire_msg_init(msg);
    return t->closing ? EMBER_EPEERLOST
                      : ember__wire_fail(EMBER_EINVAL, "no worker with id %d", id);
  }
  if (peer->lost || peer->left) {
    ember_wire_msg_free(msg);
    ember_wire_msg_init(msg);
    return ember__wire_fail(EMBER_EPEERLOST, "worker '%s' (id %d) %s",
                            peer->name, id,
                            peer->left ? "has shut down" : "was lost");
  }
  if (msg->body_len > t->limits.max_body ||
      msg->payload_count > t->limits.max_tensors) {
    size_t body_len = msg->body_len;
    uint32_t count = msg->payload_count;
    ember_wire_msg_free(msg);
    ember_wire_msg_init(msg);
    return ember__wire_fail(EMBER_EINVAL,
                            "a message of %zu body bytes and %u tensors is "
                            "over the limits (%u bytes, %u tensors)",
                            body_len, count, t->limits.max_body,
                            t->limits.max_tensors);
  }
  if ((frame = frame_out_new(kind, flags | msg->flags, request_id, msg)) ==
      NULL) {
    ember_wire_msg_free(msg);
    ember_wire_msg_init(msg);
    return EMBER_ENOMEM;
  }
  if (peer->conn != NULL) {
    conn_queue(peer->conn, frame);
    return 0;
  }
  t->unsent += frame->bytes;
  queue_push(&peer->queue, frame);
  if (peer->outgoing == NULL && (err = connect_peer(t, peer)) != 0) {
    char why[300];
    snprintf(why, sizeof(why), "cannot connect to worker '%s' at %s:%d: %s",
             peer->name, peer->host, peer->port, ember_strerror(err));
    peer_lost(peer, t, err, why);
    return ember__wire_fail(EMBER_EPEERLOST, "%s", why);
  }
  return 0;
}

void ember_transport_say_goodbye(ember_transport_t *t) {
  for (int i = 0; i < t->peer_count; i++) {
    peer_t *peer = t->peers[i];
    ember_wire_msg_t msg;
    frame_out_t *frame;
    if (peer == NULL || peer->conn == NULL)
      continue;
    ember_wire_msg_init(&msg);
    ember_wire_msg_write(&msg, "\xc0", 1); /* nil */
    if ((frame = frame_out_new(EMBER_MSG_GOODBYE, 0, 0, &msg)) != NULL)
      conn_queue(peer->conn, frame);
    else
      ember_wire_msg_free(&msg);
  }
}

/* --- Life cycle -------------------------------------------------------------- */

static void transport_handle_close_cb(uv_handle_t *handle);

int ember_transport_new(ember_loop_t *loop, const ember_transport_opts_t *opts,
                        const ember_transport_callbacks_t *callbacks,
                        ember_transport_t **out) {
  ember_transport_t *t;
  *out = NULL;
  if (sodium_init() < 0)
    return ember__wire_fail(EMBER_EFAILED, "libsodium failed to initialise");
  if ((t = calloc(1, sizeof(*t))) == NULL)
    return EMBER_ENOMEM;
  if ((t->name = strdup(opts->name)) == NULL) {
    free(t);
    return EMBER_ENOMEM;
  }
  t->loop = loop;
  t->id = opts->id;
  t->limits = opts->limits;
  t->handshake_limits = opts->limits;
  t->handshake_limits.max_body = HANDSHAKE_MAX_BODY;
  t->handshake_limits.max_tensors = 0;
  t->handshake_limits.max_depth = 2;
  t->cb = *callbacks;
  if (opts->secret != NULL && opts->secret[0] != '\0') {
    t->has_secret = 1;
    crypto_generichash(t->key, sizeof(t->key), (const uint8_t *)opts->secret,
                       strlen(opts->secret), NULL, 0);
  }
  t->owner.close_cb = transport_handle_close_cb;
  t->flusher_owner.close_cb = transport_handle_close_cb;
  uv_prepare_init(ember_loop_uv(loop), &t->flusher);
  t->flusher.data = &t->flusher_owner;
  t->flusher_open = 1;
  t->park_owner.close_cb = transport_handle_close_cb;
  t->park_timeout_ms = PARK_TIMEOUT_MS;
  uv_timer_init(ember_loop_uv(loop), &t->park_timer);
  t->park_timer.data = &t->park_owner;
  /* A parked HELLO alone does not keep the loop running. */
  uv_unref((uv_handle_t *)&t->park_timer);
  t->poller_owner.close_cb = transport_handle_close_cb;
  uv_idle_init(ember_loop_uv(loop), &t->poller);
  t->poller.data = &t->poller_owner;
  /* Polling alone does not keep the loop running. */
  uv_unref((uv_handle_t *)&t->poller);
  t->busy_poll_ns = (uint64_t)opts->busy_poll_us * 1000;
  t->handles_open = 3;
  *out = t;
  return 0;
}

int ember_transport_listen(ember_transport_t *t, const char *host, int port,
                           int *bound) {
  struct sockaddr_storage addr;
  int len = sizeof(addr), err;
  if (t->listening)
    return ember__wire_fail(EMBER_EINVAL, "already listening");
  if ((err = resolve(host, port, &addr)) != 0)
    return err;
  uv_tcp_init(ember_loop_uv(t->loop), &t->listener);
  t->listener.data = &t->owner;
  t->listening = 1;
  t->handles_open++;
  if ((err = uv_tcp_bind(&t->listener, (const struct sockaddr *)&addr, 0)) != 0 ||
      (err = uv_listen((uv_stream_t *)&t->listener, 511, connection_cb)) != 0)
    return ember__wire_fail(err, "cannot listen on %s:%d: %s", host, port,
                            uv_strerror(err));
  uv_tcp_getsockname(&t->listener, (struct sockaddr *)&addr, &len);
  *bound = addr.ss_family == AF_INET6
               ? ntohs(((struct sockaddr_in6 *)&addr)->sin6_port)
               : ntohs(((struct sockaddr_in *)&addr)->sin_port);
  return 0;
}

static void transport_free(ember_transport_t *t) {
  for (int i = 0; i < t->peer_count; i++) {
    peer_t *peer = t->peers[i];
    if (peer == NULL)
      continue;
    queue_drop(t, &peer->queue);
    free(peer->name);
    free(peer->host);
    free(peer);
  }
  ember_waiters_drop(&t->flush_waiters);
  free(t->peers);
  free(t->name);
  free(t);
}

static void transport_maybe_free(ember_transport_t *t) {
  if (t->closing && t->handles_open == 0)
    transport_free(t);
}

static void transport_handle_close_cb(uv_handle_t *handle) {
  ember_transport_t *t;
  if (handle->type == UV_PREPARE)
    t = (ember_transport_t *)((char *)handle - offsetof(ember_transport_t, flusher));
  else if (handle->type == UV_IDLE)
    t = (ember_transport_t *)((char *)handle - offsetof(ember_transport_t, poller));
  else if (handle->type == UV_TIMER)
    t = (ember_transport_t *)((char *)handle -
                              offsetof(ember_transport_t, park_timer));
  else
    t = (ember_transport_t *)((char *)handle - offsetof(ember_transport_t, listener));
  t->handles_open--;
  transport_maybe_free(t);
}

void ember_transport_close(ember_transport_t *t) {
  if (t == NULL || t->closing)
    return;
  t->closing = 1;
  while (t->conns != NULL)
    conn_close(t->conns, 0, NULL);
  for (int i = 0; i < t->peer_count; i++)
    if (t->peers[i] != NULL)
      queue_drop(t, &t->peers[i]->queue);
  t->dirty = NULL;
  uv_close((uv_handle_t *)&t->flusher, transport_handle_close_cb);
  uv_close((uv_handle_t *)&t->park_timer, transport_handle_close_cb);
  uv_close((uv_handle_t *)&t->poller, transport_handle_close_cb);
  if (t->listening)
    uv_close((uv_handle_t *)&t->listener, transport_handle_close_cb);
}
