/*
** The transport and agent on one loop: handshakes, one connection per pair,
** secrets, frames with tensors, calls and timeouts, and bad input from a
** stranger while the peers keep talking.
*/
#include <string.h>
#include <unistd.h>

#include "agent.h"
#include "check.h"
#include "error.h"
#include "run_until.h"

typedef struct {
  ember_transport_t *t;
  int frames;
  int lost;
  int lost_code;
  int last_kind;
  uint64_t last_id;
  char last_body[64];
  int64_t tensor_sum;
  char lost_why[512];
  int unknown; /* HELLOs from undeclared ids */
  int unknown_id;
  char unknown_name[32];
  int declare_port; /* > 0: declare the unknown peer at once, at this port */
} side_t;

static void on_frame(void *user, int peer, ember_frame_t *frame) {
  side_t *side = user;
  (void)peer;
  side->frames++;
  side->last_kind = frame->header.kind;
  side->last_id = frame->header.request_id;
  memset(side->last_body, 0, sizeof(side->last_body));
  memcpy(side->last_body, frame->body,
         frame->header.body_len < 63 ? frame->header.body_len : 63);
  for (uint32_t i = 0; i < frame->header.tensor_count; i++) {
    ember_tensor_t *raw = frame->payloads[i];
    const uint8_t *bytes = raw->storage->data;
    for (size_t j = 0; j < raw->storage->nbytes; j++)
      side->tensor_sum += bytes[j];
  }
  ember_frame_free(frame);
}

static void on_lost(void *user, int peer, int code, const char *why) {
  side_t *side = user;
  (void)peer;
  side->lost++;
  side->lost_code = code;
  snprintf(side->lost_why, sizeof(side->lost_why), "%s", why);
}

static void on_unknown(void *user, int peer, const char *name) {
  side_t *side = user;
  side->unknown++;
  side->unknown_id = peer;
  snprintf(side->unknown_name, sizeof(side->unknown_name), "%s", name);
  if (side->declare_port > 0)
    CHECK(ember_transport_add_peer(side->t, peer, name, "127.0.0.1",
                                   side->declare_port) == 0);
}

/* Options of a side beyond its name and id (zero: the defaults). */
typedef struct {
  const char *secret;
  const char *faults;
  uint32_t heartbeat_interval_ms, heartbeat_window_ms;
} side_opts_t;

static void make_side_with(ember_loop_t *loop, side_t *side, const char *name,
                           int id, const side_opts_t *more, int *port) {
  ember_transport_opts_t opts;
  ember_transport_callbacks_t cb = {side, on_frame, on_lost, on_unknown};
  memset(side, 0, sizeof(*side));
  memset(&opts, 0, sizeof(opts));
  /* Every transport test runs with busy polling on, as workers do: the loop
  ** must still end when nothing is left, and deadlocks still be reported. */
  opts.busy_poll_us = 100;
  opts.name = name;
  opts.id = id;
  opts.secret = more->secret;
  opts.faults = more->faults;
  opts.heartbeat_interval_ms = more->heartbeat_interval_ms;
  opts.heartbeat_window_ms = more->heartbeat_window_ms;
  ember_wire_default_limits(&opts.limits);
  CHECK(ember_transport_new(loop, &opts, &cb, &side->t) == 0);
  CHECK(ember_transport_listen(side->t, "127.0.0.1", 0, port) == 0);
  CHECK(*port > 0);
}

static void make_side(ember_loop_t *loop, side_t *side, const char *name,
                      int id, const char *secret, int *port) {
  side_opts_t more = {secret, NULL, 0, 0};
  make_side_with(loop, side, name, id, &more, port);
}

static void send_text(side_t *from, int to, int kind, uint64_t id,
                      const char *text) {
  ember_wire_msg_t msg;
  char packed[64];
  size_t len = strlen(text);
  ember_wire_msg_init(&msg);
  packed[0] = (char)(0xa0 | len); /* fixstr */
  memcpy(packed + 1, text, len);
  CHECK(ember_wire_msg_write(&msg, packed, len + 1) == 0);
  CHECK(ember_transport_send(from->t, to, kind, 0, id, &msg) == 0);
}

static double seconds_since(uint64_t start_ns) {
  return (double)(uv_hrtime() - start_ns) / 1e9;
}

static void close_all(ember_loop_t *loop, side_t *a, side_t *b) {
  ember_transport_close(a->t);
  ember_transport_close(b->t);
  CHECK(ember_loop_close(loop) == 0);
  CHECK_EQ(ember_future_live_count(), 0);
}

