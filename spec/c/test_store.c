/*
** The rendezvous store: a server and its clients on one loop. Each test ends
** with the loop closing cleanly and no future left alive.
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "error.h"
#include "loop.h"
#include "store.h"

#define HOST "127.0.0.1"

typedef struct {
  ember_loop_t *loop;
  ember_store_server_t *server;
  int port;
} fixture_t;

static fixture_t setup(void) {
  fixture_t fx;
  CHECK_EQ(ember_loop_new(&fx.loop), 0);
  CHECK_EQ(ember_store_server_start(fx.loop, HOST, 0, &fx.server), 0);
  fx.port = ember_store_server_port(fx.server);
  CHECK(fx.port > 0);
  return fx;
}

static void teardown(fixture_t *fx) {
  if (fx->server != NULL)
    ember_store_server_close(fx->server);
  CHECK_EQ(ember_loop_close(fx->loop), 0);
  CHECK_EQ(ember_future_live_count(), 0);
}

/* Runs the loop until the future completes; returns it. */
static ember_future_t *await(ember_loop_t *loop, ember_future_t *future) {
  CHECK(future != NULL);
  CHECK_EQ(ember_loop_run_until(loop, future), 0);
  return future;
}

static void sleep_ms(ember_loop_t *loop, uint64_t ms) {
  ember_future_t *timer;
  CHECK_EQ(ember_loop_timer(loop, ms, &timer), 0);
  await(loop, timer);
  ember_future_release(timer);
}

static void *payload_of(ember_future_t *future,
                        const ember_payload_type_t *expected) {
  const ember_payload_type_t *type;
  void *data = ember_future_payload(future, &type);
  CHECK_EQ(ember_future_state(future), EMBER_FUTURE_DONE);
  CHECK(type == expected);
  return data;
}

/* The client a connect future completed with, retained for the caller. */
static ember_store_client_t *take_client(ember_future_t *future) {
  ember_store_client_t *client =
      payload_of(future, &ember_store_client_payload);
  ember_store_client_retain(client);
  ember_future_release(future);
  return client;
}

static ember_store_client_t *connect_client(fixture_t *fx) {
  ember_future_t *future = ember_store_connect(fx->loop, HOST, fx->port, 5000);
  return take_client(await(fx->loop, future));
}

/* Each `expect_*` waits for the op, checks its result and releases it. */
static void expect_true(ember_loop_t *loop, ember_future_t *future) {
  unsigned char *value =
      payload_of(await(loop, future), &ember_store_bool_payload);
  CHECK_EQ(*value, 1);
  ember_future_release(future);
}

static void expect_bool(ember_loop_t *loop, ember_future_t *future,
                        int expected) {
  unsigned char *value =
      payload_of(await(loop, future), &ember_store_bool_payload);
  CHECK_EQ(*value, expected);
  ember_future_release(future);
}

static void expect_bytes(ember_loop_t *loop, ember_future_t *future,
                         const char *expected) {
  ember_store_bytes_t *bytes =
      payload_of(await(loop, future), &ember_store_bytes_payload);
  CHECK_EQ(bytes->len, strlen(expected));
  CHECK(memcmp(bytes->data, expected, bytes->len) == 0);
  ember_future_release(future);
}

static void expect_int(ember_loop_t *loop, ember_future_t *future,
                       int64_t expected) {
  int64_t *value = payload_of(await(loop, future), &ember_store_int_payload);
  CHECK_EQ(*value, expected);
  ember_future_release(future);
}

/* Checks the failure's code and that its message contains each fragment. */
static void expect_error(ember_loop_t *loop, ember_future_t *future, int code,
                         const char *fragment, const char *other) {
  const ember_payload_type_t *type;
  const char *message;
  await(loop, future);
  CHECK_EQ(ember_future_state(future), EMBER_FUTURE_FAILED);
  CHECK_EQ(ember_future_error_code(future), code);
  message = ember_future_payload(future, &type);
  CHECK(type == &ember_message_payload);
  if (strstr(message, fragment) == NULL ||
      (other != NULL && strstr(message, other) == NULL)) {
    fprintf(stderr, "unexpected message: %s\n", message);
    CHECK(0);
  }
  ember_future_release(future);
}

