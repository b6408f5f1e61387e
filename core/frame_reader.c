/*
** The frame reader: a resumable parser of frames (header, tensor lengths,
** body, payloads) that allocates no faster than bytes arrive. See
** frame_reader.h for the bound it keeps and what it counts.
*/
#include "frame_reader.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

/* tensor.c's rounding of CPU storage (cpu_alloc_uninit): blocks of 4 MiB or
** more are whole 2 MiB huge pages, smaller ones 64-byte aligned. Kept in step
** by hand; the reader only uses it to count what it holds. */
#define STORAGE_HUGE_MIN (UINT64_C(4) << 20)
#define STORAGE_HUGE_PAGE (UINT64_C(2) << 20)
#define STORAGE_ALIGN 64
/* Each big payload's tensor and storage objects. */
#define TENSOR_OBJECT_COST (sizeof(ember_tensor_t) + sizeof(ember_storage_t))
/* A buffer's first allocation, unless its part is smaller. */
#define MIN_BUFFER 256

typedef enum {
  READ_HEADER,
  READ_LENGTHS,
  READ_BODY,
  READ_PAYLOAD,
  READ_BROKEN
} read_state_t;

/* A buffer that grows as bytes arrive. */
typedef struct {
  char *data;
  size_t len; /* bytes in it */
  size_t cap; /* bytes allocated */
} grow_buf_t;

struct ember_frame_reader_s {
  ember_wire_limits_t limits;       /* for the next header */
  ember_wire_limits_t frame_limits; /* those the current header passed */
  ember_frame_reader_callbacks_t cb;
  read_state_t state;
  int broken; /* the code every call returns once broken */
  uint8_t header_bytes[EMBER_WIRE_HEADER_SIZE];
  size_t header_have;
  ember_frame_t frame;  /* header and payloads array while reading */
  grow_buf_t lengths;   /* the lengths table, decoded in place */
  grow_buf_t body;
  grow_buf_t small;     /* small payloads back to back */
  grow_buf_t early;     /* first bytes of a big payload without storage */
  uint64_t small_total; /* bytes of all small payloads of the frame */
  uint32_t index;       /* the payload being read */
  uint64_t payload_have;
  uint64_t frame_bytes; /* of the current frame, received so far */
  size_t allocated;     /* counted as the header comment says */
  size_t direct_room;   /* what the last direct() offered */
  uint64_t staged;      /* bytes copied from early buffers */
  char error[256];
};

/* --- Frames ------------------------------------------------------------------ */

void ember_frame_free(ember_frame_t *frame) {
  free(frame->body);
  frame->body = NULL;
  if (frame->payloads != NULL) {
    for (uint32_t i = 0; i < frame->header.tensor_count; i++)
      ember_tensor_release(frame->payloads[i]);
    free(frame->payloads);
    frame->payloads = NULL;
  }
}

/* --- Errors and accounting ------------------------------------------------- */

static int fail(ember_frame_reader_t *r, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

static void drop_frame(ember_frame_reader_t *r);

/* Breaks the reader: the partial frame is freed and every later call
** returns `code`. */
static int fail(ember_frame_reader_t *r, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->error, sizeof(r->error), fmt, ap);
  va_end(ap);
  drop_frame(r);
  r->state = READ_BROKEN;
  r->broken = code;
  return code;
}

static uint64_t budget(const ember_frame_reader_t *r) {
  return 8 * r->frame_bytes + EMBER_FRAME_READER_SLACK;
}

/* Bytes still allowed by the bound (0 when at or over it). */
static uint64_t headroom(const ember_frame_reader_t *r) {
  uint64_t b = budget(r);
  return b > r->allocated ? b - r->allocated : 0;
}

static uint64_t storage_cost(uint64_t len) {
  uint64_t align = len >= STORAGE_HUGE_MIN ? STORAGE_HUGE_PAGE : STORAGE_ALIGN;
  if (len == 0)
    len = 1;
  return (len + align - 1) / align * align + TENSOR_OBJECT_COST;
}

static int is_big(uint64_t len) {
  return len >= EMBER_FRAME_READER_SMALL_PAYLOAD;
}