static void test_frames_both_ways(void) {
  ember_loop_t *loop;
  side_t a, b;
  int pa, pb;
  CHECK(ember_loop_new(&loop) == 0);
  make_side(loop, &a, "a", 0, NULL, &pa);
  make_side(loop, &b, "b", 1, NULL, &pb);
  CHECK(ember_transport_add_peer(a.t, 1, "b", "127.0.0.1", pb) == 0);
  CHECK(ember_transport_add_peer(b.t, 0, "a", "127.0.0.1", pa) == 0);
  /* Both send first: one connection must carry both. */
  send_text(&a, 1, EMBER_MSG_REQUEST, 7, "hi b");
  send_text(&b, 0, EMBER_MSG_REQUEST, 8, "hi a");
  RUN_UNTIL(loop, a.frames == 1 && b.frames == 1);
  CHECK_EQ(b.last_id, 7);
  CHECK(strcmp(b.last_body + 1, "hi b") == 0);
  CHECK(strcmp(a.last_body + 1, "hi a") == 0);
  for (int i = 0; i < 1000; i++)
    send_text(&a, 1, EMBER_MSG_REQUEST, (uint64_t)i, "many");
  RUN_UNTIL(loop, b.frames == 1001);
  CHECK_EQ(a.lost + b.lost, 0);
  close_all(loop, &a, &b);
}

/* A HELLO from an id nobody declared waits: declared from the callback it
** is answered; never declared, it is dropped after the park timeout. */
static void test_undeclared_peers_are_parked(void) {
  ember_loop_t *loop;
  side_t a, b, c;
  int pa, pb, pc;
  CHECK(ember_loop_new(&loop) == 0);
  make_side(loop, &a, "a", 0, NULL, &pa);
  make_side(loop, &b, "b", 1, NULL, &pb);
  make_side(loop, &c, "client5", 5, NULL, &pc);
  b.declare_port = pc;
  CHECK(ember_transport_add_peer(c.t, 1, "b", "127.0.0.1", pb) == 0);
  send_text(&c, 1, EMBER_MSG_REQUEST, 3, "join");
  RUN_UNTIL(loop, b.frames == 1);
  CHECK_EQ(b.unknown, 1);
  CHECK_EQ(b.unknown_id, 5);
  CHECK(strcmp(b.unknown_name, "client5") == 0);
  send_text(&b, 5, EMBER_MSG_RESPONSE, 3, "welcome");
  RUN_UNTIL(loop, c.frames == 1);
  /* a is never declared at b: its HELLO is dropped, and a hears of it. */
  b.declare_port = 0;
  ember__transport_set_park_timeout(b.t, 50);
  CHECK(ember_transport_add_peer(a.t, 1, "b", "127.0.0.1", pb) == 0);
  send_text(&a, 1, EMBER_MSG_REQUEST, 4, "anyone?");
  RUN_UNTIL(loop, a.lost == 1);
  CHECK_EQ(b.unknown, 2);
  CHECK_EQ(b.frames, 1);
  ember_transport_close(c.t);
  close_all(loop, &a, &b);
}

static void test_tensor_payload(void) {
  ember_loop_t *loop;
  side_t a, b;
  int pa, pb;
  int64_t shape[1] = {300000};
  ember_tensor_t *t;
  ember_wire_msg_t msg;
  uint32_t index;
  CHECK(ember_loop_new(&loop) == 0);
  make_side(loop, &a, "a", 0, NULL, &pa);
  make_side(loop, &b, "b", 1, NULL, &pb);
  CHECK(ember_transport_add_peer(a.t, 1, "b", "127.0.0.1", pb) == 0);
  CHECK(ember_transport_add_peer(b.t, 0, "a", "127.0.0.1", pa) == 0);
  t = ember_tensor_full(shape, 1, EMBER_UINT8, 3);
  CHECK(t != NULL);
  ember_wire_msg_init(&msg);
  CHECK(ember_wire_msg_write(&msg, "\xc0", 1) == 0);
  CHECK(ember_wire_msg_add_tensor(&msg, t, &index) == 0);
  CHECK(ember_wire_msg_add_tensor(&msg, t, &index) == 0); /* same: one payload */
  ember_tensor_release(t);
  CHECK(ember_transport_send(a.t, 1, EMBER_MSG_REQUEST, 0, 1, &msg) == 0);
  RUN_UNTIL(loop, b.frames == 1);
  CHECK_EQ(b.tensor_sum, 3 * 300000);
  close_all(loop, &a, &b);
}

