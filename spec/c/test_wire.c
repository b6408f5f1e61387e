/*
** The wire format in C: frame headers and their limits, the tensor lengths
** table, the msgpack body walk (valid values, truncation, trailing bytes,
** depth, declared counts and lengths that the bytes cannot hold), outgoing
** messages (zero-copy and copied payloads, dedupe) and received tensors.
** Leaks are left to AddressSanitizer's checker.
*/
#include <msgpack.h>
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "error.h"
#include "tensor.h"
#include "wire.h"

#define CHECK_MSG(needle)                                                      \
  do {                                                                         \
    if (strstr(ember_wire_error(), (needle)) == NULL) {                        \
      fprintf(stderr, "%s:%d: error message '%s' lacks '%s'\n", __FILE__,      \
              __LINE__, ember_wire_error(), (needle));                         \
      abort();                                                                 \
    }                                                                          \
  } while (0)

static ember_wire_limits_t defaults(void) {
  ember_wire_limits_t limits;
  ember_wire_default_limits(&limits);
  return limits;
}

static int check_bytes(const void *body, size_t len) {
  ember_wire_limits_t limits = defaults();
  return ember_wire_check_body(body, len, &limits);
}

/* A packer writing into a message's body. */
static int write_cb(void *data, const char *buf, size_t len) {
  return ember_wire_msg_write(data, buf, len);
}

/* ---- Headers ------------------------------------------------------------- */

static ember_frame_header_t sample_header(void) {
  ember_frame_header_t h;
  h.version = EMBER_WIRE_VERSION;
  h.kind = EMBER_MSG_REQUEST;
  h.flags = EMBER_FLAG_ASYNC_EXECUTION;
  h.request_id = UINT64_C(0x0102030405060708);
  h.body_len = 1000;
  h.tensor_count = 3;
  return h;
}

static void header_round_trip(void) {
  ember_wire_limits_t limits = defaults();
  ember_frame_header_t h = sample_header(), out;
  uint8_t bytes[EMBER_WIRE_HEADER_SIZE];
  ember_wire_pack_header(&h, bytes);
  /* Little-endian throughout. */
  CHECK_EQ(bytes[0], 0x45);
  CHECK_EQ(bytes[3], 0x52);
  CHECK_EQ(bytes[4], EMBER_WIRE_VERSION);
  CHECK_EQ(bytes[5], EMBER_MSG_REQUEST);
  CHECK_EQ(bytes[6], 1);
  CHECK_EQ(bytes[8], 0x08);
  CHECK_EQ(bytes[15], 0x01);
  CHECK_EQ(bytes[16], 1000 & 0xff);
  CHECK_EQ(bytes[17], 1000 >> 8);
  CHECK_EQ(bytes[20], 3);
  CHECK_EQ(ember_wire_unpack_header(bytes, &limits, &out), 0);
  CHECK_EQ(out.version, h.version);
  CHECK_EQ(out.kind, h.kind);
  CHECK_EQ(out.flags, h.flags);
  CHECK(out.request_id == h.request_id);
  CHECK_EQ(out.body_len, h.body_len);
  CHECK_EQ(out.tensor_count, h.tensor_count);
}

static int unpack_modified(int at, uint8_t value) {
  ember_wire_limits_t limits = defaults();
  ember_frame_header_t h = sample_header(), out;
  uint8_t bytes[EMBER_WIRE_HEADER_SIZE];
  ember_wire_pack_header(&h, bytes);
  bytes[at] = value;
  return ember_wire_unpack_header(bytes, &limits, &out);
}

static void header_rejects_bad_magic_version_kind(void) {
  CHECK_EQ(unpack_modified(0, 'G'), EMBER_EINVAL);
  CHECK_MSG("bad frame magic");
  CHECK_EQ(unpack_modified(4, 2), EMBER_EINVAL);
  CHECK_MSG("unsupported wire version 2");
  CHECK_EQ(unpack_modified(5, 0), EMBER_EINVAL);
  CHECK_MSG("unknown frame kind 0");
  CHECK_EQ(unpack_modified(5, 13), EMBER_EINVAL);
  CHECK_MSG("unknown frame kind 13");
  CHECK_EQ(unpack_modified(5, 200), EMBER_EINVAL);
  CHECK_EQ(unpack_modified(5, EMBER_MSG_RREF_DELETE), 0);
  CHECK_EQ(unpack_modified(5, EMBER_MSG_HEARTBEAT), 0);
}

