/*
** Strangers against a world with a secret: a peer that cannot prove the
** secret, a recorded handshake replayed on a new connection, and a frame
** before the handshake are all refused; nothing they send is delivered, and
** the real peers keep talking. Raw sockets play the stranger; they are
** non-blocking and pumped between turns of the loop, all on one thread.
*/
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <msgpack.h>
#include <netinet/in.h>
#include <string.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "error.h"
#include "run_until.h"
#include "transport.h"

#define SECRET "the world's secret"

typedef struct {
  ember_transport_t *t;
  int frames;
  int lost;
} side_t;

static void on_frame(void *user, int peer, ember_frame_t *frame) {
  side_t *side = user;
  (void)peer;
  side->frames++;
  ember_frame_free(frame);
}

static void on_lost(void *user, int peer, int code, const char *why) {
  side_t *side = user;
  (void)peer;
  (void)code;
  (void)why;
  side->lost++;
}

static void make_side(ember_loop_t *loop, side_t *side, const char *name,
                      int id, int *port) {
  ember_transport_opts_t opts;
  ember_transport_callbacks_t cb = {side, on_frame, on_lost, NULL};
  memset(side, 0, sizeof(*side));
  memset(&opts, 0, sizeof(opts));
  opts.name = name;
  opts.id = id;
  opts.secret = SECRET;
  ember_wire_default_limits(&opts.limits);
  CHECK(ember_transport_new(loop, &opts, &cb, &side->t) == 0);
  CHECK(ember_transport_listen(side->t, "127.0.0.1", 0, port) == 0);
}

/* --- Raw sockets ------------------------------------------------------------ */

static void set_nonblocking(int fd) {
  CHECK(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) == 0);
}