/* --- Tests -------------------------------------------------------------------
 */

static void test_set_then_get(void) {
  fixture_t fx = setup();
  ember_store_client_t *client = connect_client(&fx);
  expect_true(fx.loop, ember_store_set(client, "name/0", "trainer", 7));
  expect_bytes(fx.loop, ember_store_get(client, "name/0", 1000), "trainer");
  expect_true(fx.loop, ember_store_set(client, "name/0", "", 0));
  expect_bytes(fx.loop, ember_store_get(client, "name/0", 0), "");
  ember_store_client_release(client);
  teardown(&fx);
}

/* Requests sent back to back, before any reply, are answered in order. */
static void test_pipelined_requests(void) {
  fixture_t fx = setup();
  ember_store_client_t *client = connect_client(&fx);
  enum { N = 200 };
  ember_future_t *sets[N], *gets[N];
  char key[32], value[32];
  size_t big_len = 3u << 20;
  char *big = malloc(big_len + 1);
  CHECK(big != NULL);
  for (int i = 0; i < N; i++) {
    snprintf(key, sizeof(key), "k%d", i);
    snprintf(value, sizeof(value), "v%d", i * 7);
    sets[i] = ember_store_set(client, key, value, strlen(value));
    gets[i] = ember_store_get(client, key, 0);
  }
  for (int i = 0; i < N; i++) {
    snprintf(value, sizeof(value), "v%d", i * 7);
    expect_true(fx.loop, sets[i]);
    expect_bytes(fx.loop, gets[i], value);
  }
  /* A value bigger than one read arrives whole. */
  memset(big, 'x', big_len);
  big[big_len] = '\0';
  expect_true(fx.loop, ember_store_set(client, "big", big, big_len));
  expect_bytes(fx.loop, ember_store_get(client, "big", 0), big);
  free(big);
  ember_store_client_release(client);
  teardown(&fx);
}

static void test_get_waits_for_a_later_set(void) {
  fixture_t fx = setup();
  ember_store_client_t *a = connect_client(&fx), *b = connect_client(&fx);
  ember_future_t *get = ember_store_get(a, "addr/1", 5000);
  sleep_ms(fx.loop, 30);
  CHECK_EQ(ember_future_state(get), EMBER_FUTURE_PENDING);
  expect_true(fx.loop, ember_store_set(b, "addr/1", "10.0.0.2:4000", 13));
  expect_bytes(fx.loop, get, "10.0.0.2:4000");
  ember_store_client_release(a);
  ember_store_client_release(b);
  teardown(&fx);
}

static void test_get_times_out(void) {
  fixture_t fx = setup();
  ember_store_client_t *client = connect_client(&fx);
  expect_error(fx.loop, ember_store_get(client, "missing", 100), UV_ETIMEDOUT,
               "store: key 'missing' was not set within 0.1 s", NULL);
  /* The server forgot the waiter: a later set and get still work. */
  expect_true(fx.loop, ember_store_set(client, "missing", "late", 4));
  expect_bytes(fx.loop, ember_store_get(client, "missing", 100), "late");
  ember_store_client_release(client);
  teardown(&fx);
}