static void header_body_and_tensor_limits(void) {
  ember_wire_limits_t limits = defaults();
  ember_frame_header_t h = sample_header(), out;
  uint8_t bytes[EMBER_WIRE_HEADER_SIZE];
  h.body_len = 3000000000u;
  ember_wire_pack_header(&h, bytes);
  CHECK_EQ(ember_wire_unpack_header(bytes, &limits, &out), EMBER_EINVAL);
  CHECK_MSG("frame body of 3000000000 bytes exceeds the limit of 67108864");
  h.body_len = limits.max_body;
  ember_wire_pack_header(&h, bytes);
  CHECK_EQ(ember_wire_unpack_header(bytes, &limits, &out), 0);
  h.tensor_count = limits.max_tensors + 1;
  ember_wire_pack_header(&h, bytes);
  CHECK_EQ(ember_wire_unpack_header(bytes, &limits, &out), EMBER_EINVAL);
  CHECK_MSG("4097 tensors exceeds the limit of 4096");
}

static void put_u64(uint8_t *out, uint64_t v) {
  for (int i = 0; i < 8; i++) out[i] = (uint8_t)(v >> (8 * i));
}

static void lengths_table(void) {
  ember_wire_limits_t limits = defaults();
  uint8_t in[3 * 8];
  uint64_t lengths[3];
  put_u64(in, 12);
  put_u64(in + 8, 0);
  put_u64(in + 16, UINT64_C(1) << 33);
  CHECK_EQ(ember_wire_unpack_lengths(in, 3, &limits, lengths), 0);
  CHECK(lengths[0] == 12 && lengths[1] == 0 && lengths[2] == UINT64_C(1) << 33);
  /* One payload over its limit. */
  put_u64(in + 16, (UINT64_C(16) << 30) + 1);
  CHECK_EQ(ember_wire_unpack_lengths(in, 3, &limits, lengths), EMBER_EINVAL);
  CHECK_MSG("tensor 2 of 17179869185 bytes exceeds the limit");
  /* Each within its limit, the sum over the frame's. */
  limits.max_payload_bytes = 100;
  put_u64(in, 60);
  put_u64(in + 8, 41);
  CHECK_EQ(ember_wire_unpack_lengths(in, 2, &limits, lengths), EMBER_EINVAL);
  CHECK_MSG("exceed the frame limit of 100");
  /* Sums that would wrap around 2^64 are refused too. */
  limits = defaults();
  limits.max_tensor_bytes = UINT64_MAX;
  limits.max_payload_bytes = UINT64_MAX;
  put_u64(in, UINT64_MAX - 1);
  put_u64(in + 8, 2);
  CHECK_EQ(ember_wire_unpack_lengths(in, 2, &limits, lengths), EMBER_EINVAL);
  limits = defaults();
  CHECK_EQ(ember_wire_unpack_lengths(in, 5000, &limits, lengths), EMBER_EINVAL);
  CHECK_MSG("5000 tensors");
}

/* ---- Bodies -------------------------------------------------------------- */

