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

typedef struct {
  ember_transport_t *t;
  int frames;
  int lost;
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
  (void)code;
  side->lost++;
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

static void make_side(ember_loop_t *loop, side_t *side, const char *name,
                      int id, const char *secret, int *port) {
  ember_transport_opts_t opts;
  ember_transport_callbacks_t cb = {side, on_frame, on_lost, on_unknown};
  memset(side, 0, sizeof(*side));
  memset(&opts, 0, sizeof(opts));
  /* Every transport test runs with busy polling on, as workers do: the loop
  ** must still end when nothing is left, and deadlocks still be reported. */
  opts.busy_poll_us = 100;
  opts.name = name;
  opts.id = id;
  opts.secret = secret;
  ember_wire_default_limits(&opts.limits);
  CHECK(ember_transport_new(loop, &opts, &cb, &side->t) == 0);
  CHECK(ember_transport_listen(side->t, "127.0.0.1", 0, port) == 0);
  CHECK(*port > 0);
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

/* Runs the loop until `cond` holds or ~2 s pass. */
#define RUN_UNTIL(loop, cond)                                                  \
  do {                                                                         \
    ember_future_t *tick_;                                                     \
    for (int i_ = 0; i_ < 400 && !(cond); i_++) {                              \
      CHECK(ember_loop_timer((loop), 5, &tick_) == 0);                         \
      ember_loop_run_until((loop), tick_);                                     \
      ember_future_release(tick_);                                             \
    }                                                                          \
    CHECK(cond);                                                               \
  } while (0)

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

/* --- stderr, where the transport says why it closed a connection ---------- */

typedef struct {
  int saved;
  FILE *file;
} capture_t;

static void capture_stderr(capture_t *c) {
  fflush(stderr);
  c->file = tmpfile();
  CHECK(c->file != NULL);
  c->saved = dup(2);
  CHECK(c->saved >= 0 && dup2(fileno(c->file), 2) >= 0);
}

/* Restores stderr and returns what was written to it (echoed there too). */
static void end_capture(capture_t *c, char *out, size_t size) {
  size_t n;
  fflush(stderr);
  CHECK(dup2(c->saved, 2) >= 0);
  close(c->saved);
  rewind(c->file);
  n = fread(out, 1, size - 1, c->file);
  out[n] = '\0';
  fclose(c->file);
  fputs(out, stderr);
}

/*
** A HELLO whose 5-byte body declares an array of 2^32-1 elements (msgpack-c
** would allocate 96 GiB of objects for it) is refused by the count check
** before anything is parsed; the log names the count, and b goes on serving.
*/
static void test_hello_with_a_huge_count_is_refused(void) {
  ember_loop_t *loop;
  side_t a, b;
  int pa, pb;
  capture_t capture;
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

  capture_stderr(&capture);
  send_as_stranger(loop, pb, frame, sizeof(frame));
  end_capture(&capture, log, sizeof(log));
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
    capture_stderr(&capture);
    send_as_stranger(loop, pb, hello, sizeof(hello));
    end_capture(&capture, log, sizeof(log));
    CHECK(strstr(log, "array of 4294967295 elements at depth 2") != NULL);
  }

  send_text(&a, 1, EMBER_MSG_REQUEST, 1, "still there?");
  RUN_UNTIL(loop, b.frames == 1);
  CHECK(strcmp(b.last_body + 1, "still there?") == 0);
  CHECK_EQ(a.lost + b.lost, 0);
  close_all(loop, &a, &b);
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

static void make_agent(ember_loop_t *loop, server_t *server, const char *name,
                       int id, int *port) {
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
  ember_wire_default_limits(&opts.limits);
  CHECK(ember_agent_new(loop, &opts, &cb, &server->agent) == 0);
  CHECK(ember_transport_listen(ember_agent_transport(server->agent),
                               "127.0.0.1", 0, port) == 0);
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
           CHECK_TEST(test_agent_calls_and_timeouts))