static void buf_free(ember_frame_reader_t *r, grow_buf_t *b) {
  r->allocated -= b->cap;
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

/*
** Makes `b` hold at least `need` bytes, growing it geometrically up to
** `limit` as far as the bound allows (`force`: `need` bytes in any case, for
** bytes that have arrived). Returns 0 when it holds `need` bytes, 1 when the
** bound does not allow that yet (it may still have grown), or EMBER_ENOMEM.
*/
static int buf_reserve(ember_frame_reader_t *r, grow_buf_t *b, size_t need,
                       size_t limit, int force) {
  size_t want = b->cap * 2;
  uint64_t affordable = b->cap + headroom(r);
  char *grown;
  if (need <= b->cap)
    return 0;
  if (want < need)
    want = need;
  if (want < MIN_BUFFER)
    want = MIN_BUFFER;
  if (want > limit)
    want = limit;
  if (want > affordable)
    want = affordable > need || !force ? (size_t)affordable : need;
  if (want <= b->cap)
    return 1;
  if ((grown = realloc(b->data, want)) == NULL)
    return EMBER_ENOMEM;
  r->allocated += want - b->cap;
  b->data = grown;
  b->cap = want;
  return want >= need ? 0 : 1;
}

/* Frees everything held for the current frame and expects a header. */
static void drop_frame(ember_frame_reader_t *r) {
  ember_frame_free(&r->frame);
  memset(&r->frame, 0, sizeof(r->frame));
  buf_free(r, &r->lengths);
  buf_free(r, &r->body);
  buf_free(r, &r->small);
  buf_free(r, &r->early);
  r->allocated = 0;
  r->frame_bytes = 0;
  r->header_have = 0;
  r->state = READ_HEADER;
}

/* --- Life cycle -------------------------------------------------------------- */

ember_frame_reader_t *ember_frame_reader_new(
    const ember_wire_limits_t *limits,
    const ember_frame_reader_callbacks_t *cb) {
  ember_frame_reader_t *r = calloc(1, sizeof(*r));
  if (r == NULL)
    return NULL;
  r->limits = *limits;
  r->cb = *cb;
  r->state = READ_HEADER;
  return r;
}

void ember_frame_reader_free(ember_frame_reader_t *r) {
  if (r == NULL)
    return;
  drop_frame(r);
  free(r);
}

void ember_frame_reader_set_limits(ember_frame_reader_t *r,
                                   const ember_wire_limits_t *limits) {
  r->limits = *limits;
}

const char *ember_frame_reader_error(const ember_frame_reader_t *r) {
  return r->error[0] != '\0' ? r->error : "no error";
}

size_t ember_frame_reader_allocated(const ember_frame_reader_t *r) {
  return r->allocated;
}

uint64_t ember_frame_reader_staged_bytes(const ember_frame_reader_t *r) {
  return r->staged;
}

/* --- Payloads ---------------------------------------------------------------- */

static uint64_t payload_len(const ember_frame_reader_t *r, uint32_t i) {
  return ((const uint64_t *)(const void *)r->lengths.data)[i];
}

/*
** Gives the current big payload its storage once the bound allows it
** (`force`: now, the payload being complete), moving its early bytes there.
** Returns 0 (done or not yet) or EMBER_ENOMEM.
*/
static int place_payload(ember_frame_reader_t *r, int force) {
  uint64_t len = payload_len(r, r->index);
  uint64_t cost = storage_cost(len);
  int64_t shape[1] = {(int64_t)len};
  ember_tensor_t *raw;
  if (!force && cost > headroom(r))
    return 0;
  if ((raw = ember_tensor_empty(shape, 1, EMBER_UINT8)) == NULL)
    return fail(r, EMBER_ENOMEM, "out of memory for a %llu-byte tensor",
                (unsigned long long)len);
  r->allocated += cost;
  if (r->early.len > 0) {
    memcpy(raw->storage->data, r->early.data, r->early.len);
    r->staged += r->early.len;
  }
  buf_free(r, &r->early);
  r->frame.payloads[r->index] = raw;
  return 0;
}

/*
** How many early bytes the current big payload needs before its storage fits
** the bound: with e bytes in a buffer of e bytes, storage fits once
** others + e + cost <= 8 (before + e) + slack.
*/
static uint64_t early_target(const ember_frame_reader_t *r) {
  uint64_t len = payload_len(r, r->index);
  uint64_t others = r->allocated - r->early.cap;
  uint64_t before = r->frame_bytes - r->early.len;
  uint64_t need = others + storage_cost(len);
  uint64_t have = 8 * before + EMBER_FRAME_READER_SLACK;
  uint64_t target = need > have ? (need - have + 6) / 7 : 0;
  return target < len ? target : len;
}

/* The small payloads become tensors of their own (copied out). */
static int make_small_payloads(ember_frame_reader_t *r) {
  uint64_t offset = 0;
  for (uint32_t i = 0; i < r->frame.header.tensor_count; i++) {
    uint64_t len = payload_len(r, i);
    int64_t shape[1] = {(int64_t)len};
    if (is_big(len))
      continue;
    if ((r->frame.payloads[i] = ember_tensor_empty(shape, 1, EMBER_UINT8)) ==
        NULL)
      return fail(r, EMBER_ENOMEM, "out of memory for a %llu-byte tensor",
                  (unsigned long long)len);
    if (len > 0)
      memcpy(r->frame.payloads[i]->storage->data, r->small.data + offset, len);
    offset += len;
  }
  return 0;
}

/* --- Parts ------------------------------------------------------------------- */

static int begin_payload(ember_frame_reader_t *r);

/* The frame is complete: hand it over and expect the next header. */
static int deliver(ember_frame_reader_t *r) {
  ember_frame_t frame;
  size_t body_len = r->frame.header.body_len;
  int err;
  if (r->frame.payloads != NULL && (err = make_small_payloads(r)) != 0)
    return err;
  /* The body keeps one spare byte (a terminator for whoever wants one). */
  if (buf_reserve(r, &r->body, body_len + 1, body_len + 1, 1) != 0)
    return fail(r, EMBER_ENOMEM, "out of memory for a %zu-byte frame body",
                body_len);
  r->body.data[body_len] = '\0';
  frame = r->frame;
  frame.body = r->body.data;
  r->body.data = NULL;
  r->body.len = r->body.cap = 0;
  memset(&r->frame, 0, sizeof(r->frame));
  drop_frame(r);
  return r->cb.on_frame(r->cb.user, &frame);
}

static int begin_body(ember_frame_reader_t *r) {
  r->state = READ_BODY;
  if (r->frame.header.body_len == 0) {
    r->index = 0;
    return begin_payload(r);
  }
  return 0;
}

/* Moves to payload r->index, skipping empty ones; delivers after the last. */
static int begin_payload(ember_frame_reader_t *r) {
  r->payload_have = 0;
  while (r->index < r->frame.header.tensor_count) {
    uint64_t len = payload_len(r, r->index);
    if (len > 0) {
      r->state = READ_PAYLOAD;
      return is_big(len) ? place_payload(r, 0) : 0;
    }
    r->index++;
  }
  return deliver(r);
}

static int finish_header(ember_frame_reader_t *r) {
  ember_frame_header_t header;
  int err;
  if (ember_wire_unpack_header(r->header_bytes, &r->limits, &header) != 0)
    return fail(r, EMBER_EINVAL, "%s", ember_wire_error());
  if (r->cb.on_header != NULL &&
      (err = r->cb.on_header(r->cb.user, &header)) != 0) {
    drop_frame(r);
    return err;
  }
  r->frame_limits = r->limits;
  r->frame.header = header;
  r->index = 0;
  r->small_total = 0;
  if (header.tensor_count > 0) {
    r->state = READ_LENGTHS;
    return 0;
  }
  return begin_body(r);
}

static int finish_lengths(ember_frame_reader_t *r) {
  uint32_t count = r->frame.header.tensor_count;
  uint8_t *bytes = (uint8_t *)r->lengths.data;
  /* Decoded in place: each entry is read whole before its slot is written. */
  if (ember_wire_unpack_lengths(bytes, count, &r->frame_limits,
                                (uint64_t *)(void *)bytes) != 0)
    return fail(r, EMBER_EINVAL, "%s", ember_wire_error());
  /* 8 bytes each, paid for by the table just read. */
  if ((r->frame.payloads = calloc(count, sizeof(ember_tensor_t *))) == NULL)
    return fail(r, EMBER_ENOMEM, "out of memory for %u tensors",
                (unsigned)count);
  r->allocated += count * sizeof(ember_tensor_t *);
  for (uint32_t i = 0; i < count; i++)
    if (!is_big(payload_len(r, i)))
      r->small_total += payload_len(r, i);
  return begin_body(r);
}

/* Bytes the current part still lacks (never 0 while reading a part). */
static uint64_t part_left(const ember_frame_reader_t *r) {
  switch (r->state) {
  case READ_HEADER:
    return EMBER_WIRE_HEADER_SIZE - r->header_have;
  case READ_LENGTHS:
    return 8 * (uint64_t)r->frame.header.tensor_count - r->lengths.len;
  case READ_BODY:
    return r->frame.header.body_len - r->body.len;
  case READ_PAYLOAD:
    return payload_len(r, r->index) - r->payload_have;
  case READ_BROKEN:
    break;
  }
  return 0;
}

/* The buffer and its limit for the current part, or NULL for the header and
** a big payload that has its storage. */
static grow_buf_t *part_buffer(ember_frame_reader_t *r, size_t *limit) {
  switch (r->state) {
  case READ_LENGTHS:
    *limit = 8 * (size_t)r->frame.header.tensor_count;
    return &r->lengths;
  case READ_BODY:
    *limit = (size_t)r->frame.header.body_len + 1;
    return &r->body;
  case READ_PAYLOAD:
    if (!is_big(payload_len(r, r->index))) {
      *limit = (size_t)r->small_total;
      return &r->small;
    }
    if (r->frame.payloads[r->index] == NULL) {
      *limit = (size_t)early_target(r);
      return &r->early;
    }
    return NULL;
  default:
    return NULL;
  }
}

/*
** Where the current part's next bytes go, with room for `need` of them at
** least (when the bound allows: bytes already counted always fit) and up to
** `want`. *room gets how many fit; NULL on EMBER_ENOMEM (*err set).
*/
static char *part_target(ember_frame_reader_t *r, uint64_t need,
                         uint64_t want, uint64_t *room, int *err) {
  grow_buf_t *b;
  size_t limit;
  *err = 0;
  if (r->state == READ_HEADER) {
    *room = EMBER_WIRE_HEADER_SIZE - r->header_have;
    return (char *)r->header_bytes + r->header_have;
  }
  if (r->state == READ_PAYLOAD && is_big(payload_len(r, r->index)) &&
      r->frame.payloads[r->index] == NULL &&
      (*err = place_payload(r, 0)) != 0)
    return NULL;
  if ((b = part_buffer(r, &limit)) == NULL) {
    ember_tensor_t *raw = r->frame.payloads[r->index];
    *room = raw->storage->nbytes - r->payload_have;
    return (char *)raw->storage->data + r->payload_have;
  }
  if (limit < b->len + need)
    limit = b->len + need; /* an early buffer may pass its target */
  if (b->cap - b->len < want) {
    /* Bytes already counted always fit: 8 x their count is allowed. */
    int got = buf_reserve(r, b, b->len + want, limit, 0);
    if (got == 1 && need > 0)
      got = buf_reserve(r, b, b->len + need, limit, 1);
    if (got < 0) {
      *err = fail(r, got, "out of memory reading a frame");
      return NULL;
    }
  }
  *room = b->cap - b->len;
  return b->data + b->len;
}

/* `n` bytes of the current part arrived where part_target said. */
static int part_received(ember_frame_reader_t *r, size_t n) {
  uint64_t left;
  switch (r->state) {
  case READ_HEADER:
    r->header_have += n;
    return r->header_have == EMBER_WIRE_HEADER_SIZE ? finish_header(r) : 0;
  case READ_LENGTHS:
    r->lengths.len += n;
    return part_left(r) == 0 ? finish_lengths(r) : 0;
  case READ_BODY:
    r->body.len += n;
    if (part_left(r) > 0)
      return 0;
    r->index = 0;
    return begin_payload(r);
  case READ_PAYLOAD:
    r->payload_have += n;
    left = part_left(r);
    if (!is_big(payload_len(r, r->index))) {
      r->small.len += n;
    } else if (r->frame.payloads[r->index] == NULL) {
      int err;
      r->early.len += n;
      if ((err = place_payload(r, left == 0)) != 0)
        return err;
    }
    if (left > 0)
      return 0;
    r->index++;
    return begin_payload(r);
  case READ_BROKEN:
    break;
  }
  return r->broken;
}

/* --- Feeding ----------------------------------------------------------------- */

int ember_frame_reader_feed(ember_frame_reader_t *r, const char *data,
                            size_t len) {
  r->direct_room = 0;
  while (len > 0) {
    uint64_t left, room;
    size_t n;
    char *target;
    int err;
    if (r->state == READ_BROKEN)
      return r->broken;
    left = part_left(r);
    n = len < left ? len : (size_t)left;
    r->frame_bytes += n; /* counted first: room for them is always allowed */
    if ((target = part_target(r, n, n, &room, &err)) == NULL)
      return err;
    memcpy(target, data, n);
    data += n;
    len -= n;
    if ((err = part_received(r, n)) != 0)
      return err;
  }
  return r->state == READ_BROKEN ? r->broken : 0;
}

char *ember_frame_reader_direct(ember_frame_reader_t *r, size_t *room) {
  uint64_t left, got;
  char *target;
  int err;
  *room = 0;
  r->direct_room = 0;
  if (r->state != READ_BODY && r->state != READ_PAYLOAD)
    return NULL;
  left = part_left(r);
  /* As much as the bound allows: fewer, bigger reads. */
  target = part_target(r, 0, left, &got, &err);
  if (target == NULL || got == 0)
    return NULL;
  if (got > left)
    got = left;
  *room = r->direct_room = (size_t)got;
  return target;
}

int ember_frame_reader_advance(ember_frame_reader_t *r, size_t n) {
  if (r->state == READ_BROKEN)
    return r->broken;
  if (n > r->direct_room)
    return fail(r, EMBER_EINVAL,
                "advanced by %zu bytes but only %zu were offered", n,
                r->direct_room);
  r->direct_room = 0;
  if (n == 0)
    return 0;
  r->frame_bytes += n;
  return part_received(r, n);
}