/* A body holding one of everything msgpack has. */
static void pack_everything(ember_wire_msg_t *msg) {
  msgpack_packer pk;
  msgpack_packer_init(&pk, msg, write_cb);
  msgpack_pack_map(&pk, 3);
  msgpack_pack_str(&pk, 4);
  msgpack_pack_str_body(&pk, "ints", 4);
  msgpack_pack_array(&pk, 9);
  msgpack_pack_int64(&pk, 0);
  msgpack_pack_int64(&pk, -1);
  msgpack_pack_int64(&pk, 200);
  msgpack_pack_int64(&pk, -200);
  msgpack_pack_int64(&pk, 70000);
  msgpack_pack_int64(&pk, -70000);
  msgpack_pack_int64(&pk, INT64_MAX);
  msgpack_pack_int64(&pk, INT64_MIN);
  msgpack_pack_uint64(&pk, UINT64_MAX);
  msgpack_pack_int64(&pk, 7);
  msgpack_pack_array(&pk, 6);
  msgpack_pack_nil(&pk);
  msgpack_pack_true(&pk);
  msgpack_pack_float(&pk, 1.5f);
  msgpack_pack_double(&pk, -0.25);
  msgpack_pack_bin(&pk, 3);
  msgpack_pack_bin_body(&pk, "\0\1\2", 3);
  msgpack_pack_ext(&pk, 2, 9);
  msgpack_pack_ext_body(&pk, "ab", 2);
  msgpack_pack_str(&pk, 300);
  static const char long_text[300] = "long";
  msgpack_pack_str_body(&pk, long_text, 300);
  msgpack_pack_map(&pk, 0);
}

static void check_body_accepts_valid_values(void) {
  ember_wire_msg_t msg;
  ember_wire_msg_init(&msg);
  pack_everything(&msg);
  CHECK_EQ(check_bytes(msg.body, msg.body_len), 0);
  /* Scalars alone, and empty containers. */
  CHECK_EQ(check_bytes("\xc0", 1), 0);
  CHECK_EQ(check_bytes("\x90", 1), 0);
  CHECK_EQ(check_bytes("\x80", 1), 0);
  CHECK_EQ(check_bytes("\x92\x01\x02", 3), 0);
  CHECK_EQ(check_bytes("\x81\x01\x02", 3), 0);
  ember_wire_msg_free(&msg);
}

static void check_body_tokens(void) {
  ember_wire_msg_t msg;
  ember_wire_token_t tok;
  size_t pos = 0;
  ember_wire_msg_init(&msg);
  pack_everything(&msg);
  CHECK_EQ(ember_wire_read_token(msg.body, msg.body_len, &pos, &tok), 0);
  CHECK(tok.type == EMBER_WIRE_MAP && tok.length == 3);
  CHECK_EQ(ember_wire_read_token(msg.body, msg.body_len, &pos, &tok), 0);
  CHECK(tok.type == EMBER_WIRE_STR && tok.length == 4);
  CHECK(memcmp(tok.data, "ints", 4) == 0);
  CHECK_EQ(ember_wire_read_token(msg.body, msg.body_len, &pos, &tok), 0);
  CHECK(tok.type == EMBER_WIRE_ARRAY && tok.length == 9);
  static const int64_t expected[] = {0,     -1,     200,       -200,
                                     70000, -70000, INT64_MAX, INT64_MIN};
  for (int i = 0; i < 8; i++) {
    CHECK_EQ(ember_wire_read_token(msg.body, msg.body_len, &pos, &tok), 0);
    CHECK(tok.type == EMBER_WIRE_INT && tok.v.i == expected[i]);
  }
  CHECK_EQ(ember_wire_read_token(msg.body, msg.body_len, &pos, &tok), 0);
  CHECK(tok.type == EMBER_WIRE_UINT && tok.v.u == UINT64_MAX);
  ember_wire_msg_free(&msg);
}

static void check_body_rejects_truncation(void) {
  ember_wire_msg_t msg;
  ember_wire_msg_init(&msg);
  pack_everything(&msg);
  for (size_t len = 0; len < msg.body_len; len++) {
    /* A copy of exactly `len` bytes, so that ASan sees any overread. */
    char *prefix = malloc(len > 0 ? len : 1);
    CHECK(prefix != NULL);
    memcpy(prefix, msg.body, len);
    CHECK_EQ(check_bytes(prefix, len), EMBER_EINVAL);
    free(prefix);
  }
  CHECK_EQ(check_bytes("", 0), EMBER_EINVAL);
  CHECK_MSG("truncated at byte 0");
  CHECK_EQ(check_bytes("\xcb\x00\x00", 3), EMBER_EINVAL);
  CHECK_MSG("truncated float at byte 0");
  ember_wire_msg_free(&msg);
}