static void test_wrong_secret(void) {
  ember_loop_t *loop;
  side_t a, b;
  int pa, pb;
  CHECK(ember_loop_new(&loop) == 0);
  make_side(loop, &a, "a", 0, "one", &pa);
  make_side(loop, &b, "b", 1, "two", &pb);
  CHECK(ember_transport_add_peer(a.t, 1, "b", "127.0.0.1", pb) == 0);
  CHECK(ember_transport_add_peer(b.t, 0, "a", "127.0.0.1", pa) == 0);
  send_text(&a, 1, EMBER_MSG_REQUEST, 1, "secret?");
  RUN_UNTIL(loop, a.lost == 1);
  CHECK(strstr(a.lost_why, "secret") != NULL);
  CHECK_EQ(b.frames, 0);
  CHECK(ember_transport_send(a.t, 1, EMBER_MSG_REQUEST, 0, 2,
                             &(ember_wire_msg_t){0}) == EMBER_EPEERLOST);
  close_all(loop, &a, &b);
}

static void test_secret_matches(void) {
  ember_loop_t *loop;
  side_t a, b;
  int pa, pb;
  CHECK(ember_loop_new(&loop) == 0);
  make_side(loop, &a, "a", 0, "same", &pa);
  make_side(loop, &b, "b", 1, "same", &pb);
  CHECK(ember_transport_add_peer(a.t, 1, "b", "127.0.0.1", pb) == 0);
  CHECK(ember_transport_add_peer(b.t, 0, "a", "127.0.0.1", pa) == 0);
  send_text(&b, 0, EMBER_MSG_REQUEST, 1, "ok");
  RUN_UNTIL(loop, a.frames == 1);
  CHECK_EQ(a.lost + b.lost, 0);
  close_all(loop, &a, &b);
}

/* --- A stranger sending raw bytes ----------------------------------------- */

typedef struct {
  ember_handle_owner_t owner;
  uv_tcp_t tcp;
  uv_connect_t req;
  uv_write_t write_req;
  const char *bytes;
  size_t len;
  int closed;
} stranger_t;

static void stranger_close_cb(uv_handle_t *h) {
  stranger_t *s = h->data;
  s->closed = 2;
}

static void stranger_read_cb(uv_stream_t *stream, ssize_t nread,
                             const uv_buf_t *buf) {
  stranger_t *s = stream->data;
  (void)buf;
  if (nread < 0 && !s->closed) {
    s->closed = 1;
    uv_close((uv_handle_t *)&s->tcp, stranger_close_cb);
  }
}

static void stranger_alloc_cb(uv_handle_t *h, size_t size, uv_buf_t *buf) {
  static char scratch[256];
  (void)h;
  (void)size;
  *buf = uv_buf_init(scratch, sizeof(scratch));
}

static void stranger_written_cb(uv_write_t *req, int status) {
  (void)req;
  (void)status;
}

static void stranger_connect_cb(uv_connect_t *req, int status) {
  stranger_t *s = req->data;
  uv_buf_t buf = uv_buf_init((char *)s->bytes, (unsigned)s->len);
  CHECK(status == 0);
  uv_read_start((uv_stream_t *)&s->tcp, stranger_alloc_cb, stranger_read_cb);
  uv_write(&s->write_req, (uv_stream_t *)&s->tcp, &buf, 1, stranger_written_cb);
}

/* Sends `bytes` to port and returns once the transport hung up. */
static void send_as_stranger(ember_loop_t *loop, int port, const char *bytes,
                             size_t len) {
  stranger_t s;
  struct sockaddr_in addr;
  memset(&s, 0, sizeof(s));
  s.bytes = bytes;
  s.len = len;
  uv_tcp_init(ember_loop_uv(loop), &s.tcp);
  s.tcp.data = &s;
  s.req.data = &s;
  uv_ip4_addr("127.0.0.1", port, &addr);
  CHECK(uv_tcp_connect(&s.req, &s.tcp, (struct sockaddr *)&addr,
                       stranger_connect_cb) == 0);
  RUN_UNTIL(loop, s.closed == 2);
}

static void test_bad_input_keeps_serving(void) {
  ember_loop_t *loop;
  side_t a, b;
  int pa, pb;
  uint8_t header[EMBER_WIRE_HEADER_SIZE];
  ember_frame_header_t h = {EMBER_WIRE_VERSION, EMBER_MSG_HELLO, 0, 0,
                            3000000000u, 0};
  CHECK(ember_loop_new(&loop) == 0);
  make_side(loop, &a, "a", 0, NULL, &pa);
  make_side(loop, &b, "b", 1, NULL, &pb);
  CHECK(ember_transport_add_peer(a.t, 1, "b", "127.0.0.1", pb) == 0);
  CHECK(ember_transport_add_peer(b.t, 0, "a", "127.0.0.1", pa) == 0);
  send_text(&a, 1, EMBER_MSG_REQUEST, 1, "before");
  RUN_UNTIL(loop, b.frames == 1);

  send_as_stranger(loop, pb, "GET / HTTP/1.1\r\n\r\nxxxxxxxx", 26);
  ember_wire_pack_header(&h, header); /* a 3 GB body */
  send_as_stranger(loop, pb, (const char *)header, sizeof(header));
  h.body_len = 1;
  h.kind = EMBER_MSG_REQUEST; /* a request before any handshake */
  ember_wire_pack_header(&h, header);
  send_as_stranger(loop, pb, (const char *)header, sizeof(header));
  h.kind = EMBER_MSG_HELLO;
  h.body_len = 5;
  ember_wire_pack_header(&h, header);
  {
    char frame[EMBER_WIRE_HEADER_SIZE + 5];
    memcpy(frame, header, sizeof(header));
    memcpy(frame + sizeof(header), "\xdd\xff\xff\xff\xff", 5); /* 2^32 items */
    send_as_stranger(loop, pb, frame, sizeof(frame));
  }

  send_text(&a, 1, EMBER_MSG_REQUEST, 2, "after");
  RUN_UNTIL(loop, b.frames == 2);
  CHECK_EQ(a.lost + b.lost, 0);
  close_all(loop, &a, &b);
}