static struct sockaddr_in loopback(int port) {
  struct sockaddr_in addr;
  memset(&addr, 0, sizeof(addr));
  addr.sin_family = AF_INET;
  addr.sin_port = htons((uint16_t)port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return addr;
}

/* A connected non-blocking socket (the connect completes while the loop
** turns: loopback connects are accepted by the kernel at once). */
static int connect_raw(int port) {
  struct sockaddr_in addr = loopback(port);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  CHECK(fd >= 0);
  CHECK(connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0);
  set_nonblocking(fd);
  return fd;
}

static void write_all(int fd, const void *data, size_t len) {
  CHECK_EQ(write(fd, data, len), (long long)len);
}

/* Reads what is there; 1 once the other side hung up (EOF or reset). */
static int drain_hung_up(int fd) {
  char scratch[4096];
  for (;;) {
    ssize_t n = recv(fd, scratch, sizeof(scratch), MSG_DONTWAIT);
    if (n > 0)
      continue;
    if (n == 0)
      return 1;
    return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : 1;
  }
}

/* --- Frames a stranger writes by hand ------------------------------------------ */

typedef struct {
  char bytes[1024];
  size_t len;
} frame_buf_t;

static int frame_buf_write(void *data, const char *buf, size_t len) {
  frame_buf_t *f = data;
  CHECK(f->len + len <= sizeof(f->bytes));
  memcpy(f->bytes + f->len, buf, len);
  f->len += len;
  return 0;
}

/* Appends a frame of `kind` whose body the callback packs. */
static void append_frame(frame_buf_t *out, int kind,
                         void (*pack)(msgpack_packer *, const void *),
                         const void *arg) {
  frame_buf_t body = {{0}, 0};
  msgpack_packer pk;
  uint8_t header[EMBER_WIRE_HEADER_SIZE];
  ember_frame_header_t h;
  msgpack_packer_init(&pk, &body, frame_buf_write);
  pack(&pk, arg);
  memset(&h, 0, sizeof(h));
  h.version = EMBER_WIRE_VERSION;
  h.kind = (uint8_t)kind;
  h.request_id = 7;
  h.body_len = (uint32_t)body.len;
  ember_wire_pack_header(&h, header);
  frame_buf_write(out, (const char *)header, sizeof(header));
  frame_buf_write(out, body.bytes, body.len);
}

static void pack_str(msgpack_packer *pk, const char *s) {
  msgpack_pack_str(pk, strlen(s));
  msgpack_pack_str_body(pk, s, strlen(s));
}

/* HELLO [name, id, nonce] claiming to be worker "d", id 3: declared by a,
** never connected (so a's answer is a full WELCOME, not "duplicate"). */
static void pack_hello(msgpack_packer *pk, const void *arg) {
  uint8_t nonce[32] = {1, 2, 3};
  (void)arg;
  msgpack_pack_array(pk, 3);
  pack_str(pk, "d");
  msgpack_pack_int64(pk, 3);
  msgpack_pack_bin(pk, sizeof(nonce));
  msgpack_pack_bin_body(pk, nonce, sizeof(nonce));
}

/* AUTH [proof]: `arg` is the proof's length (bytes of zeros). */
static void pack_auth(msgpack_packer *pk, const void *arg) {
  uint8_t proof[64] = {0};
  size_t len = *(const size_t *)arg;
  msgpack_pack_array(pk, 1);
  msgpack_pack_bin(pk, len);
  msgpack_pack_bin_body(pk, proof, len);
}

static void pack_text(msgpack_packer *pk, const void *arg) {
  pack_str(pk, arg);
}

/* Two real workers with the secret, already talking. */
static void start_world(ember_loop_t **loop, side_t *a, side_t *b, int *pa,
                        int *pb) {
  ember_wire_msg_t msg;
  CHECK(ember_loop_new(loop) == 0);
  make_side(*loop, a, "a", 0, pa);
  make_side(*loop, b, "b", 1, pb);
  CHECK(ember_transport_add_peer(a->t, 1, "b", "127.0.0.1", *pb) == 0);
  CHECK(ember_transport_add_peer(b->t, 0, "a", "127.0.0.1", *pa) == 0);
  /* d is declared but never comes: strangers pretend to be it. */
  CHECK(ember_transport_add_peer(a->t, 3, "d", "127.0.0.1", 9) == 0);
  ember_wire_msg_init(&msg);
  CHECK(ember_wire_msg_write(&msg, "\xa2hi", 3) == 0);
  CHECK(ember_transport_send(b->t, 0, EMBER_MSG_REQUEST, 0, 1, &msg) == 0);
  RUN_UNTIL(*loop, a->frames == 1);
}

/* The real peers still talk after the stranger, and nobody was lost. */
static void check_world_still_talks(ember_loop_t *loop, side_t *a, side_t *b,
                                    int frames_before) {
  ember_wire_msg_t msg;
  ember_wire_msg_init(&msg);
  CHECK(ember_wire_msg_write(&msg, "\xa5" "after", 6) == 0);
  CHECK(ember_transport_send(b->t, 0, EMBER_MSG_REQUEST, 0, 2, &msg) == 0);
  RUN_UNTIL(loop, a->frames == frames_before + 1);
  CHECK_EQ(a->lost + b->lost, 0);
}

static void stop_world(ember_loop_t *loop, side_t *a, side_t *b) {
  ember_transport_close(a->t);
  ember_transport_close(b->t);
  CHECK(ember_loop_close(loop) == 0);
}

/* --- The tests ---------------------------------------------------------------- */

/* A stranger that knows a worker's name but not the secret: its AUTH (no
** proof, then a forged one) is refused, and its request never arrives. */
static void test_unauthenticated_peer_refused(void) {
  static const size_t proof_lengths[] = {0, 32};
  static const char *const reasons[] = {"sent no proof of the secret",
                                        "wrong proof of the secret"};
  ember_loop_t *loop;
  side_t a, b;
  int pa, pb;
  start_world(&loop, &a, &b, &pa, &pb);
  for (size_t i = 0; i < 2; i++) {
    frame_buf_t out = {{0}, 0};
    check_capture_t capture;
    char log[4096];
    int fd = connect_raw(pa);
    append_frame(&out, EMBER_MSG_HELLO, pack_hello, NULL);
    append_frame(&out, EMBER_MSG_AUTH, pack_auth, &proof_lengths[i]);
    append_frame(&out, EMBER_MSG_REQUEST, pack_text, "let me in");
    check_capture_begin(&capture);
    write_all(fd, out.bytes, out.len);
    RUN_UNTIL(loop, drain_hung_up(fd));
    check_capture_end(&capture, log, sizeof(log));
    close(fd);
    CHECK(strstr(log, "'d' failed the handshake") != NULL);
    CHECK(strstr(log, reasons[i]) != NULL);
  }
  CHECK_EQ(a.frames, 1);
  check_world_still_talks(loop, &a, &b, 1);
  stop_world(loop, &a, &b);
}

/* A request before any handshake is refused, with or without a HELLO
** after it. */
static void test_frame_before_handshake_refused(void) {
  ember_loop_t *loop;
  side_t a, b;
  int pa, pb;
  frame_buf_t out = {{0}, 0};
  int fd;
  start_world(&loop, &a, &b, &pa, &pb);
  check_capture_t capture;
  char log[4096];
  fd = connect_raw(pa);
  append_frame(&out, EMBER_MSG_REQUEST, pack_text, "no hello");
  append_frame(&out, EMBER_MSG_HELLO, pack_hello, NULL);
  check_capture_begin(&capture);
  write_all(fd, out.bytes, out.len);
  RUN_UNTIL(loop, drain_hung_up(fd));
  check_capture_end(&capture, log, sizeof(log));
  close(fd);
  CHECK(strstr(log, "before the handshake") != NULL);
  CHECK_EQ(a.frames, 1);
  check_world_still_talks(loop, &a, &b, 1);
  stop_world(loop, &a, &b);
}

/* A proxy between c (connecting) and a records what c sends; the recording
** (a real, proven handshake and a request) is then replayed to a on a new
** connection. a's WELCOME carries a fresh nonce, so the old proof fails. */
typedef struct {
  int listener, from_c, to_a;
  frame_buf_t c_to_a;
  int relayed_to_c; /* bytes a sent back, relayed */
} proxy_t;

static void relay(int from, int to, frame_buf_t *record, int *count) {
  char buf[1024];
  ssize_t n;
  while ((n = recv(from, buf, sizeof(buf), MSG_DONTWAIT)) > 0) {
    write_all(to, buf, (size_t)n);
    if (record != NULL)
      frame_buf_write(record, buf, (size_t)n);
    if (count != NULL)
      *count += (int)n;
  }
}

static int pump(proxy_t *p, int a_port) {
  if (p->from_c < 0) {
    p->from_c = accept(p->listener, NULL, NULL);
    if (p->from_c < 0)
      return 0;
    set_nonblocking(p->from_c);
    p->to_a = connect_raw(a_port);
  }
  relay(p->from_c, p->to_a, &p->c_to_a, NULL);
  relay(p->to_a, p->from_c, NULL, &p->relayed_to_c);
  return 0;
}

static void test_replayed_handshake_refused(void) {
  ember_loop_t *loop;
  side_t a, b, c;
  int pa, pb, pc, proxy_port;
  proxy_t p = {-1, -1, -1, {{0}, 0}, 0};
  struct sockaddr_in addr = loopback(0);
  socklen_t addr_len = sizeof(addr);
  ember_wire_msg_t msg;
  int fd;

  start_world(&loop, &a, &b, &pa, &pb);
  /* c (id 2) reaches a only through the proxy. */
  p.listener = socket(AF_INET, SOCK_STREAM, 0);
  CHECK(bind(p.listener, (struct sockaddr *)&addr, sizeof(addr)) == 0);
  CHECK(listen(p.listener, 4) == 0);
  CHECK(getsockname(p.listener, (struct sockaddr *)&addr, &addr_len) == 0);
  proxy_port = ntohs(addr.sin_port);
  set_nonblocking(p.listener);
  make_side(loop, &c, "c", 2, &pc);
  CHECK(ember_transport_add_peer(c.t, 0, "a", "127.0.0.1", proxy_port) == 0);
  CHECK(ember_transport_add_peer(a.t, 2, "c", "127.0.0.1", pc) == 0);
  ember_wire_msg_init(&msg);
  CHECK(ember_wire_msg_write(&msg, "\xa4real", 5) == 0);
  CHECK(ember_transport_send(c.t, 0, EMBER_MSG_REQUEST, 0, 1, &msg) == 0);
  RUN_UNTIL(loop, pump(&p, pa) || a.frames == 2);
  CHECK(p.c_to_a.len > 0 && p.relayed_to_c > 0);

  /* The replay: same bytes, new connection, nothing of it is delivered. */
  fd = connect_raw(pa);
  write_all(fd, p.c_to_a.bytes, p.c_to_a.len);
  RUN_UNTIL(loop, drain_hung_up(fd));
  close(fd);
  CHECK_EQ(a.frames, 2);
  CHECK_EQ(c.lost, 0);
  check_world_still_talks(loop, &a, &b, 2);

  /* The same replay against a restarted a, which has no connection from c
  ** (so it answers with a full WELCOME): the recorded proof is refused. */
  {
    side_t a2;
    int pa2;
    check_capture_t capture;
  char log[4096];
    make_side(loop, &a2, "a", 0, &pa2);
    CHECK(ember_transport_add_peer(a2.t, 2, "c", "127.0.0.1", pc) == 0);
    fd = connect_raw(pa2);
    check_capture_begin(&capture);
    write_all(fd, p.c_to_a.bytes, p.c_to_a.len);
    RUN_UNTIL(loop, drain_hung_up(fd));
    check_capture_end(&capture, log, sizeof(log));
    close(fd);
    CHECK(strstr(log, "'c' failed the handshake: wrong proof") != NULL);
    CHECK_EQ(a2.frames, 0);
    ember_transport_close(a2.t);
  }

  close(p.from_c);
  close(p.to_a);
  close(p.listener);
  ember_transport_close(c.t);
  stop_world(loop, &a, &b);
}

CHECK_MAIN(CHECK_TEST(test_unauthenticated_peer_refused),
           CHECK_TEST(test_frame_before_handshake_refused),
           CHECK_TEST(test_replayed_handshake_refused))