static void check_body_rejects_trailing_bytes(void) {
  CHECK_EQ(check_bytes("\x01\x02", 2), EMBER_EINVAL);
  CHECK_MSG("1 trailing bytes");
  CHECK_EQ(check_bytes("\x90\x90", 2), EMBER_EINVAL);
  CHECK_EQ(check_bytes("\x91\x01\xc0", 3), EMBER_EINVAL);
}

static void check_body_rejects_unused_byte(void) {
  CHECK_EQ(check_bytes("\xc1", 1), EMBER_EINVAL);
  CHECK_MSG("0xc1");
  CHECK_EQ(check_bytes("\x92\x01\xc1", 3), EMBER_EINVAL);
}

/* `depth` nested one-element arrays around nil. */
static int check_nested(int depth, uint32_t max_depth) {
  char body[200];
  ember_wire_limits_t limits = defaults();
  limits.max_depth = max_depth;
  memset(body, 0x91, (size_t)depth);
  body[depth] = (char)0xc0;
  return ember_wire_check_body(body, (size_t)depth + 1, &limits);
}

static void check_body_depth(void) {
  CHECK_EQ(check_nested(64, 64), 0);
  CHECK_EQ(check_nested(65, 64), EMBER_EINVAL);
  CHECK_MSG("nests 65 deep, over the limit of 64");
  /* The limit cannot be raised above 64. */
  CHECK_EQ(check_nested(65, 1000), EMBER_EINVAL);
  CHECK_EQ(check_nested(3, 3), 0);
  CHECK_EQ(check_nested(4, 3), EMBER_EINVAL);
  /* An empty innermost container counts as a level too. */
  char body[65];
  memset(body, 0x91, 64);
  body[64] = (char)0x90;
  CHECK_EQ(check_bytes(body, 65), EMBER_EINVAL);
  body[63] = (char)0x90;
  CHECK_EQ(check_bytes(body, 64), 0);
  /* Maps nest the same way. */
  char maps[3 * 65 + 1];
  for (int i = 0; i < 65; i++) {
    maps[2 * i] = (char)0x81;
    maps[2 * i + 1] = (char)0x01;
  }
  maps[130] = (char)0xc0;
  CHECK_EQ(check_bytes(maps, 131), EMBER_EINVAL);
  CHECK_EQ(check_bytes(maps + 2, 129), 0);
}

static void check_body_counts_must_fit(void) {
  /* Five bytes that would make msgpack-c allocate 64 GiB of objects. */
  CHECK_EQ(check_bytes("\xdd\xff\xff\xff\xff", 5), EMBER_EINVAL);
  CHECK_MSG("array of 4294967295 elements at depth 1 but only 0 bytes left");
  CHECK_EQ(check_bytes("\xdd\xff\xff\xff\xff\x01\x02\x03", 8), EMBER_EINVAL);
  CHECK_MSG("but only 3 bytes left");
  /* Nested: the count is checked against what is left at that point. */
  CHECK_EQ(check_bytes("\x92\xdc\x00\x05\x01\x02\x03", 7), EMBER_EINVAL);
  CHECK_MSG("array of 5 elements at depth 2");
  /* A map entry is two items: 2 entries need at least 4 bytes. */
  CHECK_EQ(check_bytes("\xdf\x00\x00\x00\x02\x01\x02\x03", 8), EMBER_EINVAL);
  CHECK_MSG("map of 2 entries at depth 1 but only 3 bytes left");
  CHECK_EQ(check_bytes("\xde\xff\xff", 3), EMBER_EINVAL);
  CHECK_EQ(check_bytes("\x82\x01\x02\x03\x04", 5), 0);
}