static void test_concurrent_adds(void) {
  fixture_t fx = setup();
  ember_store_client_t *a = connect_client(&fx), *b = connect_client(&fx);
  enum { N = 50 };
  ember_future_t *adds[2 * N];
  for (int i = 0; i < N; i++) {
    adds[2 * i] = ember_store_add(a, "count", 1);
    adds[2 * i + 1] = ember_store_add(b, "count", 2);
  }
  for (int i = 0; i < 2 * N; i++) {
    await(fx.loop, adds[i]);
    payload_of(adds[i], &ember_store_int_payload);
    ember_future_release(adds[i]);
  }
  expect_int(fx.loop, ember_store_add(a, "count", 0), 3 * N);
  expect_bytes(fx.loop, ember_store_get(b, "count", 0), "150");
  expect_int(fx.loop, ember_store_add(a, "count", -151), -1);
  expect_int(fx.loop, ember_store_add(a, "fresh", -5), -5);
  expect_int(fx.loop, ember_store_add(a, "big", INT64_MAX), INT64_MAX);
  expect_error(fx.loop, ember_store_add(a, "big", 1), UV_ERANGE, "overflows",
               NULL);
  expect_true(fx.loop, ember_store_set(a, "word", "abc", 3));
  expect_error(fx.loop, ember_store_add(b, "word", 1), UV_EINVAL,
               "key 'word' is not an integer", NULL);
  ember_store_client_release(a);
  ember_store_client_release(b);
  teardown(&fx);
}

static void test_delete(void) {
  fixture_t fx = setup();
  ember_store_client_t *client = connect_client(&fx);
  const char *key = "gone";
  ember_store_flags_t *flags;
  ember_future_t *check;
  expect_true(fx.loop, ember_store_set(client, key, "1", 1));
  expect_bool(fx.loop, ember_store_delete(client, key), 1);
  expect_bool(fx.loop, ember_store_delete(client, key), 0);
  check = await(fx.loop, ember_store_check(client, &key, 1));
  flags = payload_of(check, &ember_store_flags_payload);
  CHECK_EQ(flags->count, 1);
  CHECK_EQ(flags->exists[0], 0);
  ember_future_release(check);
  ember_store_client_release(client);
  teardown(&fx);
}

static void test_wait_for_keys_set_later(void) {
  fixture_t fx = setup();
  ember_store_client_t *a = connect_client(&fx), *b = connect_client(&fx);
  const char *keys[] = {"rank/0", "rank/1", "rank/2", "rank/1"};
  ember_future_t *wait = ember_store_wait(a, keys, 4, 5000);
  expect_true(fx.loop, ember_store_set(b, "rank/1", "b", 1));
  expect_true(fx.loop, ember_store_set(b, "rank/0", "a", 1));
  sleep_ms(fx.loop, 20);
  CHECK_EQ(ember_future_state(wait), EMBER_FUTURE_PENDING);
  expect_true(fx.loop, ember_store_set(b, "rank/2", "c", 1));
  expect_true(fx.loop, wait);
  /* Keys that all exist already: at once; no keys at all: at once. */
  expect_true(fx.loop, ember_store_wait(b, keys, 3, 0));
  expect_true(fx.loop, ember_store_wait(b, keys, 0, 0));
  ember_store_client_release(a);
  ember_store_client_release(b);
  teardown(&fx);
}

static void test_wait_timeout_names_missing_keys(void) {
  fixture_t fx = setup();
  ember_store_client_t *client = connect_client(&fx);
  const char *keys[15];
  char names[15][16];
  for (int i = 0; i < 15; i++) {
    snprintf(names[i], sizeof(names[i]), "w%d", i);
    keys[i] = names[i];
  }
  expect_true(fx.loop, ember_store_set(client, "w0", "x", 1));
  expect_true(fx.loop, ember_store_set(client, "w1", "x", 1));
  ember_future_t *wait = ember_store_wait(client, keys, 15, 150);
  await(fx.loop, wait);
  const char *message = ember_future_payload(wait, NULL);
  CHECK(strstr(message, "'w0'") == NULL);
  CHECK(strstr(message, "'w1'") == NULL);
  ember_future_retain(wait);
  expect_error(fx.loop, wait, UV_ETIMEDOUT, "keys not set within 0.15 s",
               "and 3 more");
  CHECK(strstr(message, "'w2'") != NULL || strstr(message, "'w14'") != NULL);
  ember_future_release(wait);
  /* The cancelled waiter is gone: setting its keys answers nobody. */
  expect_true(fx.loop, ember_store_set(client, "w2", "x", 1));
  ember_store_client_release(client);
  teardown(&fx);
}

