/*
** libFuzzer target: the transport's handshake and the frames after it
** (core/transport.c), on a real connection.
**
** Input: one byte of mode, then the bytes the far side sends.
**   mode bit 0: the transport has a secret (then the fuzzer cannot prove it,
**               and every input must be refused during the handshake);
**   mode bit 1: the transport connects (it sends HELLO to the fuzzer, whose
**               bytes answer it: WELCOME, then frames); otherwise it accepts
**               (the fuzzer's bytes are HELLO, AUTH, then frames).
**
** Per input: a fresh ember loop and transport "w0" (id 0) with peer "w1"
** (id 1) declared, a plain socket on the far side that writes the bytes,
** and the loop turns until the transport dropped the connection or read
** everything (then the socket resets it: see fuzz_socket_feed); then the
** transport and the loop are closed. Frames that get
** through are freed by on_frame. No crash, hang or leak is allowed.
**
** Seeds: spec/fuzz/corpus/handshake (real exchanges, made by
** make_corpus.lua).
*/
#include <stdint.h>

#include "error.h"
#include "fuzz_common.h"
#include "future.h"
#include "transport.h"

#define MAX_TURNS 100000
#define MODE_SECRET 1u
#define MODE_CONNECT 2u

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  fuzz_quiet();
  return 0;
}

static void on_frame(void *user, int peer, ember_frame_t *frame) {
  (void)user;
  (void)peer;
  ember_frame_free(frame);
}

static void on_peer_lost(void *user, int peer, int code, const char *why) {
  (void)user;
  (void)peer;
  (void)code;
  (void)why;
}

static ember_transport_t *new_transport(ember_loop_t *loop, int secret) {
  ember_transport_opts_t opts;
  ember_transport_callbacks_t callbacks;
  ember_transport_t *t;
  memset(&opts, 0, sizeof opts);
  memset(&callbacks, 0, sizeof callbacks);
  opts.name = "w0";
  opts.id = 0;
  opts.secret = secret ? "fuzz secret" : NULL;
  ember_wire_default_limits(&opts.limits);
  callbacks.on_frame = on_frame;
  callbacks.on_peer_lost = on_peer_lost;
  FUZZ_ASSERT(ember_transport_new(loop, &opts, &callbacks, &t) == 0,
              "cannot make a transport: %s", ember_wire_error());
  return t;
}

/* The transport accepts; the fuzzer's socket connects to it. */
static int accept_side(ember_loop_t *loop, ember_transport_t *t) {
  int port;
  FUZZ_ASSERT(ember_transport_listen(t, "127.0.0.1", 0, &port) == 0,
              "cannot listen: %s", ember_wire_error());
  /* Declared, but never dialled: nothing is sent to it. */
  FUZZ_ASSERT(ember_transport_add_peer(t, 1, "w1", "127.0.0.1", 1) == 0,
              "add_peer");
  (void)loop;
  return fuzz_socket_connect(port);
}

/* The transport connects (it has a request to send); the fuzzer's listening
** socket takes the connection. */
static int connect_side(ember_loop_t *loop, ember_transport_t *t) {
  int port, fd = -1;
  int listener = fuzz_socket_listen(&port);
  FUZZ_ASSERT(ember_transport_add_peer(t, 1, "w1", "127.0.0.1", port) == 0,
              "add_peer");
  ember_wire_msg_t msg;
  ember_wire_msg_init(&msg);
  FUZZ_ASSERT(ember_wire_msg_write(&msg, "\xc0", 1) == 0, "msg");
  FUZZ_ASSERT(ember_transport_send(t, 1, EMBER_MSG_REQUEST, 0, 1, &msg) == 0,
              "send: %s", ember_wire_error());
  for (int turn = 0; turn < MAX_TURNS && fd < 0; turn++) {
    uv_run(ember_loop_uv(loop), UV_RUN_NOWAIT);
    fd = accept(listener, NULL, NULL);
  }
  FUZZ_ASSERT(fd >= 0, "the transport did not connect: %s", strerror(errno));
  close(listener);
  return fd;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  unsigned mode = data[0];
  ember_loop_t *loop;
  fuzz_keepalive_t keepalive;

  FUZZ_ASSERT(ember_loop_new(&loop) == 0, "cannot make a loop");
  fuzz_keepalive_start(loop, &keepalive);
  ember_transport_t *t = new_transport(loop, (mode & MODE_SECRET) != 0);
  int fd = (mode & MODE_CONNECT) ? connect_side(loop, t) : accept_side(loop, t);
  fuzz_socket_feed(loop, fd, data + 1, size - 1, MAX_TURNS);
  ember_transport_close(t);
  fuzz_keepalive_stop(&keepalive);
  FUZZ_ASSERT(ember_loop_close(loop) == 0,
              "a handle was left open after the transport closed");
  FUZZ_ASSERT(ember_future_live_count() == 0, "a future was leaked");
  return 0;
}