static void check_body_string_lengths(void) {
  ember_wire_limits_t limits = defaults();
  CHECK_EQ(check_bytes("\xdb\xff\xff\xff\xff", 5), EMBER_EINVAL);
  CHECK_MSG("str of 4294967295 bytes at byte 0 but only 0 bytes left");
  CHECK_EQ(check_bytes("\xc6\xff\xff\xff\xff\x00", 6), EMBER_EINVAL);
  CHECK_MSG("bin of 4294967295 bytes");
  CHECK_EQ(check_bytes("\xc9\x7f\xff\xff\xff\x01\x00", 7), EMBER_EINVAL);
  CHECK_MSG("ext of 2147483647 bytes");
  CHECK_EQ(check_bytes("\xa5hell", 5), EMBER_EINVAL);
  /* Present in full but over max_string. */
  limits.max_string = 4;
  CHECK_EQ(ember_wire_check_body("\xa5hello", 6, &limits), EMBER_EINVAL);
  CHECK_MSG("str of 5 bytes at byte 0 exceeds the limit of 4");
  CHECK_EQ(ember_wire_check_body("\xa4hell", 5, &limits), 0);
  CHECK_EQ(ember_wire_check_body("\xd7\x01\x00\x00\x00\x00\x00\x00\x00\x00", 10,
                                 &limits),
           EMBER_EINVAL);
  /* max_body. */
  limits = defaults();
  limits.max_body = 2;
  CHECK_EQ(ember_wire_check_body("\x92\x01\x02", 3, &limits), EMBER_EINVAL);
  CHECK_MSG("exceeds the limit of 2");
}

/* A tiny deterministic generator for the fuzz loop. */
static uint64_t fuzz_state = 0x9e3779b97f4a7c15u;
static uint32_t fuzz_next(void) {
  fuzz_state ^= fuzz_state << 13;
  fuzz_state ^= fuzz_state >> 7;
  fuzz_state ^= fuzz_state << 17;
  return (uint32_t)fuzz_state;
}

/* Walks every token of a body that passed the check. */
static void walk_all(const char *body, size_t len) {
  size_t pos = 0;
  ember_wire_token_t tok;
  while (pos < len) CHECK_EQ(ember_wire_read_token(body, len, &pos, &tok), 0);
  CHECK(pos == len);
}

static void check_body_survives_random_bytes(void) {
  ember_wire_msg_t msg;
  ember_wire_msg_init(&msg);
  pack_everything(&msg);
  int accepted = 0;
  for (int round = 0; round < 20000; round++) {
    size_t len = fuzz_next() % 64;
    char *body = malloc(len > 0 ? len : 1);
    CHECK(body != NULL);
    if (round % 2 == 0) {
      for (size_t i = 0; i < len; i++) body[i] = (char)fuzz_next();
    } else {
      /* A real body's prefix with a few bytes flipped. */
      len = len < msg.body_len ? len : msg.body_len;
      memcpy(body, msg.body, len);
      for (int k = 0; k < 3 && len > 0; k++) {
        body[fuzz_next() % len] = (char)fuzz_next();
      }
    }
    if (check_bytes(body, len) == 0) {
      accepted++;
      walk_all(body, len);
    }
    free(body);
  }
  CHECK(accepted > 0);
  ember_wire_msg_free(&msg);
}

/* ---- Messages ------------------------------------------------------------ */

static ember_tensor_t *matrix(int64_t rows, int64_t cols) {
  int64_t shape[2] = {rows, cols};
  ember_tensor_t *t = ember_tensor_new(shape, 2, EMBER_FLOAT32, NULL);
  CHECK(t != NULL);
  for (int64_t i = 0; i < rows * cols; i++) ember_tensor_set(t, i, (double)i);
  return t;
}

static void msg_body_grows(void) {
  ember_wire_msg_t msg;
  char chunk[1000];
  ember_wire_msg_init(&msg);
  memset(chunk, 'x', sizeof chunk);
  for (int i = 0; i < 100; i++) {
    chunk[0] = (char)i;
    CHECK_EQ(ember_wire_msg_write(&msg, chunk, sizeof chunk), 0);
  }
  CHECK(msg.body_len == 100000);
  CHECK(msg.body_cap >= msg.body_len);
  CHECK_EQ(msg.body[99 * 1000], 99);
  CHECK_EQ(msg.body[99 * 1000 + 1], 'x');
  ember_wire_msg_free(&msg);
  CHECK(msg.body == NULL && msg.body_len == 0 && msg.payload_count == 0);
}