static void test_check(void) {
  fixture_t fx = setup();
  ember_store_client_t *client = connect_client(&fx);
  const char *keys[] = {"a", "b", "c"};
  ember_future_t *check;
  ember_store_flags_t *flags;
  expect_true(fx.loop, ember_store_set(client, "a", "1", 1));
  expect_true(fx.loop, ember_store_set(client, "c", "3", 1));
  check = await(fx.loop, ember_store_check(client, keys, 3));
  flags = payload_of(check, &ember_store_flags_payload);
  CHECK_EQ(flags->count, 3);
  CHECK_EQ(flags->exists[0], 1);
  CHECK_EQ(flags->exists[1], 0);
  CHECK_EQ(flags->exists[2], 1);
  ember_future_release(check);
  ember_store_client_release(client);
  teardown(&fx);
}

/* A port that was free a moment ago (nobody listens on it now). */
static int free_port(ember_loop_t *loop) {
  ember_store_server_t *server;
  int port;
  CHECK_EQ(ember_store_server_start(loop, HOST, 0, &server), 0);
  port = ember_store_server_port(server);
  ember_store_server_close(server);
  CHECK_EQ(ember_loop_run(loop), 0);
  return port;
}

static void test_connect_retries_until_the_server_starts(void) {
  fixture_t fx = {NULL, NULL, 0};
  ember_future_t *connecting;
  ember_store_client_t *client;
  CHECK_EQ(ember_loop_new(&fx.loop), 0);
  fx.port = free_port(fx.loop);
  connecting = ember_store_connect(fx.loop, HOST, fx.port, 5000);
  sleep_ms(fx.loop, 200);
  CHECK_EQ(ember_future_state(connecting), EMBER_FUTURE_PENDING);
  CHECK_EQ(ember_store_server_start(fx.loop, HOST, fx.port, &fx.server), 0);
  client = take_client(await(fx.loop, connecting));
  expect_true(fx.loop, ember_store_set(client, "k", "v", 1));
  expect_bytes(fx.loop, ember_store_get(client, "k", 0), "v");
  ember_store_client_release(client);
  teardown(&fx);
}

/* A name is looked up, and each of its addresses tried (localhost may say
** ::1 first while the server listens on 127.0.0.1 only). */
static void test_connect_by_host_name(void) {
  fixture_t fx = setup();
  ember_future_t *connecting =
      ember_store_connect(fx.loop, "localhost", fx.port, 5000);
  ember_store_client_t *client = take_client(await(fx.loop, connecting));
  char address[64];
  CHECK_EQ(ember_store_client_local_address(client, address, sizeof(address)),
           0);
  CHECK(strcmp(address, HOST) == 0);
  expect_true(fx.loop, ember_store_set(client, "k", "v", 1));
  ember_store_client_release(client);
  teardown(&fx);
}

static void test_connect_times_out(void) {
  fixture_t fx = {NULL, NULL, 0};
  char expected[128];
  CHECK_EQ(ember_loop_new(&fx.loop), 0);
  fx.port = free_port(fx.loop);
  snprintf(expected, sizeof(expected),
           "cannot reach the store at " HOST ":%d within 0.3 s", fx.port);
  expect_error(fx.loop, ember_store_connect(fx.loop, HOST, fx.port, 300),
               UV_ETIMEDOUT, expected, "(last error: connection refused)");
  expect_error(fx.loop, ember_store_connect(fx.loop, HOST, 0, 300), UV_EINVAL,
               "bad address", NULL);
  teardown(&fx);
}