/* --- Liveness, faults and goodbyes ------------------------------------------ */

/* Runs two loops in turns (5 ms each) until `cond` holds or ~4 s pass. */
#define RUN_BOTH_UNTIL(l1, l2, cond)                                           \
  do {                                                                         \
    for (int i_ = 0; i_ < 400 && !(cond); i_++) {                              \
      run_for((l1), 5);                                                        \
      run_for((l2), 5);                                                        \
    }                                                                          \
    CHECK(cond);                                                               \
  } while (0)

/* b's loop stops running after the handshake: to a, b went silent as a
** stopped process or a dead link does, with its connection still open. */
/* An unwatched peer (a client at its prompt) may be silent for longer than
** the window and is not lost; watched again, its silence counts. */
static void test_unwatched_peer_is_not_lost(void) {
  ember_loop_t *loop, *frozen;
  side_t a, b;
  int pa, pb;
  side_opts_t quick = {NULL, NULL, 100, 400};
  CHECK(ember_loop_new(&loop) == 0);
  CHECK(ember_loop_new(&frozen) == 0);
  make_side_with(loop, &a, "a", 0, &quick, &pa);
  make_side(frozen, &b, "b", 1, NULL, &pb);
  CHECK(ember_transport_add_peer(a.t, 1, "b", "127.0.0.1", pb) == 0);
  CHECK(ember_transport_add_peer(b.t, 0, "a", "127.0.0.1", pa) == 0);
  CHECK(ember_transport_watch_peer(a.t, 1, 0) == 0);
  CHECK(ember_transport_watch_peer(a.t, 7, 0) == EMBER_EINVAL);
  send_text(&a, 1, EMBER_MSG_REQUEST, 1, "hello");
  RUN_BOTH_UNTIL(loop, frozen, b.frames == 1);
  for (int i = 0; i < 200; i++) /* 1 s: two and a half windows */
    run_for(loop, 5);
  CHECK_EQ(a.lost, 0);
  CHECK(ember_transport_watch_peer(a.t, 1, 1) == 0);
  for (int i = 0; i < 300 && a.lost == 0; i++)
    run_for(loop, 5);
  CHECK_EQ(a.lost, 1);
  CHECK(strstr(a.lost_why, "no heartbeat from worker 'b'") != NULL);
  ember_transport_close(b.t);
  CHECK(ember_loop_close(frozen) == 0);
  ember_transport_close(a.t);
  CHECK(ember_loop_close(loop) == 0);
  CHECK_EQ(ember_future_live_count(), 0);
}

static void test_heartbeat_finds_a_silent_peer(void) {
  ember_loop_t *loop, *frozen;
  side_t a, b;
  int pa, pb;
  side_opts_t quick = {NULL, NULL, 100, 600};
  uint64_t start;
  double took;
  ember_transport_stats_t stats;
  CHECK(ember_loop_new(&loop) == 0);
  CHECK(ember_loop_new(&frozen) == 0);
  make_side_with(loop, &a, "a", 0, &quick, &pa);
  make_side(frozen, &b, "b", 1, NULL, &pb);
  CHECK(ember_transport_add_peer(a.t, 1, "b", "127.0.0.1", pb) == 0);
  CHECK(ember_transport_add_peer(b.t, 0, "a", "127.0.0.1", pa) == 0);
  send_text(&a, 1, EMBER_MSG_REQUEST, 1, "hello");
  RUN_BOTH_UNTIL(loop, frozen, b.frames == 1);
  send_text(&b, 0, EMBER_MSG_RESPONSE, 1, "last words");
  RUN_BOTH_UNTIL(loop, frozen, a.frames == 1);
  /* Only a's loop runs from now on. */
  start = uv_hrtime();
  for (int i = 0; i < 300 && a.lost == 0; i++)
    run_for(loop, 5);
  took = seconds_since(start);
  CHECK_EQ(a.lost, 1);
  CHECK_EQ(a.lost_code, EMBER_EPEERLOST);
  CHECK(strstr(a.lost_why, "no heartbeat from worker 'b'") != NULL);
  CHECK(strstr(a.lost_why, "heartbeat window") != NULL);
  printf("# silent peer found after %.3f s (window 0.6 s)\n", took);
  CHECK(took >= 0.55 && took <= 0.6 + 0.5);
  ember_transport_stats(a.t, &stats);
  CHECK(stats.heartbeats_sent >= 3);
  /* A call to it now fails at once. */
  CHECK(ember_transport_send(a.t, 1, EMBER_MSG_REQUEST, 0, 2,
                             &(ember_wire_msg_t){0}) == EMBER_EPEERLOST);
  ember_transport_close(b.t);
  CHECK(ember_loop_close(frozen) == 0);
  ember_transport_close(a.t);
  CHECK(ember_loop_close(loop) == 0);
  CHECK_EQ(ember_future_live_count(), 0);
}