static void msg_contiguous_tensor_is_zero_copy(void) {
  ember_wire_msg_t msg;
  uint32_t index = 99;
  ember_tensor_t *t = matrix(2, 3);
  ember_wire_msg_init(&msg);
  CHECK_EQ(ember_wire_msg_add_tensor(&msg, t, &index), 0);
  CHECK_EQ(index, 0);
  CHECK_EQ(msg.payload_count, 1);
  CHECK(msg.payloads[0].data == t->storage->data);
  CHECK(msg.payloads[0].nbytes == 24);
  CHECK(msg.payloads[0].keep == t);
  CHECK_EQ(t->refs, 2);
  /* A contiguous view at an offset is sent from its own place. */
  ember_tensor_t *row = ember_tensor_select(t, 0, 1);
  CHECK(row != NULL);
  CHECK_EQ(ember_wire_msg_add_tensor(&msg, row, &index), 0);
  CHECK_EQ(index, 1);
  CHECK(msg.payloads[1].data == (char *)t->storage->data + 12);
  CHECK(msg.payloads[1].nbytes == 12);
  ember_tensor_release(row);
  ember_wire_msg_free(&msg);
  CHECK_EQ(t->refs, 1);
  ember_tensor_release(t);
}

static void msg_transposed_view_is_copied(void) {
  ember_wire_msg_t msg;
  uint32_t index;
  ember_tensor_t *t = matrix(2, 3);
  ember_tensor_t *tt = ember_tensor_transpose(t, 0, 1);
  CHECK(tt != NULL && !ember_tensor_is_contiguous(tt));
  ember_wire_msg_init(&msg);
  CHECK_EQ(ember_wire_msg_add_tensor(&msg, tt, &index), 0);
  const ember_wire_payload_t *p = &msg.payloads[0];
  CHECK(p->keep != tt && p->keep->storage != t->storage);
  CHECK(p->nbytes == 24);
  const float *values = p->data;
  static const float expected[] = {0, 3, 1, 4, 2, 5};
  for (int i = 0; i < 6; i++) CHECK(values[i] == expected[i]);
  ember_wire_msg_free(&msg);
  ember_tensor_release(tt);
  ember_tensor_release(t);
}

static void msg_dedupes_the_same_tensor(void) {
  ember_wire_msg_t msg;
  uint32_t a, b, c, d;
  ember_tensor_t *t = matrix(2, 2), *u = matrix(2, 2);
  ember_tensor_t *tt = ember_tensor_transpose(t, 0, 1);
  ember_wire_msg_init(&msg);
  CHECK_EQ(ember_wire_msg_add_tensor(&msg, t, &a), 0);
  CHECK_EQ(ember_wire_msg_add_tensor(&msg, u, &b), 0);
  CHECK_EQ(ember_wire_msg_add_tensor(&msg, t, &c), 0);
  CHECK_EQ(ember_wire_msg_add_tensor(&msg, tt, &d), 0);
  CHECK_EQ(ember_wire_msg_add_tensor(&msg, tt, &c), 0);
  CHECK_EQ(a, 0);
  CHECK_EQ(b, 1);
  CHECK_EQ(d, 2);
  CHECK_EQ(c, 2);
  CHECK_EQ(msg.payload_count, 3);
  CHECK_EQ(t->refs, 2);
  for (int i = 0; i < 20; i++) { /* grows past the first allocation */
    ember_tensor_t *x = matrix(1, 1);
    CHECK_EQ(ember_wire_msg_add_tensor(&msg, x, &a), 0);
    CHECK_EQ(a, 3 + i);
    ember_tensor_release(x);
  }
  ember_wire_msg_free(&msg);
  ember_tensor_release(tt);
  ember_tensor_release(u);
  ember_tensor_release(t);
}

/* ---- Tensor references and received tensors ------------------------------ */