static void test_server_close_fails_pending_ops(void) {
  fixture_t fx = setup();
  ember_store_client_t *client = connect_client(&fx);
  char expected[96];
  ember_future_t *get = ember_store_get(client, "never", 0);
  sleep_ms(fx.loop, 20);
  ember_store_server_close(fx.server);
  fx.server = NULL;
  snprintf(expected, sizeof(expected),
           "the store at " HOST ":%d closed the connection", fx.port);
  expect_error(fx.loop, get, EMBER_EPEERLOST, expected, NULL);
  /* Later ops fail at once, the same way. */
  expect_error(fx.loop, ember_store_set(client, "k", "v", 1), EMBER_EPEERLOST,
               expected, NULL);
  ember_store_client_release(client);
  teardown(&fx);
}

static void test_client_close_cancels_pending_ops(void) {
  fixture_t fx = setup();
  ember_store_client_t *client = connect_client(&fx);
  ember_future_t *get = ember_store_get(client, "never", 10000);
  ember_future_t *wait = ember_store_wait(client, (const char *[]){"x"}, 1, 0);
  ember_store_client_close(client);
  expect_error(fx.loop, get, UV_ECANCELED, "closed", NULL);
  expect_error(fx.loop, wait, UV_ECANCELED, "closed", NULL);
  ember_store_client_release(client);
  teardown(&fx);
}

/* Dropping every reference to a connect future mid-way leaks nothing. */
static void test_abandoned_connect(void) {
  fixture_t fx = setup();
  ember_future_release(ember_store_connect(fx.loop, HOST, fx.port, 1000));
  sleep_ms(fx.loop, 50);
  teardown(&fx);
}

/* ember_loop_close with a connected client, a pending op and a server. */
static void test_loop_close_with_everything_open(void) {
  fixture_t fx = setup();
  int unserved = free_port(fx.loop);
  ember_store_client_t *client = connect_client(&fx);
  ember_future_t *get = ember_store_get(client, "never", 60000);
  ember_future_t *plain = ember_store_get(client, "never", 0);
  ember_future_t *connecting =
      ember_store_connect(fx.loop, HOST, unserved, 60000);
  sleep_ms(fx.loop, 20);
  ember_store_client_release(client);
  CHECK_EQ(ember_loop_close(fx.loop), 0);
  CHECK_EQ(ember_future_state(get), EMBER_FUTURE_FAILED);
  CHECK_EQ(ember_future_state(plain), EMBER_FUTURE_FAILED);
  CHECK_EQ(ember_future_state(connecting), EMBER_FUTURE_FAILED);
  ember_future_release(get);
  ember_future_release(plain);
  ember_future_release(connecting);
  ember_store_server_close(fx.server); /* after the loop: frees it */
  CHECK_EQ(ember_future_live_count(), 0);
}

/* --- Malformed input
 * ------------------------------------------------------------ */

/* A raw TCP client that sends bytes and waits for the server to hang up. */
typedef struct {
  ember_handle_owner_t owner;
  uv_tcp_t tcp;
  uv_connect_t connect;
  uv_write_t write;
  uv_buf_t bytes;
  char scratch[256];
  ember_future_t *hung_up;
} raw_t;

static void raw_closed_cb(uv_handle_t *handle) {
  raw_t *raw = handle->data;
  ember_future_release(raw->hung_up);
  free(raw);
}

static void raw_alloc_cb(uv_handle_t *handle, size_t hint, uv_buf_t *buf) {
  raw_t *raw = handle->data;
  (void)hint;
  *buf = uv_buf_init(raw->scratch, sizeof(raw->scratch));
}

static void raw_read_cb(uv_stream_t *stream, ssize_t nread,
                        const uv_buf_t *buf) {
  raw_t *raw = stream->data;
  (void)buf;
  if (nread >= 0)
    return;
  ember_future_set_result(raw->hung_up, NULL, NULL);
  uv_close((uv_handle_t *)&raw->tcp, raw_closed_cb);
}

