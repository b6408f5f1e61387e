/*
** libFuzzer target: the rendezvous store's server (core/store.c).
**
** Per input: a fresh ember loop and store server on 127.0.0.1 (port 0), a
** plain socket that writes the input as a client would (a stream of store
** frames: big-endian u32 length, msgpack array), the loop turns until the
** server closed the connection or read every byte, the socket resets the
** connection (see fuzz_socket_feed) and the loop turns until the server
** closed its end; then the server and the loop are closed. The server must
** answer or refuse every byte stream without crashing, hanging or leaking
** (LSan checks at exit).
**
** Seeds: spec/fuzz/corpus/store (real requests, made by make_corpus.lua).
*/
#include <stdint.h>

#include "error.h"
#include "fuzz_common.h"
#include "future.h"
#include "store.h"

#define MAX_TURNS 100000

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  fuzz_quiet();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ember_loop_t *loop;
  ember_store_server_t *server;
  fuzz_keepalive_t keepalive;

  FUZZ_ASSERT(ember_loop_new(&loop) == 0, "cannot make a loop");
  FUZZ_ASSERT(ember_store_server_start(loop, "127.0.0.1", 0, &server) == 0,
              "cannot start the store server");
  fuzz_keepalive_start(loop, &keepalive);
  int fd = fuzz_socket_connect(ember_store_server_port(server));
  fuzz_socket_feed(loop, fd, data, size, MAX_TURNS);
  fuzz_keepalive_stop(&keepalive);
  ember_store_server_close(server);
  FUZZ_ASSERT(ember_loop_close(loop) == 0,
              "a handle was left open after the server closed");
  FUZZ_ASSERT(ember_future_live_count() == 0, "a future was leaked");
  return 0;
}