static void tensor_ext_round_trip(void) {
  uint8_t ext[EMBER_WIRE_TENSOR_EXT_MAX];
  ember_wire_tensor_ref_t ref;
  ember_tensor_t *t = matrix(2, 3);
  t->requires_grad = 1;
  size_t len = ember_wire_tensor_ext(t, 7, -1, ext);
  CHECK_EQ(len, EMBER_EXT_TENSOR_FIXED + 16);
  CHECK_EQ(ember_wire_parse_tensor_ext((char *)ext, (uint32_t)len, &ref), 0);
  CHECK(ref.dtype == EMBER_FLOAT32 && ref.ndim == 2 && ref.requires_grad);
  CHECK(ref.index == 7 && ref.shape[0] == 2 && ref.shape[1] == 3);
  CHECK_EQ(ref.device, -1);
  /* A tensor bound for cuda:3 says so; one past the last device is refused. */
  CHECK_EQ(ember_wire_tensor_ext(t, 7, 3, ext), len);
  CHECK_EQ(ember_wire_parse_tensor_ext((char *)ext, (uint32_t)len, &ref), 0);
  CHECK_EQ(ref.device, 3);
  ext[3] = EMBER_WIRE_MAX_DEVICE + 2;
  CHECK_EQ(ember_wire_parse_tensor_ext((char *)ext, (uint32_t)len, &ref),
           EMBER_EINVAL);
  CHECK_MSG("at most cuda:15");
  ext[3] = 0;
  CHECK_EQ(ember_wire_parse_tensor_ext((char *)ext, (uint32_t)len - 1, &ref),
           EMBER_EINVAL);
  CHECK_MSG("expected 24");
  ext[0] = 77;
  CHECK_EQ(ember_wire_parse_tensor_ext((char *)ext, (uint32_t)len, &ref),
           EMBER_EINVAL);
  CHECK_MSG("unknown dtype 77");
  ext[0] = EMBER_FLOAT32;
  ext[1] = 9;
  CHECK_EQ(ember_wire_parse_tensor_ext((char *)ext, (uint32_t)len, &ref),
           EMBER_EINVAL);
  ext[1] = 2;
  ext[EMBER_EXT_TENSOR_FIXED + 15] = 0x80; /* shape[1] < 0 */
  CHECK_EQ(ember_wire_parse_tensor_ext((char *)ext, (uint32_t)len, &ref),
           EMBER_EINVAL);
  CHECK_MSG("negative size");
  CHECK_EQ(ember_wire_parse_tensor_ext("abc", 3, &ref), EMBER_EINVAL);
  ember_tensor_release(t);
}

static ember_tensor_t *raw_bytes(int64_t n) {
  ember_tensor_t *raw = ember_tensor_new(&n, 1, EMBER_UINT8, NULL);
  CHECK(raw != NULL);
  return raw;
}

static void tensor_from_payload_views_the_bytes(void) {
  ember_tensor_t *raw = raw_bytes(24);
  float *f = ember_tensor_data(raw);
  for (int i = 0; i < 6; i++) f[i] = (float)i * 0.5f;
  int64_t shape[2] = {2, 3};
  ember_tensor_t *t = ember_wire_tensor_from_payload(raw, EMBER_FLOAT32,
                                                     shape, 2);
  CHECK(t != NULL);
  CHECK(t->storage == raw->storage);
  CHECK(t->dtype == EMBER_FLOAT32 && ember_tensor_is_contiguous(t));
  CHECK(t->strides[0] == 3 && t->strides[1] == 1);
  CHECK(ember_tensor_get(t, 5) == 2.5);
  CHECK(t->requires_grad == 0 && t->grad_fn == NULL);
  ember_tensor_release(t);
  /* 0-dim and empty tensors. */
  t = ember_wire_tensor_from_payload(raw, EMBER_FLOAT32, NULL, 0);
  CHECK(t == NULL); /* 4 bytes wanted, 24 given */
  CHECK_MSG("needs 4 bytes but its payload has 24");
  int64_t empty[2] = {0, 3};
  ember_tensor_t *none = raw_bytes(0);
  t = ember_wire_tensor_from_payload(none, EMBER_INT64, empty, 2);
  CHECK(t != NULL && ember_tensor_numel(t) == 0);
  ember_tensor_release(t);
  ember_tensor_release(none);
  ember_tensor_release(raw);
}