static void raw_connect_cb(uv_connect_t *req, int status) {
  raw_t *raw = req->data;
  CHECK_EQ(status, 0);
  CHECK_EQ(
      uv_write(&raw->write, (uv_stream_t *)&raw->tcp, &raw->bytes, 1, NULL), 0);
  CHECK_EQ(uv_read_start((uv_stream_t *)&raw->tcp, raw_alloc_cb, raw_read_cb),
           0);
}

/* Sends `len` raw bytes; the future completes when the server hangs up. */
static ember_future_t *send_raw(fixture_t *fx, const char *bytes, size_t len) {
  raw_t *raw = calloc(1, sizeof(*raw));
  struct sockaddr_in addr;
  CHECK(raw != NULL);
  raw->owner.close_cb = raw_closed_cb;
  raw->bytes = uv_buf_init((char *)bytes, (unsigned)len);
  raw->hung_up = ember_future_new();
  ember_future_retain(raw->hung_up);
  uv_tcp_init(ember_loop_uv(fx->loop), &raw->tcp);
  raw->tcp.data = raw;
  raw->connect.data = raw;
  CHECK_EQ(uv_ip4_addr(HOST, fx->port, &addr), 0);
  CHECK_EQ(uv_tcp_connect(&raw->connect, &raw->tcp, (struct sockaddr *)&addr,
                          raw_connect_cb),
           0);
  return raw->hung_up;
}

static void test_malformed_frames_close_only_that_client(void) {
  static const char garbage[] = "hello, this is not a store frame";
  static const char huge[] = {'\xff', '\xff', '\xff', '\xff', 1, 2, 3};
  /* A 5-byte body: an array that claims 4 billion items. */
  static const char forged[] = {0,      0,      0,      5,     '\xdd',
                                '\xff', '\xff', '\xff', '\xff'};
  /* [99, 1]: an unknown operation. */
  static const char unknown[] = {0, 0, 0, 3, '\x92', 99, 1};
  /* [1, 1, "k"]: set without a value. */
  static const char short_set[] = {0, 0, 0, 5, '\x93', 1, 1, '\xa1', 'k'};
  static const struct {
    const char *bytes;
    size_t len;
  } cases[] = {{garbage, sizeof(garbage) - 1},
               {huge, sizeof(huge)},
               {forged, sizeof(forged)},
               {unknown, sizeof(unknown)},
               {short_set, sizeof(short_set)}};
  fixture_t fx = setup();
  ember_store_client_t *client = connect_client(&fx);
  ember_future_t *get = ember_store_get(client, "after", 5000);

  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    ember_future_t *hung_up = send_raw(&fx, cases[i].bytes, cases[i].len);
    await(fx.loop, hung_up);
    ember_future_release(hung_up);
  }
  /* The well-behaved client was not disturbed. */
  CHECK_EQ(ember_future_state(get), EMBER_FUTURE_PENDING);
  expect_true(fx.loop, ember_store_set(client, "after", "ok", 2));
  expect_bytes(fx.loop, get, "ok");
  ember_store_client_release(client);
  teardown(&fx);
}

/* --- A store that never answers
 * ------------------------------------------------ */

/* A listener that accepts connections and reads what comes, answering
** nothing; `last` is the most recent connection. */
typedef struct mute_s {
  ember_handle_owner_t owner;
  uv_tcp_t tcp;
  char scratch[256];
  struct mute_s *last;
} mute_t;

static void mute_closed_cb(uv_handle_t *handle) {
  free(handle->data);
}

static void mute_alloc_cb(uv_handle_t *handle, size_t hint, uv_buf_t *buf) {
  mute_t *mute = handle->data;
  (void)hint;
  *buf = uv_buf_init(mute->scratch, sizeof(mute->scratch));
}

static void mute_read_cb(uv_stream_t *stream, ssize_t nread,
                         const uv_buf_t *buf) {
  (void)stream;
  (void)nread;
  (void)buf;
}

