/*
** The frame reader: frames fed whole, byte by byte, in random chunks and
** through the direct-read pair come out the same; every limit is refused
** with a message naming it; headers declaring huge parts allocate no faster
** than bytes arrive (allocated <= 8n + 64 KiB after every call); on_header
** refuses before anything is allocated; big tensors arrive intact; random
** bytes never break the bound or the process.
*/
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "error.h"
#include "frame_reader.h"

#define CHECK_MSG(r, needle)                                                   \
  do {                                                                         \
    if (strstr(ember_frame_reader_error(r), (needle)) == NULL) {               \
      fprintf(stderr, "%s:%d: error message '%s' lacks '%s'\n", __FILE__,      \
              __LINE__, ember_frame_reader_error(r), (needle));                \
      abort();                                                                 \
    }                                                                          \
  } while (0)

#define BOUND(n) (8 * (uint64_t)(n) + EMBER_FRAME_READER_SLACK)

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint64_t rng(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

/* --- Building frames ------------------------------------------------------- */

typedef struct {
  uint8_t *data;
  size_t len, cap;
  size_t ends[64]; /* where each frame ends in the stream */
  int frames;
} stream_t;

static void put(stream_t *s, const void *p, size_t n) {
  if (s->len + n > s->cap) {
    s->cap = (s->len + n) * 2;
    s->data = realloc(s->data, s->cap);
    CHECK(s->data != NULL);
  }
  memcpy(s->data + s->len, p, n);
  s->len += n;
}

/* The byte of payload `t` of frame `f` at `i`: a pattern a misplaced byte
** would break. */
static uint8_t pattern(int f, uint32_t t, uint64_t i) {
  return (uint8_t)(i * 31 + (i >> 11) + (uint64_t)f * 7 + t * 13);
}

/* Appends a frame of `kind` with a body of `body_len` bytes and `count`
** payloads of the given lengths. */
static void add_frame(stream_t *s, int kind, uint32_t body_len, uint32_t count,
                      const uint64_t *lengths) {
  ember_frame_header_t h = {EMBER_WIRE_VERSION, (uint8_t)kind, 0,
                            (uint64_t)s->frames * 1000 + 7, body_len, count};
  uint8_t header[EMBER_WIRE_HEADER_SIZE];
  int f = s->frames;
  ember_wire_pack_header(&h, header);
  put(s, header, sizeof(header));
  for (uint32_t t = 0; t < count; t++) {
    uint8_t le[8];
    for (int i = 0; i < 8; i++)
      le[i] = (uint8_t)(lengths[t] >> (8 * i));
    put(s, le, 8);
  }
  for (uint32_t i = 0; i < body_len; i++) {
    uint8_t b = (uint8_t)(i ^ (uint32_t)f);
    put(s, &b, 1);
  }
  for (uint32_t t = 0; t < count; t++)
    for (uint64_t i = 0; i < lengths[t]; i++) {
      uint8_t b = pattern(f, t, i);
      put(s, &b, 1);
    }
  s->ends[s->frames++] = s->len;
}

/* Bytes of the frame being read once `offset` stream bytes went in. */
static uint64_t frame_bytes_at(const stream_t *s, size_t offset) {
  size_t start = 0;
  for (int f = 0; f < s->frames; f++) {
    if (offset < s->ends[f])
      return offset - start;
    start = s->ends[f];
  }
  return offset - start;
}

/* --- Collecting frames ------------------------------------------------------ */

typedef struct {
  int frames;
  int headers;
  int refuse_kind;  /* on_header refuses this kind */
  int stop_after;   /* on_frame stops after this many frames (0: never) */
  int check_frames; /* compare with what add_frame wrote */
  ember_frame_header_t last;
} sink_t;

static int on_header(void *user, const ember_frame_header_t *h) {
  sink_t *sink = user;
  sink->headers++;
  return h->kind == sink->refuse_kind ? UV_ECANCELED : 0;
}

static void check_frame(int f, const ember_frame_t *frame) {
  CHECK_EQ(frame->header.request_id, (uint64_t)f * 1000 + 7);
  CHECK(frame->body != NULL);
  for (uint32_t i = 0; i < frame->header.body_len; i++)
    CHECK_EQ((uint8_t)frame->body[i], (uint8_t)(i ^ (uint32_t)f));
  CHECK_EQ(frame->body[frame->header.body_len], 0);
  CHECK((frame->payloads != NULL) == (frame->header.tensor_count > 0));
  for (uint32_t t = 0; t < frame->header.tensor_count; t++) {
    ember_tensor_t *raw = frame->payloads[t];
    const uint8_t *bytes;
    CHECK(raw != NULL && raw->dtype == EMBER_UINT8 && raw->ndim == 1);
    bytes = raw->storage->data;
    CHECK_EQ(raw->shape[0], (int64_t)raw->storage->nbytes);
    for (uint64_t i = 0; i < raw->storage->nbytes; i++)
      if (bytes[i] != pattern(f, t, i)) {
        fprintf(stderr, "frame %d tensor %u byte %llu: %u != %u\n", f, t,
                (unsigned long long)i, bytes[i], pattern(f, t, i));
        abort();
      }
  }
}

static int on_frame(void *user, ember_frame_t *frame) {
  sink_t *sink = user;
  if (sink->check_frames)
    check_frame(sink->frames, frame);
  sink->last = frame->header;
  sink->frames++;
  ember_frame_free(frame);
  return sink->stop_after > 0 && sink->frames >= sink->stop_after ? UV_ECANCELED
                                                                   : 0;
}

static ember_frame_reader_t *new_reader(sink_t *sink,
                                        const ember_wire_limits_t *limits) {
  ember_frame_reader_callbacks_t cb = {sink, on_header, on_frame};
  ember_wire_limits_t defaults;
  ember_frame_reader_t *r;
  memset(sink, 0, sizeof(*sink));
  sink->refuse_kind = -1;
  if (limits == NULL) {
    ember_wire_default_limits(&defaults);
    limits = &defaults;
  }
  r = ember_frame_reader_new(limits, &cb);
  CHECK(r != NULL);
  CHECK_EQ(ember_frame_reader_allocated(r), 0);
  return r;
}

static void check_bound(const ember_frame_reader_t *r, const stream_t *s,
                        size_t offset) {
  uint64_t n = frame_bytes_at(s, offset);
  if (ember_frame_reader_allocated(r) > BOUND(n)) {
    fprintf(stderr, "at byte %zu (%llu of the frame): %zu bytes allocated\n",
            offset, (unsigned long long)n, ember_frame_reader_allocated(r));
    abort();
  }
}

/* --- Feeding modes ----------------------------------------------------------- */

typedef enum { WHOLE, BYTES, CHUNKS, DIRECT } feed_mode_t;

/* Feeds s in `mode`; checks the bound after every call. */
static void feed_stream(ember_frame_reader_t *r, const stream_t *s,
                        feed_mode_t mode) {
  size_t off = 0;
  while (off < s->len) {
    size_t left = s->len - off, n;
    if (mode == DIRECT) {
      size_t room;
      char *target = ember_frame_reader_direct(r, &room);
      check_bound(r, s, off);
      if (target != NULL && (rng() & 3) != 0) {
        CHECK(room > 0);
        n = 1 + (size_t)(rng() % room);
        if (n > left)
          n = left;
        memcpy(target, s->data + off, n);
        CHECK_EQ(ember_frame_reader_advance(r, n), 0);
        off += n;
        check_bound(r, s, off);
        continue;
      }
    }
    n = mode == WHOLE ? left : mode == BYTES ? 1 : 1 + (size_t)(rng() % 70000);
    if (n > left)
      n = left;
    CHECK_EQ(ember_frame_reader_feed(r, (const char *)s->data + off, n), 0);
    off += n;
    check_bound(r, s, off);
  }
  CHECK_EQ(ember_frame_reader_allocated(r), 0);
}

/* A mix: no tensors, empty body, empty and small and big tensors. */
static void sample_stream(stream_t *s) {
  uint64_t a[] = {5, 0, 4095, 4096, 100000};
  uint64_t b[] = {0, 0};
  uint64_t c[] = {300000};
  uint64_t d[] = {1, 2, 3};
  memset(s, 0, sizeof(*s));
  add_frame(s, EMBER_MSG_REQUEST, 10, 0, NULL);
  add_frame(s, EMBER_MSG_RESPONSE, 0, 0, NULL);
  add_frame(s, EMBER_MSG_REQUEST, 300, 5, a);
  add_frame(s, EMBER_MSG_REQUEST, 1, 2, b);
  add_frame(s, EMBER_MSG_ERROR, 70000, 1, c);
  add_frame(s, EMBER_MSG_REQUEST, 0, 3, d);
  add_frame(s, EMBER_MSG_HEARTBEAT, 1, 0, NULL);
}

static void frames_come_out_the_same_in_every_mode(void) {
  stream_t s;
  sample_stream(&s);
  for (int mode = WHOLE; mode <= DIRECT; mode++)
    for (int round = 0; round < (mode >= CHUNKS ? 20 : 1); round++) {
      sink_t sink;
      ember_frame_reader_t *r = new_reader(&sink, NULL);
      sink.check_frames = 1;
      feed_stream(r, &s, (feed_mode_t)mode);
      CHECK_EQ(sink.frames, s.frames);
      CHECK_EQ(sink.headers, s.frames);
      CHECK_EQ(sink.last.kind, EMBER_MSG_HEARTBEAT);
      ember_frame_reader_free(r);
    }
  free(s.data);
}

/* --- Limits ------------------------------------------------------------------ */

/* Feeds `len` bytes and expects EMBER_EINVAL naming `needle`; the reader is
** broken after, and holds nothing. */
static void expect_refused(const ember_wire_limits_t *limits, const void *bytes,
                           size_t len, const char *needle) {
  sink_t sink;
  ember_frame_reader_t *r = new_reader(&sink, limits);
  CHECK_EQ(ember_frame_reader_feed(r, bytes, len), EMBER_EINVAL);
  CHECK_MSG(r, needle);
  CHECK_EQ(sink.frames, 0);
  CHECK_EQ(ember_frame_reader_allocated(r), 0);
  CHECK_EQ(ember_frame_reader_feed(r, bytes, len), EMBER_EINVAL);
  {
    size_t room = 1;
    CHECK(ember_frame_reader_direct(r, &room) == NULL && room == 0);
  }
  ember_frame_reader_free(r);
}

static void header_with(uint8_t out[EMBER_WIRE_HEADER_SIZE], int kind,
                        uint32_t body_len, uint32_t count) {
  ember_frame_header_t h = {EMBER_WIRE_VERSION, (uint8_t)kind, 0, 1, body_len,
                            count};
  ember_wire_pack_header(&h, out);
}

static void every_limit_is_refused_by_name(void) {
  ember_wire_limits_t limits;
  uint8_t frame[EMBER_WIRE_HEADER_SIZE + 16];
  ember_wire_default_limits(&limits);
  limits.max_body = 1000;
  limits.max_tensors = 2;
  limits.max_tensor_bytes = 5000;
  limits.max_payload_bytes = 8000;

  header_with(frame, EMBER_MSG_REQUEST, 0, 0);
  frame[0] ^= 0xff;
  expect_refused(&limits, frame, EMBER_WIRE_HEADER_SIZE, "magic");
  header_with(frame, EMBER_MSG_REQUEST, 0, 0);
  frame[4] = 9;
  expect_refused(&limits, frame, EMBER_WIRE_HEADER_SIZE, "wire version 9");
  header_with(frame, 99, 0, 0);
  expect_refused(&limits, frame, EMBER_WIRE_HEADER_SIZE,
                 "unknown frame kind 99");
  header_with(frame, EMBER_MSG_REQUEST, 1001, 0);
  expect_refused(&limits, frame, EMBER_WIRE_HEADER_SIZE,
                 "frame body of 1001 bytes exceeds the limit of 1000");
  header_with(frame, EMBER_MSG_REQUEST, 0, 3);
  expect_refused(&limits, frame, EMBER_WIRE_HEADER_SIZE,
                 "frame with 3 tensors exceeds the limit of 2");
  /* Lengths: one tensor too big, then two that together are. */
  header_with(frame, EMBER_MSG_REQUEST, 0, 1);
  memset(frame + EMBER_WIRE_HEADER_SIZE, 0, 16);
  frame[EMBER_WIRE_HEADER_SIZE] = 0x89; /* 5001 */
  frame[EMBER_WIRE_HEADER_SIZE + 1] = 0x13;
  expect_refused(&limits, frame, EMBER_WIRE_HEADER_SIZE + 8,
                 "tensor 0 of 5001 bytes exceeds the limit of 5000");
  header_with(frame, EMBER_MSG_REQUEST, 0, 2);
  frame[EMBER_WIRE_HEADER_SIZE] = 0xa0; /* 4000 + 4001 */
  frame[EMBER_WIRE_HEADER_SIZE + 1] = 0x0f;
  frame[EMBER_WIRE_HEADER_SIZE + 8] = 0xa1;
  frame[EMBER_WIRE_HEADER_SIZE + 9] = 0x0f;
  expect_refused(&limits, frame, EMBER_WIRE_HEADER_SIZE + 16,
                 "exceed the frame limit of 8000");
}

/* Limits apply from the next header on (the transport's handshake). */
static void limits_change_between_frames(void) {
  ember_wire_limits_t small, big;
  sink_t sink;
  ember_frame_reader_t *r;
  stream_t s;
  memset(&s, 0, sizeof(s));
  add_frame(&s, EMBER_MSG_HELLO, 50, 0, NULL);
  add_frame(&s, EMBER_MSG_REQUEST, 500, 0, NULL);
  ember_wire_default_limits(&small);
  ember_wire_default_limits(&big);
  small.max_body = 100;
  r = new_reader(&sink, &small);
  CHECK_EQ(ember_frame_reader_feed(r, (const char *)s.data, s.ends[0]), 0);
  CHECK_EQ(sink.frames, 1);
  CHECK_EQ(ember_frame_reader_feed(r, (const char *)s.data + s.ends[0],
                                   s.len - s.ends[0]),
           EMBER_EINVAL);
  CHECK_MSG(r, "frame body of 500 bytes exceeds the limit of 100");
  ember_frame_reader_free(r);
  r = new_reader(&sink, &small);
  CHECK_EQ(ember_frame_reader_feed(r, (const char *)s.data, s.ends[0]), 0);
  ember_frame_reader_set_limits(r, &big);
  CHECK_EQ(ember_frame_reader_feed(r, (const char *)s.data + s.ends[0],
                                   s.len - s.ends[0]),
           0);
  CHECK_EQ(sink.frames, 2);
  ember_frame_reader_free(r);
  free(s.data);
}

/* --- The allocation bound ----------------------------------------------------- */

/* A header declaring `body_len` and payloads of `lengths`, then `extra` bytes
** of the rest, fed in `step`-byte pieces (or read directly when `direct`):
** the bound holds after every call. */
static void trickle(uint32_t body_len, uint32_t count, const uint64_t *lengths,
                    size_t extra, size_t step, int direct) {
  sink_t sink;
  ember_frame_reader_t *r = new_reader(&sink, NULL);
  uint8_t head[EMBER_WIRE_HEADER_SIZE + 8 * 4];
  char *junk = calloc(1, step);
  size_t fed = 0, head_len = EMBER_WIRE_HEADER_SIZE + 8 * (size_t)count;
  header_with(head, EMBER_MSG_REQUEST, body_len, count);
  for (uint32_t t = 0; t < count; t++)
    for (int i = 0; i < 8; i++)
      head[EMBER_WIRE_HEADER_SIZE + 8 * t + i] = (uint8_t)(lengths[t] >> (8 * i));
  CHECK_EQ(ember_frame_reader_feed(r, (const char *)head, head_len), 0);
  fed = head_len;
  CHECK(ember_frame_reader_allocated(r) <= BOUND(fed));
  while (fed < head_len + extra) {
    size_t n = step, room;
    char *target;
    if (fed + n > head_len + extra)
      n = head_len + extra - fed;
    target = direct ? ember_frame_reader_direct(r, &room) : NULL;
    CHECK(ember_frame_reader_allocated(r) <= BOUND(fed));
    if (target != NULL) {
      if (n > room)
        n = room;
      memset(target, 1, n);
      CHECK_EQ(ember_frame_reader_advance(r, n), 0);
    } else {
      CHECK_EQ(ember_frame_reader_feed(r, junk, n), 0);
    }
    fed += n;
    CHECK(ember_frame_reader_allocated(r) <= BOUND(fed));
  }
  CHECK_EQ(sink.frames, 0);
  /* A little was allocated, far less than what was declared. */
  CHECK(ember_frame_reader_allocated(r) > 0 || extra == 0);
  ember_frame_reader_free(r);
  free(junk);
}

static void huge_declarations_allocate_as_bytes_arrive(void) {
  uint64_t huge[] = {UINT64_C(16) << 30};
  uint64_t several[] = {UINT64_C(4) << 30, UINT64_C(1) << 30, 7,
                        UINT64_C(8) << 30};
  uint64_t mib[] = {UINT64_C(1) << 20};
  sink_t sink;
  ember_frame_reader_t *r = new_reader(&sink, NULL);
  uint8_t head[EMBER_WIRE_HEADER_SIZE];

  /* A 24-byte header declaring a 64 MiB body allocates nothing yet. */
  header_with(head, EMBER_MSG_REQUEST, UINT32_C(64) << 20, 0);
  CHECK_EQ(ember_frame_reader_feed(r, (const char *)head, sizeof(head)), 0);
  CHECK_EQ(ember_frame_reader_allocated(r), 0);
  CHECK_EQ(ember_frame_reader_feed(r, "x", 1), 0);
  CHECK(ember_frame_reader_allocated(r) > 0 &&
        ember_frame_reader_allocated(r) <= BOUND(25));
  ember_frame_reader_free(r);

  trickle(UINT32_C(64) << 20, 0, NULL, 1000, 1, 0);
  trickle(UINT32_C(64) << 20, 0, NULL, 3 << 20, 65536, 0);
  trickle(UINT32_C(64) << 20, 0, NULL, 3 << 20, 65536, 1);
  trickle(10, 1, huge, 100000, 1000, 0);
  trickle(10, 1, huge, 4 << 20, 65536, 1);
  trickle(0, 4, several, 3 << 20, 40000, 1);
  trickle(0, 1, mib, 200000, 4096, 0);
  trickle(0, 1, mib, 200000, 4096, 1);
}

/* --- Callbacks -------------------------------------------------------------- */

static void on_header_refuses_before_allocating(void) {
  uint64_t big[] = {UINT64_C(1) << 30};
  sink_t sink;
  ember_frame_reader_t *r;
  stream_t s;
  memset(&s, 0, sizeof(s));
  add_frame(&s, EMBER_MSG_REQUEST, 100, 0, NULL);
  r = new_reader(&sink, NULL);
  sink.refuse_kind = EMBER_MSG_REQUEST;
  CHECK_EQ(ember_frame_reader_feed(r, (const char *)s.data, s.len),
           UV_ECANCELED);
  CHECK_EQ(sink.headers, 1);
  CHECK_EQ(sink.frames, 0);
  CHECK_EQ(ember_frame_reader_allocated(r), 0);
  ember_frame_reader_free(r);
  /* The same with payloads declared: nothing for their lengths either. */
  {
    uint8_t head[EMBER_WIRE_HEADER_SIZE + 8];
    header_with(head, EMBER_MSG_RESPONSE, 10, 1);
    memcpy(head + EMBER_WIRE_HEADER_SIZE, big, 8);
    r = new_reader(&sink, NULL);
    sink.refuse_kind = EMBER_MSG_RESPONSE;
    CHECK_EQ(ember_frame_reader_feed(r, (const char *)head, sizeof(head)),
             UV_ECANCELED);
    CHECK_EQ(ember_frame_reader_allocated(r), 0);
    ember_frame_reader_free(r);
  }
  free(s.data);
}

/* on_frame stops the reader at once; the rest can be fed later. */
static void on_frame_stops_the_reader(void) {
  sink_t sink;
  ember_frame_reader_t *r;
  stream_t s;
  sample_stream(&s);
  r = new_reader(&sink, NULL);
  sink.check_frames = 1;
  sink.stop_after = 1;
  CHECK_EQ(ember_frame_reader_feed(r, (const char *)s.data, s.len),
           UV_ECANCELED);
  CHECK_EQ(sink.frames, 1);
  sink.stop_after = 0;
  CHECK_EQ(ember_frame_reader_feed(r, (const char *)s.data + s.ends[0],
                                   s.len - s.ends[0]),
           0);
  CHECK_EQ(sink.frames, s.frames);
  ember_frame_reader_free(r);
  free(s.data);
}

static void advance_past_the_room_is_refused(void) {
  sink_t sink;
  ember_frame_reader_t *r = new_reader(&sink, NULL);
  uint8_t head[EMBER_WIRE_HEADER_SIZE];
  size_t room;
  char *target;
  header_with(head, EMBER_MSG_REQUEST, 100000, 0);
  CHECK(ember_frame_reader_direct(r, &room) == NULL && room == 0);
  CHECK_EQ(ember_frame_reader_feed(r, (const char *)head, sizeof(head)), 0);
  target = ember_frame_reader_direct(r, &room);
  CHECK(target != NULL && room > 0 && room <= 100000);
  CHECK_EQ(ember_frame_reader_advance(r, room + 1), EMBER_EINVAL);
  CHECK_MSG(r, "only");
  ember_frame_reader_free(r);
}

/* --- Big tensors ---------------------------------------------------------------- */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Reads one frame with a tensor of `bytes` as the transport does (directly
** when at least 16 KiB fit, else 64 KiB through a staging buffer). */
static void big_tensor_arrives_intact(uint64_t bytes) {
  sink_t sink;
  ember_frame_reader_t *r = new_reader(&sink, NULL);
  stream_t s;
  static char staging[65536];
  size_t off = 0;
  double start;
  memset(&s, 0, sizeof(s));
  add_frame(&s, EMBER_MSG_REQUEST, 40, 1, &bytes);
  sink.check_frames = 1;
  start = now_s();
  while (off < s.len) {
    size_t room, n;
    char *target = ember_frame_reader_direct(r, &room);
    if (target != NULL && room >= 16384) {
      n = room < s.len - off ? room : s.len - off;
      memcpy(target, s.data + off, n);
      CHECK_EQ(ember_frame_reader_advance(r, n), 0);
    } else {
      n = sizeof(staging) < s.len - off ? sizeof(staging) : s.len - off;
      memcpy(staging, s.data + off, n);
      CHECK_EQ(ember_frame_reader_feed(r, staging, n), 0);
    }
    off += n;
    check_bound(r, &s, off);
  }
  CHECK_EQ(sink.frames, 1);
  /* The early bytes copied: about 1/7 of the tensor, never more than 1/6. */
  CHECK(ember_frame_reader_staged_bytes(r) * 6 <= bytes);
  printf("# %llu-byte tensor: %.2f ms, %llu bytes staged (1/%.1f)\n",
         (unsigned long long)bytes, (now_s() - start) * 1e3,
         (unsigned long long)ember_frame_reader_staged_bytes(r),
         ember_frame_reader_staged_bytes(r) > 0
             ? (double)bytes / (double)ember_frame_reader_staged_bytes(r)
             : 0.0);
  ember_frame_reader_free(r);
  free(s.data);
}

static void one_mib_tensor_arrives_intact(void) {
  big_tensor_arrives_intact(UINT64_C(1) << 20);
}

static void sixty_four_mib_tensor_arrives_intact(void) {
  big_tensor_arrives_intact(UINT64_C(64) << 20);
}

/* --- Random input -------------------------------------------------------------- */

/* Random bytes, and valid headers followed by random bytes, in random chunks:
** the reader refuses or waits, and the bound always holds. */
static void random_input_keeps_the_bound(void) {
  static uint8_t buf[200000];
  for (int round = 0; round < 300; round++) {
    sink_t sink;
    ember_frame_reader_t *r = new_reader(&sink, NULL);
    size_t len = 1 + (size_t)(rng() % sizeof(buf)), off = 0;
    uint64_t fed = 0;
    for (size_t i = 0; i < len; i++)
      buf[i] = (uint8_t)rng();
    if (round % 2 == 0 && len >= EMBER_WIRE_HEADER_SIZE + 8) {
      header_with(buf, EMBER_MSG_REQUEST, (uint32_t)(rng() % (64u << 20)),
                  (uint32_t)(rng() % 3));
      buf[EMBER_WIRE_HEADER_SIZE + 4] = 0; /* lengths within the limits */
      buf[EMBER_WIRE_HEADER_SIZE + 5] = 0;
      buf[EMBER_WIRE_HEADER_SIZE + 6] = 0;
      buf[EMBER_WIRE_HEADER_SIZE + 7] = 0;
    }
    while (off < len) {
      size_t n = 1 + (size_t)(rng() % 5000), room;
      int err;
      if (n > len - off)
        n = len - off;
      if ((rng() & 1) && ember_frame_reader_direct(r, &room) != NULL) {
        CHECK(ember_frame_reader_allocated(r) <= BOUND(fed));
        n = n < room ? n : room;
        err = ember_frame_reader_advance(r, n);
      } else {
        err = ember_frame_reader_feed(r, (const char *)buf + off, n);
      }
      fed += n;
      if (err != 0) {
        CHECK_EQ(err, EMBER_EINVAL);
        CHECK(strlen(ember_frame_reader_error(r)) > 0);
        break;
      }
      if (sink.frames > 0)
        break; /* a frame ended inside: where the next began is unknown */
      CHECK(ember_frame_reader_allocated(r) <= BOUND(fed));
      off += n;
    }
    ember_frame_reader_free(r);
  }
}

CHECK_MAIN(CHECK_TEST(frames_come_out_the_same_in_every_mode),
           CHECK_TEST(every_limit_is_refused_by_name),
           CHECK_TEST(limits_change_between_frames),
           CHECK_TEST(huge_declarations_allocate_as_bytes_arrive),
           CHECK_TEST(on_header_refuses_before_allocating),
           CHECK_TEST(on_frame_stops_the_reader),
           CHECK_TEST(advance_past_the_room_is_refused),
           CHECK_TEST(one_mib_tensor_arrives_intact),
           CHECK_TEST(sixty_four_mib_tensor_arrives_intact),
           CHECK_TEST(random_input_keeps_the_bound))