static void tensor_from_payload_rejects_mismatch(void) {
  ember_tensor_t *raw = raw_bytes(24);
  int64_t shape[2] = {2, 4};
  CHECK(ember_wire_tensor_from_payload(raw, EMBER_FLOAT32, shape, 2) == NULL);
  CHECK_MSG("float32 tensor of shape [2, 4] needs 32 bytes but its payload "
            "has 24");
  shape[0] = -2;
  shape[1] = -3;
  CHECK(ember_wire_tensor_from_payload(raw, EMBER_UINT8, shape, 2) == NULL);
  CHECK_MSG("negative size");
  int64_t huge[3] = {INT64_C(1) << 40, INT64_C(1) << 40, 16};
  CHECK(ember_wire_tensor_from_payload(raw, EMBER_FLOAT64, huge, 3) == NULL);
  CHECK_MSG("too large");
  int64_t many[9] = {1, 1, 1, 1, 1, 1, 1, 1, 24};
  CHECK(ember_wire_tensor_from_payload(raw, EMBER_UINT8, many, 9) == NULL);
  CHECK_MSG("9 dimensions");
  CHECK(ember_wire_tensor_from_payload(raw, (ember_dtype_t)99, many, 1) ==
        NULL);
  /* The raw payload itself must be bytes. */
  int64_t n = 6;
  ember_tensor_t *floats = ember_tensor_new(&n, 1, EMBER_FLOAT32, NULL);
  CHECK(ember_wire_tensor_from_payload(floats, EMBER_FLOAT32, &n, 1) == NULL);
  CHECK_MSG("uint8");
  ember_tensor_release(floats);
  ember_tensor_release(raw);
}

static void tensor_from_misaligned_payload_is_copied(void) {
  /* Payloads read back to back: a float64 that starts at byte 4. */
  ember_tensor_t *frame = raw_bytes(4 + 16);
  ember_tensor_t *raw = ember_tensor_narrow(frame, 0, 4, 16);
  CHECK(raw != NULL);
  double values[2] = {1.25, -7.5};
  memcpy(ember_tensor_data(raw), values, sizeof values);
  int64_t n = 2;
  ember_tensor_t *t = ember_wire_tensor_from_payload(raw, EMBER_FLOAT64, &n, 1);
  CHECK(t != NULL);
  CHECK(t->storage != frame->storage);
  CHECK(ember_tensor_get(t, 0) == 1.25 && ember_tensor_get(t, 1) == -7.5);
  ember_tensor_release(t);
  ember_tensor_release(raw);
  /* An aligned slice is a view. */
  raw = ember_tensor_narrow(frame, 0, 8, 8);
  n = 1;
  t = ember_wire_tensor_from_payload(raw, EMBER_INT64, &n, 1);
  CHECK(t != NULL && t->storage == frame->storage && t->offset == 1);
  ember_tensor_release(t);
  ember_tensor_release(raw);
  ember_tensor_release(frame);
}

CHECK_MAIN(CHECK_TEST(header_round_trip),
           CHECK_TEST(header_rejects_bad_magic_version_kind),
           CHECK_TEST(header_body_and_tensor_limits),
           CHECK_TEST(lengths_table),
           CHECK_TEST(check_body_accepts_valid_values),
           CHECK_TEST(check_body_tokens),
           CHECK_TEST(check_body_rejects_truncation),
           CHECK_TEST(check_body_rejects_trailing_bytes),
           CHECK_TEST(check_body_rejects_unused_byte),
           CHECK_TEST(check_body_depth),
           CHECK_TEST(check_body_counts_must_fit),
           CHECK_TEST(check_body_string_lengths),
           CHECK_TEST(check_body_survives_random_bytes),
           CHECK_TEST(msg_body_grows),
           CHECK_TEST(msg_contiguous_tensor_is_zero_copy),
           CHECK_TEST(msg_transposed_view_is_copied),
           CHECK_TEST(msg_dedupes_the_same_tensor),
           CHECK_TEST(tensor_ext_round_trip),
           CHECK_TEST(tensor_from_payload_views_the_bytes),
           CHECK_TEST(tensor_from_payload_rejects_mismatch),
           CHECK_TEST(tensor_from_misaligned_payload_is_copied))