static mute_t *mute_new(uv_loop_t *uv) {
  mute_t *mute = calloc(1, sizeof(*mute));
  CHECK(mute != NULL);
  mute->owner.close_cb = mute_closed_cb;
  uv_tcp_init(uv, &mute->tcp);
  mute->tcp.data = mute;
  return mute;
}

static void mute_connection_cb(uv_stream_t *stream, int status) {
  mute_t *listener = stream->data, *peer = mute_new(stream->loop);
  CHECK_EQ(status, 0);
  CHECK_EQ(uv_accept(stream, (uv_stream_t *)&peer->tcp), 0);
  CHECK_EQ(
      uv_read_start((uv_stream_t *)&peer->tcp, mute_alloc_cb, mute_read_cb), 0);
  listener->last = peer;
}

static mute_t *mute_listen(ember_loop_t *loop, int port) {
  mute_t *listener = mute_new(ember_loop_uv(loop));
  struct sockaddr_in addr;
  CHECK_EQ(uv_ip4_addr(HOST, port, &addr), 0);
  CHECK_EQ(uv_tcp_bind(&listener->tcp, (struct sockaddr *)&addr, 0), 0);
  CHECK_EQ(uv_listen((uv_stream_t *)&listener->tcp, 8, mute_connection_cb), 0);
  return listener;
}

/*
** A wait past its timeout asks the store which keys are missing. With no
** answer it fails after a grace period, naming every key it waited for;
** losing the store meanwhile is still a timeout.
*/
static void test_wait_timeout_when_the_store_does_not_answer(void) {
  fixture_t fx = {NULL, NULL, 0};
  const char *keys[] = {"a", "b"};
  ember_future_t *silent, *lost, *plain;
  ember_store_client_t *client;
  mute_t *mute;
  CHECK_EQ(ember_loop_new(&fx.loop), 0);
  fx.port = free_port(fx.loop);
  mute = mute_listen(fx.loop, fx.port);
  client = take_client(
      await(fx.loop, ember_store_connect(fx.loop, HOST, fx.port, 5000)));
  silent = ember_store_wait(client, keys, 2, 50);
  expect_error(fx.loop, silent, UV_ETIMEDOUT,
               "(the store did not say which are missing) among: 'a', 'b'",
               "within 0.05 s");
  lost = ember_store_wait(client, keys, 1, 50);
  plain = ember_store_get(client, "k", 0);
  sleep_ms(fx.loop, 200); /* lost is past its timeout, waiting for words */
  CHECK_EQ(ember_future_state(lost), EMBER_FUTURE_PENDING);
  uv_close((uv_handle_t *)&mute->last->tcp, mute_closed_cb);
  expect_error(fx.loop, lost, UV_ETIMEDOUT, "among: 'a'", NULL);
  expect_error(fx.loop, plain, EMBER_EPEERLOST, "closed the connection", NULL);
  uv_close((uv_handle_t *)&mute->tcp, mute_closed_cb);
  ember_store_client_release(client);
  teardown(&fx);
}

CHECK_MAIN(CHECK_TEST(test_set_then_get), CHECK_TEST(test_pipelined_requests),
           CHECK_TEST(test_get_waits_for_a_later_set),
           CHECK_TEST(test_get_times_out), CHECK_TEST(test_concurrent_adds),
           CHECK_TEST(test_delete), CHECK_TEST(test_wait_for_keys_set_later),
           CHECK_TEST(test_wait_timeout_names_missing_keys),
           CHECK_TEST(test_check),
           CHECK_TEST(test_connect_retries_until_the_server_starts),
           CHECK_TEST(test_connect_by_host_name),
           CHECK_TEST(test_connect_times_out),
           CHECK_TEST(test_server_close_fails_pending_ops),
           CHECK_TEST(test_client_close_cancels_pending_ops),
           CHECK_TEST(test_abandoned_connect),
           CHECK_TEST(test_loop_close_with_everything_open),
           CHECK_TEST(test_malformed_frames_close_only_that_client),
           CHECK_TEST(test_wait_timeout_when_the_store_does_not_answer))