/* Heartbeats keep an idle connection alive over several windows, in both
** directions; a loop that stalls for longer than the window does not take
** its peers for lost. */
static void test_idle_connection_is_not_lost(void) {
  ember_loop_t *loop;
  side_t a, b;
  int pa, pb;
  side_opts_t quick = {NULL, NULL, 50, 250};
  ember_transport_stats_t sa, sb;
  ember_peer_stats_t ps;
  CHECK(ember_loop_new(&loop) == 0);
  make_side_with(loop, &a, "a", 0, &quick, &pa);
  make_side_with(loop, &b, "b", 1, &quick, &pb);
  CHECK(ember_transport_add_peer(a.t, 1, "b", "127.0.0.1", pb) == 0);
  CHECK(ember_transport_add_peer(b.t, 0, "a", "127.0.0.1", pa) == 0);
  send_text(&a, 1, EMBER_MSG_REQUEST, 1, "hello");
  RUN_UNTIL(loop, b.frames == 1);
  run_for(loop, 1500); /* six windows */
  CHECK_EQ(a.lost + b.lost, 0);
  ember_transport_stats(a.t, &sa);
  ember_transport_stats(b.t, &sb);
  CHECK(sa.heartbeats_sent >= 10 && sb.heartbeats_sent >= 10);
  CHECK(sa.heartbeats_received >= 10 && sb.heartbeats_received >= 10);
  CHECK(ember_transport_peer_stats(a.t, 1, &ps) == 0);
  CHECK_EQ(ps.heartbeats_in, sa.heartbeats_received);
  CHECK(ps.connected);
  /* Nobody runs the loop for three windows (a process stopped and resumed):
  ** the bytes wait in the sockets, and nobody is lost for it. */
  uv_sleep(800);
  run_for(loop, 300);
  CHECK_EQ(a.lost + b.lost, 0);
  send_text(&b, 0, EMBER_MSG_REQUEST, 2, "still here");
  RUN_UNTIL(loop, a.frames == 1);
  close_all(loop, &a, &b);
}

static void test_bad_liveness_options(void) {
  ember_loop_t *loop;
  side_t a;
  ember_transport_opts_t opts;
  ember_transport_callbacks_t cb = {&a, on_frame, on_lost, on_unknown};
  ember_transport_t *t = (ember_transport_t *)1;
  CHECK(ember_loop_new(&loop) == 0);
  memset(&opts, 0, sizeof(opts));
  opts.name = "a";
  ember_wire_default_limits(&opts.limits);
  opts.heartbeat_interval_ms = 500;
  opts.heartbeat_window_ms = 500;
  CHECK(ember_transport_new(loop, &opts, &cb, &t) == EMBER_EINVAL);
  CHECK(t == NULL);
  CHECK(strstr(ember_wire_error(), "below the heartbeat window") != NULL);
  opts.heartbeat_interval_ms = 0;
  opts.faults = "drop:request:1,drop:nothing:2";
  CHECK(ember_transport_new(loop, &opts, &cb, &t) == EMBER_EINVAL);
  CHECK(strstr(ember_wire_error(), "'drop:nothing:2'") != NULL);
  CHECK(ember_loop_close(loop) == 0);
}

static void test_faults_drop_and_delay(void) {
  ember_loop_t *loop;
  side_t a, b;
  int pa, pb;
  side_opts_t lossy = {NULL, "drop:request:2,delay:response:150", 0, 0};
  ember_transport_stats_t stats;
  uint64_t start;
  double took;
  CHECK(ember_loop_new(&loop) == 0);
  make_side_with(loop, &a, "a", 0, &lossy, &pa);
  make_side(loop, &b, "b", 1, NULL, &pb);
  CHECK(ember_transport_add_peer(a.t, 1, "b", "127.0.0.1", pb) == 0);
  CHECK(ember_transport_add_peer(b.t, 0, "a", "127.0.0.1", pa) == 0);
  /* The first two requests are lost on the wire: sending them succeeds. */
  send_text(&a, 1, EMBER_MSG_REQUEST, 1, "one");
  send_text(&a, 1, EMBER_MSG_REQUEST, 2, "two");
  send_text(&a, 1, EMBER_MSG_REQUEST, 3, "three");
  RUN_UNTIL(loop, b.frames == 1);
  run_for(loop, 50);
  CHECK_EQ(b.frames, 1);
  CHECK_EQ(b.last_id, 3);
  /* Every response waits 150 ms; other kinds do not. */
  start = uv_hrtime();
  send_text(&a, 1, EMBER_MSG_RESPONSE, 4, "late");
  send_text(&a, 1, EMBER_MSG_REQUEST, 5, "prompt");
  RUN_UNTIL(loop, b.frames == 2);
  CHECK_EQ(b.last_id, 5);
  CHECK(ember_transport_unsent_bytes(a.t) > 0); /* the response is held */
  RUN_UNTIL(loop, b.frames == 3);
  took = seconds_since(start);
  CHECK_EQ(b.last_id, 4);
  CHECK(strcmp(b.last_body + 1, "late") == 0);
  CHECK(took >= 0.14);
  ember_transport_stats(a.t, &stats);
  CHECK_EQ(stats.faults_dropped, 2);
  CHECK_EQ(stats.faults_delayed, 1);
  /* A held frame is dropped with the transport. */
  send_text(&a, 1, EMBER_MSG_RESPONSE, 6, "never");
  CHECK_EQ(a.lost + b.lost, 0);
  close_all(loop, &a, &b);
}

/* --- stderr, where the transport says why it closed a connection ---------- */

/*
** A HELLO whose 5-byte body declares an array of 2^32-1 elements (msgpack-c
** would allocate 96 GiB of objects for it) is refused by the count check
** before anything is parsed; the log names the count, and b goes on serving.
*/
static void test_hello_with_a_huge_count_is_refused(void) {
  ember_loop_t *loop;
  side_t a, b;
  int pa, pb;
  check_capture_t capture;
  char log[2048];
  char frame[EMBER_WIRE_HEADER_SIZE + 5];
  ember_frame_header_t h = {EMBER_WIRE_VERSION, EMBER_MSG_HELLO, 0, 0, 5, 0};
  CHECK(ember_loop_new(&loop) == 0);
  make_side(loop, &a, "a", 0, NULL, &pa);
  make_side(loop, &b, "b", 1, NULL, &pb);
  CHECK(ember_transport_add_peer(a.t, 1, "b", "127.0.0.1", pb) == 0);
  CHECK(ember_transport_add_peer(b.t, 0, "a", "127.0.0.1", pa) == 0);
  ember_wire_pack_header(&h, (uint8_t *)frame);
  memcpy(frame + EMBER_WIRE_HEADER_SIZE, "\xdd\xff\xff\xff\xff", 5);

  check_capture_begin(&capture);
  send_as_stranger(loop, pb, frame, sizeof(frame));
  check_capture_end(&capture, log, sizeof(log));
  CHECK(strstr(log, "closing the connection with 127.0.0.1:") != NULL);
  CHECK(strstr(log, "bad handshake") != NULL);
  CHECK(strstr(log, "array of 4294967295 elements") != NULL);
  CHECK_EQ(b.unknown, 0);

  /* The same count inside a well-formed HELLO's array. */
  h.body_len = 7;
  ember_wire_pack_header(&h, (uint8_t *)frame);
  {
    char hello[EMBER_WIRE_HEADER_SIZE + 7];
    memcpy(hello, frame, EMBER_WIRE_HEADER_SIZE);
    memcpy(hello + EMBER_WIRE_HEADER_SIZE, "\x93\xc0\xdd\xff\xff\xff\xff",
           7);
    check_capture_begin(&capture);
    send_as_stranger(loop, pb, hello, sizeof(hello));
    check_capture_end(&capture, log, sizeof(log));
    CHECK(strstr(log, "array of 4294967295 elements at depth 2") != NULL);
  }

  send_text(&a, 1, EMBER_MSG_REQUEST, 1, "still there?");
  RUN_UNTIL(loop, b.frames == 1);
  CHECK(strcmp(b.last_body + 1, "still there?") == 0);
  CHECK_EQ(a.lost + b.lost, 0);
  close_all(loop, &a, &b);
}

static void test_goodbye_is_resent_until_acknowledged(void) {
  ember_loop_t *loop;
  side_t a, b;
  int pa, pb;
  side_opts_t lossy = {NULL, "drop:goodbye:1", 0, 0};
  ember_transport_stats_t stats;
  ember_peer_stats_t ps;
  ember_future_t *done;
  uint64_t start;
  CHECK(ember_loop_new(&loop) == 0);
  make_side_with(loop, &a, "a", 0, &lossy, &pa);
  make_side(loop, &b, "b", 1, NULL, &pb);
  CHECK(ember_transport_add_peer(a.t, 1, "b", "127.0.0.1", pb) == 0);
  CHECK(ember_transport_add_peer(b.t, 0, "a", "127.0.0.1", pa) == 0);
  send_text(&a, 1, EMBER_MSG_REQUEST, 1, "hello");
  RUN_UNTIL(loop, b.frames == 1);
  start = uv_hrtime();
  ember_transport_say_goodbye(a.t);
  done = ember_transport_goodbyes_done(a.t);
  CHECK(done != NULL);
  CHECK_EQ(ember_future_state(done), EMBER_FUTURE_PENDING);
  CHECK(ember_loop_run_until(loop, done) == 0);
  ember_future_release(done);
  /* Acknowledged (not given up on after 2 s): the second one arrived. */
  CHECK(seconds_since(start) < 1.5);
  ember_transport_stats(a.t, &stats);
  CHECK_EQ(stats.faults_dropped, 1);
  CHECK(stats.goodbyes_resent >= 1);
  CHECK(ember_transport_peer_stats(b.t, 0, &ps) == 0);
  CHECK(ps.left);
  /* Saying it again is answered again and changes nothing. */
  ember_transport_say_goodbye(a.t);
  done = ember_transport_goodbyes_done(a.t);
  CHECK(ember_loop_run_until(loop, done) == 0);
  ember_future_release(done);
  CHECK_EQ(a.lost + b.lost, 0);
  /* a closes: b hears it shut down, not that it was lost. */
  ember_transport_close(a.t);
  RUN_UNTIL(loop, b.lost == 1);
  CHECK_EQ(b.lost_code, EMBER_ESHUTDOWN);
  ember_transport_close(b.t);
  CHECK(ember_loop_close(loop) == 0);
  CHECK_EQ(ember_future_live_count(), 0);
}

/* --- The agent ---------------------------------------------------------------- */

typedef struct {
  ember_agent_t *agent;
  int requests;
  int answer; /* answer requests at once */
} server_t;

static void on_request(void *user, int peer, ember_frame_t *frame) {
  server_t *server = user;
  ember_wire_msg_t msg;
  server->requests++;
  if (server->answer) {
    ember_wire_msg_init(&msg);
    CHECK(ember_wire_msg_write(&msg, frame->body, frame->header.body_len) == 0);
    ember_agent_respond(server->agent, peer, frame->header.request_id, 0, &msg);
  }
  ember_frame_free(frame);
}

static void make_agent_with(ember_loop_t *loop, server_t *server,
                            const char *name, int id, const char *faults,
                            int *port) {
  ember_transport_opts_t opts;
  ember_agent_callbacks_t cb;
  memset(&cb, 0, sizeof(cb));
  memset(&opts, 0, sizeof(opts));
  opts.busy_poll_us = 100;
  cb.user = server;
  cb.on_request = on_request;
  opts.name = name;
  opts.id = id;
  opts.secret = NULL;
  opts.faults = faults;
  ember_wire_default_limits(&opts.limits);
  CHECK(ember_agent_new(loop, &opts, &cb, &server->agent) == 0);
  CHECK(ember_transport_listen(ember_agent_transport(server->agent),
                               "127.0.0.1", 0, port) == 0);
}

static void make_agent(ember_loop_t *loop, server_t *server, const char *name,
                       int id, int *port) {
  make_agent_with(loop, server, name, id, NULL, port);
}

/* A call whose request is lost is never sent again: it times out, and the
** function did not run. The next call goes through. */
static void test_agent_never_retries_calls(void) {
  ember_loop_t *loop;
  server_t a = {0}, b = {0};
  int pa, pb;
  ember_wire_msg_t msg;
  ember_future_t *lost, *ok;
  const ember_payload_type_t *type;
  CHECK(ember_loop_new(&loop) == 0);
  make_agent_with(loop, &a, "a", 0, "drop:request:1", &pa);
  make_agent(loop, &b, "b", 1, &pb);
  CHECK(ember_transport_add_peer(ember_agent_transport(a.agent), 1, "b",
                                 "127.0.0.1", pb) == 0);
  CHECK(ember_transport_add_peer(ember_agent_transport(b.agent), 0, "a",
                                 "127.0.0.1", pa) == 0);
  b.answer = 1;
  ember_wire_msg_init(&msg);
  CHECK(ember_wire_msg_write(&msg, "\xc0", 1) == 0);
  CHECK(ember_agent_call(a.agent, 1, &msg, 300, &lost) == 0);
  CHECK(ember_loop_run_until(loop, lost) == 0);
  CHECK_EQ(ember_future_error_code(lost), UV_ETIMEDOUT);
  CHECK(strstr(ember_future_payload(lost, &type), "worker 'b'") != NULL);
  ember_future_release(lost);
  CHECK_EQ(b.requests, 0);
  ember_wire_msg_init(&msg);
  CHECK(ember_wire_msg_write(&msg, "\x07", 1) == 0);
  CHECK(ember_agent_call(a.agent, 1, &msg, 2000, &ok) == 0);
  CHECK(ember_loop_run_until(loop, ok) == 0);
  CHECK_EQ(ember_future_state(ok), EMBER_FUTURE_DONE);
  ember_future_release(ok);
  CHECK_EQ(b.requests, 1);
  ember_agent_close(a.agent);
  ember_agent_close(b.agent);
  CHECK(ember_loop_close(loop) == 0);
  CHECK_EQ(ember_future_live_count(), 0);
}

static void test_agent_calls_and_timeouts(void) {
  ember_loop_t *loop;
  server_t a = {0}, b = {0};
  int pa, pb;
  ember_wire_msg_t msg;
  ember_future_t *ok, *slow;
  const ember_payload_type_t *type;
  ember_agent_stats_t stats;

  CHECK(ember_loop_new(&loop) == 0);
  make_agent(loop, &a, "a", 0, &pa);
  make_agent(loop, &b, "b", 1, &pb);
  CHECK(ember_transport_add_peer(ember_agent_transport(a.agent), 1, "b",
                                 "127.0.0.1", pb) == 0);
  CHECK(ember_transport_add_peer(ember_agent_transport(b.agent), 0, "a",
                                 "127.0.0.1", pa) == 0);
  b.answer = 1;
  ember_wire_msg_init(&msg);
  CHECK(ember_wire_msg_write(&msg, "\x2a", 1) == 0); /* 42 */
  CHECK(ember_agent_call(a.agent, 1, &msg, 1000, &ok) == 0);
  CHECK(ember_loop_run_until(loop, ok) == 0);
  CHECK_EQ(ember_future_state(ok), EMBER_FUTURE_DONE);
  ember_reply_t *reply = ember_future_payload(ok, &type);
  CHECK(type == &ember_reply_payload);
  CHECK_EQ((uint8_t)reply->frame.body[0], 0x2a);
  ember_future_release(ok);

  b.answer = 0; /* b sits on the next request: it times out */
  ember_wire_msg_init(&msg);
  CHECK(ember_wire_msg_write(&msg, "\xc0", 1) == 0);
  CHECK(ember_agent_call(a.agent, 1, &msg, 50, &slow) == 0);
  CHECK(ember_loop_run_until(loop, slow) == 0);
  CHECK_EQ(ember_future_error_code(slow), UV_ETIMEDOUT);
  CHECK(strstr(ember_future_payload(slow, &type), "worker 'b'") != NULL);
  ember_future_release(slow);
  ember_agent_stats(a.agent, &stats);
  CHECK_EQ(stats.timeouts, 1);
  CHECK_EQ(stats.pending, 0);

  /* Closing fails what is pending. */
  ember_wire_msg_init(&msg);
  CHECK(ember_wire_msg_write(&msg, "\xc0", 1) == 0);
  CHECK(ember_agent_call(a.agent, 1, &msg, 0, &slow) == 0);
  ember_agent_close(a.agent);
  CHECK_EQ(ember_future_error_code(slow), EMBER_ESHUTDOWN);
  ember_future_release(slow);
  ember_agent_close(b.agent);
  CHECK(ember_loop_close(loop) == 0);
  CHECK_EQ(ember_future_live_count(), 0);
}

CHECK_MAIN(CHECK_TEST(test_frames_both_ways),
           CHECK_TEST(test_undeclared_peers_are_parked),
           CHECK_TEST(test_tensor_payload),
           CHECK_TEST(test_wrong_secret), CHECK_TEST(test_secret_matches),
           CHECK_TEST(test_bad_input_keeps_serving),
           CHECK_TEST(test_hello_with_a_huge_count_is_refused),
           CHECK_TEST(test_agent_calls_and_timeouts),
           CHECK_TEST(test_heartbeat_finds_a_silent_peer),
           CHECK_TEST(test_unwatched_peer_is_not_lost),
           CHECK_TEST(test_idle_connection_is_not_lost),
           CHECK_TEST(test_bad_liveness_options),
           CHECK_TEST(test_faults_drop_and_delay),
           CHECK_TEST(test_goodbye_is_resent_until_acknowledged),
           CHECK_TEST(test_agent_never_retries_calls))
