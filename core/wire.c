/*
** The wire format: frame headers, the tensor lengths table, the checks a
** msgpack body passes before anything is allocated for it, outgoing messages
** (body buffer and tensor payloads) and incoming tensors.
**
** Header fields are little-endian; msgpack's own fields are big-endian. Both
** are read and written with explicit byte shifts, so the host's byte order
** never matters.
*/
#include "wire.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

/* Nesting is never allowed deeper than this, whatever the limits say: the
** decoder recurses once per level. */
#define WIRE_DEPTH_CEILING 64

/* ---- Errors -------------------------------------------------------------- */

static _Thread_local char last_error[512];

const char *ember_wire_error(void) {
  return last_error[0] != '\0' ? last_error : "wire operation failed";
}

int ember__wire_fail(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
  return code;
}

/* ---- Byte order ---------------------------------------------------------- */

static void put_le(uint8_t *out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; i++) out[i] = (uint8_t)(value >> (8 * i));
}

static uint64_t get_le(const uint8_t *in, int bytes) {
  uint64_t value = 0;
  for (int i = 0; i < bytes; i++) value |= (uint64_t)in[i] << (8 * i);
  return value;
}

static uint64_t get_be(const uint8_t *in, int bytes) {
  uint64_t value = 0;
  for (int i = 0; i < bytes; i++) value = (value << 8) | in[i];
  return value;
}

/* ---- Limits and header --------------------------------------------------- */

void ember_wire_default_limits(ember_wire_limits_t *limits) {
  limits->max_body = UINT32_C(64) << 20;
  limits->max_tensors = 4096;
  limits->max_tensor_bytes = UINT64_C(16) << 30;
  limits->max_payload_bytes = UINT64_C(16) << 30;
  limits->max_depth = WIRE_DEPTH_CEILING;
  limits->max_string = UINT32_C(64) << 20;
}

void ember_wire_pack_header(const ember_frame_header_t *header,
                            uint8_t out[EMBER_WIRE_HEADER_SIZE]) {
  put_le(out, EMBER_WIRE_MAGIC, 4);
  out[4] = header->version;
  out[5] = header->kind;
  put_le(out + 6, header->flags, 2);
  put_le(out + 8, header->request_id, 8);
  put_le(out + 16, header->body_len, 4);
  put_le(out + 20, header->tensor_count, 4);
}

static int is_known_kind(unsigned kind) {
  switch (kind) {
  case EMBER_MSG_HELLO: case EMBER_MSG_WELCOME: case EMBER_MSG_AUTH:
  case EMBER_MSG_REQUEST: case EMBER_MSG_RESPONSE: case EMBER_MSG_ERROR:
  case EMBER_MSG_HEARTBEAT: case EMBER_MSG_GOODBYE: case EMBER_MSG_GOODBYE_ACK:
  case EMBER_MSG_RREF_FORK: case EMBER_MSG_RREF_CONFIRM:
  case EMBER_MSG_RREF_DELETE: case EMBER_MSG_RREF_DELETE_ACK:
  case EMBER_MSG_RREF_CHILD_ACCEPT: case EMBER_MSG_RREF_CHILD_ACCEPT_ACK:
    return 1;
  default:
    return 0;
  }
}

int ember_wire_unpack_header(const uint8_t in[EMBER_WIRE_HEADER_SIZE],
                             const ember_wire_limits_t *limits,
                             ember_frame_header_t *out) {
  uint32_t magic = (uint32_t)get_le(in, 4);
  if (magic != EMBER_WIRE_MAGIC) {
    return ember__wire_fail(EMBER_EINVAL,
                            "bad frame magic 0x%08x (expected 0x%08x): the "
                            "peer does not speak ember's protocol",
                            (unsigned)magic, (unsigned)EMBER_WIRE_MAGIC);
  }
  ember_frame_header_t h;
  h.version = in[4];
  h.kind = in[5];
  h.flags = (uint16_t)get_le(in + 6, 2);
  h.request_id = get_le(in + 8, 8);
  h.body_len = (uint32_t)get_le(in + 16, 4);
  h.tensor_count = (uint32_t)get_le(in + 20, 4);
  if (h.version != EMBER_WIRE_VERSION) {
    return ember__wire_fail(EMBER_EINVAL,
                            "unsupported wire version %u (this build speaks "
                            "version %u)",
                            (unsigned)h.version, (unsigned)EMBER_WIRE_VERSION);
  }
  if (!is_known_kind(h.kind)) {
    return ember__wire_fail(EMBER_EINVAL, "unknown frame kind %u",
                            (unsigned)h.kind);
  }
  if (h.body_len > limits->max_body) {
    return ember__wire_fail(EMBER_EINVAL,
                            "frame body of %u bytes exceeds the limit of %u",
                            (unsigned)h.body_len, (unsigned)limits->max_body);
  }
  if (h.tensor_count > limits->max_tensors) {
    return ember__wire_fail(EMBER_EINVAL,
                            "frame with %u tensors exceeds the limit of %u",
                            (unsigned)h.tensor_count,
                            (unsigned)limits->max_tensors);
  }
  *out = h;
  return 0;
}

int ember_wire_unpack_lengths(const uint8_t *in, uint32_t count,
                              const ember_wire_limits_t *limits,
                              uint64_t *lengths) {
  if (count > limits->max_tensors) {
    return ember__wire_fail(EMBER_EINVAL,
                            "frame with %u tensors exceeds the limit of %u",
                            (unsigned)count, (unsigned)limits->max_tensors);
  }
  uint64_t total = 0;
  for (uint32_t i = 0; i < count; i++) {
    uint64_t n = get_le(in + 8 * (size_t)i, 8);
    if (n > limits->max_tensor_bytes) {
      return ember__wire_fail(EMBER_EINVAL,
                              "tensor %u of %llu bytes exceeds the limit of "
                              "%llu",
                              (unsigned)i, (unsigned long long)n,
                              (unsigned long long)limits->max_tensor_bytes);
    }
    /* Compared before adding, so the running total never wraps. */
    if (n > limits->max_payload_bytes - total) {
      return ember__wire_fail(EMBER_EINVAL,
                              "tensor payloads of more than %llu bytes (at "
                              "tensor %u) exceed the frame limit of %llu",
                              (unsigned long long)limits->max_payload_bytes,
                              (unsigned)i,
                              (unsigned long long)limits->max_payload_bytes);
    }
    total += n;
    lengths[i] = n;
  }
  return 0;
}

/* ---- Reading msgpack ----------------------------------------------------- */

const char *ember_wire_token_name(ember_wire_token_type_t type) {
  static const char *const names[] = {"nil", "bool", "int", "uint", "float",
                                      "str", "bin", "array", "map", "ext"};
  return (unsigned)type < sizeof names / sizeof names[0] ? names[type] : "?";
}

/* Fails unless `need` more bytes follow `at`. */
static int need_bytes(size_t len, size_t at, size_t need, const char *what,
                      size_t start) {
  if (need <= len - at) return 0;
  return ember__wire_fail(EMBER_EINVAL,
                          "msgpack body: truncated %s at byte %zu (needs %zu "
                          "bytes, only %zu left)",
                          what, start, need, len - at);
}

/* A str/bin/ext whose `width`-byte length (and, for ext, a type byte)
** follows the format byte. */
static int read_sized(const uint8_t *p, size_t len, size_t *pos, int width,
                      int is_ext, ember_wire_token_t *tok) {
  size_t start = *pos, at = start + 1;
  const char *what = ember_wire_token_name(tok->type);
  if (need_bytes(len, at, (size_t)width + (is_ext ? 1 : 0), what, start) < 0)
    return EMBER_EINVAL;
  tok->length = (uint32_t)get_be(p + at, width);
  at += (size_t)width;
  if (is_ext) tok->ext_type = (int8_t)p[at++];
  if (tok->length > len - at) {
    return ember__wire_fail(EMBER_EINVAL,
                            "msgpack body: %s of %u bytes at byte %zu but only "
                            "%zu bytes left",
                            what, (unsigned)tok->length, start, len - at);
  }
  tok->data = (const char *)p + at;
  *pos = at + tok->length;
  return 0;
}

/* fixext 1/2/4/8/16: the type byte, then `size` bytes. */
static int read_fixext(const uint8_t *p, size_t len, size_t *pos,
                       uint32_t size, ember_wire_token_t *tok) {
  size_t start = *pos;
  if (need_bytes(len, start + 1, 1 + (size_t)size, "ext", start) < 0)
    return EMBER_EINVAL;
  tok->type = EMBER_WIRE_EXT;
  tok->ext_type = (int8_t)p[start + 1];
  tok->length = size;
  tok->data = (const char *)p + start + 2;
  *pos = start + 2 + size;
  return 0;
}

/* A big-endian number of `width` bytes after the format byte. */
static int read_fixed(const uint8_t *p, size_t len, size_t *pos, int width,
                      ember_wire_token_type_t type, uint64_t *value) {
  size_t start = *pos;
  if (need_bytes(len, start + 1, (size_t)width, ember_wire_token_name(type),
                 start) < 0)
    return EMBER_EINVAL;
  *value = get_be(p + start + 1, width);
  *pos = start + 1 + (size_t)width;
  return 0;
}

static int read_number(const uint8_t *p, size_t len, size_t *pos, uint8_t b,
                       ember_wire_token_t *tok) {
  static const int widths[] = {1, 2, 4, 8};
  uint64_t raw;
  if (b == 0xca || b == 0xcb) {
    tok->type = EMBER_WIRE_FLOAT;
    if (read_fixed(p, len, pos, b == 0xca ? 4 : 8, tok->type, &raw) < 0)
      return EMBER_EINVAL;
    if (b == 0xca) {
      uint32_t bits = (uint32_t)raw;
      float f;
      memcpy(&f, &bits, sizeof f);
      tok->v.f = f;
    } else {
      memcpy(&tok->v.f, &raw, sizeof tok->v.f);
    }
    return 0;
  }
  int is_signed = b >= 0xd0;
  int width = widths[b & 0x03];
  tok->type = EMBER_WIRE_INT;
  if (read_fixed(p, len, pos, width, tok->type, &raw) < 0) return EMBER_EINVAL;
  if (is_signed) {
    int shift = 64 - 8 * width; /* sign-extend from `width` bytes */
    tok->v.i = (int64_t)(raw << shift) >> shift;
  } else if (raw > (uint64_t)INT64_MAX) {
    tok->type = EMBER_WIRE_UINT;
    tok->v.u = raw;
  } else {
    tok->v.i = (int64_t)raw;
  }
  return 0;
}

static int read_container(const uint8_t *p, size_t len, size_t *pos,
                          int width, ember_wire_token_type_t type,
                          ember_wire_token_t *tok) {
  uint64_t count;
  tok->type = type;
  if (read_fixed(p, len, pos, width, type, &count) < 0) return EMBER_EINVAL;
  tok->length = (uint32_t)count;
  return 0;
}

int ember_wire_read_token(const char *body, size_t len, size_t *pos,
                          ember_wire_token_t *tok) {
  const uint8_t *p = (const uint8_t *)body;
  size_t start = *pos;
  if (start >= len) {
    return ember__wire_fail(EMBER_EINVAL,
                            "msgpack body: truncated at byte %zu (expected a "
                            "value)",
                            start);
  }
  uint8_t b = p[start];
  tok->ext_type = 0;
  tok->length = 0;
  tok->data = NULL;
  if (b <= 0x7f || b >= 0xe0) { /* positive and negative fixint */
    tok->type = EMBER_WIRE_INT;
    tok->v.i = (int8_t)b;
    *pos = start + 1;
    return 0;
  }
  if (b <= 0x8f || (b >= 0x90 && b <= 0x9f)) { /* fixmap, fixarray */
    tok->type = b <= 0x8f ? EMBER_WIRE_MAP : EMBER_WIRE_ARRAY;
    tok->length = b & 0x0f;
    *pos = start + 1;
    return 0;
  }
  if (b <= 0xbf) { /* fixstr */
    tok->type = EMBER_WIRE_STR;
    tok->length = b & 0x1f;
    if (tok->length > len - start - 1) {
      return ember__wire_fail(EMBER_EINVAL,
                              "msgpack body: str of %u bytes at byte %zu but "
                              "only %zu bytes left",
                              (unsigned)tok->length, start, len - start - 1);
    }
    tok->data = body + start + 1;
    *pos = start + 1 + tok->length;
    return 0;
  }
  switch (b) {
  case 0xc0:
    tok->type = EMBER_WIRE_NIL;
    *pos = start + 1;
    return 0;
  case 0xc2:
  case 0xc3:
    tok->type = EMBER_WIRE_BOOL;
    tok->v.boolean = b == 0xc3;
    *pos = start + 1;
    return 0;
  case 0xc4: case 0xc5: case 0xc6:
    tok->type = EMBER_WIRE_BIN;
    return read_sized(p, len, pos, 1 << (b - 0xc4), 0, tok);
  case 0xc7: case 0xc8: case 0xc9:
    tok->type = EMBER_WIRE_EXT;
    return read_sized(p, len, pos, 1 << (b - 0xc7), 1, tok);
  case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
    return read_fixext(p, len, pos, 1u << (b - 0xd4), tok);
  case 0xd9: case 0xda: case 0xdb:
    tok->type = EMBER_WIRE_STR;
    return read_sized(p, len, pos, 1 << (b - 0xd9), 0, tok);
  case 0xdc: case 0xdd:
    return read_container(p, len, pos, b == 0xdc ? 2 : 4, EMBER_WIRE_ARRAY,
                          tok);
  case 0xde: case 0xdf:
    return read_container(p, len, pos, b == 0xde ? 2 : 4, EMBER_WIRE_MAP, tok);
  case 0xc1:
    return ember__wire_fail(EMBER_EINVAL,
                            "msgpack body: byte 0xc1 at byte %zu is not a "
                            "msgpack type",
                            start);
  default: /* 0xca..0xd3: floats and sized integers */
    return read_number(p, len, pos, b, tok);
  }
}

/* ---- Checking a body ----------------------------------------------------- */

typedef struct {
  const ember_wire_limits_t *limits;
  uint32_t max_depth;
  int depth;                                 /* containers open */
  uint64_t remaining[WIRE_DEPTH_CEILING + 1]; /* items left at each level */
} body_walk_t;

/* A container just read at `start`: its declared items must fit in the
** bytes left, and it must not nest too deep. */
static int open_container(body_walk_t *w, const ember_wire_token_t *tok,
                          size_t start, size_t left) {
  int is_map = tok->type == EMBER_WIRE_MAP;
  uint64_t items = (uint64_t)tok->length * (is_map ? 2 : 1);
  int level = w->depth + 1;
  if (items > left) {
    return ember__wire_fail(EMBER_EINVAL,
                            "msgpack body: %s of %u %s at depth %d but only "
                            "%zu bytes left",
                            is_map ? "map" : "array", (unsigned)tok->length,
                            is_map ? "entries" : "elements", level, left);
  }
  if ((uint32_t)level > w->max_depth) {
    return ember__wire_fail(EMBER_EINVAL,
                            "msgpack body: %s at byte %zu nests %d deep, over "
                            "the limit of %u",
                            is_map ? "map" : "array", start, level,
                            (unsigned)w->max_depth);
  }
  if (items > 0) {
    w->depth = level;
    w->remaining[level] = items;
  }
  return 0;
}

static int check_token(body_walk_t *w, const ember_wire_token_t *tok,
                       size_t start, size_t left) {
  switch (tok->type) {
  case EMBER_WIRE_ARRAY:
  case EMBER_WIRE_MAP:
    return open_container(w, tok, start, left);
  case EMBER_WIRE_STR:
  case EMBER_WIRE_BIN:
  case EMBER_WIRE_EXT:
    if (tok->length > w->limits->max_string) {
      return ember__wire_fail(EMBER_EINVAL,
                              "msgpack body: %s of %u bytes at byte %zu "
                              "exceeds the limit of %u",
                              ember_wire_token_name(tok->type),
                              (unsigned)tok->length, start,
                              (unsigned)w->limits->max_string);
    }
    return 0;
  default:
    return 0;
  }
}

int ember_wire_check_body(const char *body, size_t len,
                          const ember_wire_limits_t *limits) {
  body_walk_t w;
  w.limits = limits;
  w.max_depth = limits->max_depth < WIRE_DEPTH_CEILING ? limits->max_depth
                                                      : WIRE_DEPTH_CEILING;
  w.depth = 0;
  w.remaining[0] = 1;
  if (len > limits->max_body) {
    return ember__wire_fail(EMBER_EINVAL,
                            "msgpack body of %zu bytes exceeds the limit of %u",
                            len, (unsigned)limits->max_body);
  }
  size_t pos = 0;
  while (w.remaining[0] > 0 || w.depth > 0) {
    size_t start = pos;
    ember_wire_token_t tok;
    if (ember_wire_read_token(body, len, &pos, &tok) < 0) return EMBER_EINVAL;
    w.remaining[w.depth]--;
    if (check_token(&w, &tok, start, len - pos) < 0) return EMBER_EINVAL;
    while (w.depth > 0 && w.remaining[w.depth] == 0) w.depth--;
  }
  if (pos != len) {
    return ember__wire_fail(EMBER_EINVAL,
                            "msgpack body: %zu trailing bytes after the value "
                            "(which ends at byte %zu)",
                            len - pos, pos);
  }
  return 0;
}

/* ---- Outgoing messages --------------------------------------------------- */

void ember_wire_msg_init(ember_wire_msg_t *msg) {
  memset(msg, 0, sizeof *msg);
}

void ember_wire_msg_free(ember_wire_msg_t *msg) {
  for (uint32_t i = 0; i < msg->payload_count; i++) {
    ember_tensor_release(msg->payloads[i].keep);
  }
  free(msg->payloads);
  free(msg->body);
  ember_wire_msg_init(msg);
}

int ember_wire_msg_write(ember_wire_msg_t *msg, const void *data, size_t len) {
  if (len > msg->body_cap - msg->body_len) {
    size_t cap = msg->body_cap > 0 ? msg->body_cap : 128;
    while (cap - msg->body_len < len) {
      if (cap > SIZE_MAX / 2) {
        return ember__wire_fail(EMBER_ENOMEM, "message body too large");
      }
      cap *= 2;
    }
    char *body = realloc(msg->body, cap);
    if (body == NULL) {
      return ember__wire_fail(EMBER_ENOMEM,
                              "out of memory growing a message body to %zu "
                              "bytes",
                              cap);
    }
    msg->body = body;
    msg->body_cap = cap;
  }
  if (len > 0) memcpy(msg->body + msg->body_len, data, len);
  msg->body_len += len;
  return 0;
}

static int grow_payloads(ember_wire_msg_t *msg) {
  if (msg->payload_count < msg->payload_cap) return 0;
  if (msg->payload_cap >= UINT32_MAX / 2) {
    return ember__wire_fail(EMBER_EINVAL, "too many tensors in one message");
  }
  uint32_t cap = msg->payload_cap > 0 ? msg->payload_cap * 2 : 4;
  ember_wire_payload_t *payloads =
      realloc(msg->payloads, sizeof *payloads * (size_t)cap);
  if (payloads == NULL) {
    return ember__wire_fail(EMBER_ENOMEM, "out of memory adding a tensor");
  }
  msg->payloads = payloads;
  msg->payload_cap = cap;
  return 0;
}

/* The tensor whose storage is sent: t itself (a new reference) when it is a
** contiguous CPU tensor, else a contiguous copy. */
static ember_tensor_t *payload_tensor(ember_tensor_t *t, int *rc) {
  if (!t->storage->device->is_host) {
    ember_tensor_t *staged = ember_tensor_staged_on_host(t);
    if (staged == NULL) {
      *rc = ember__wire_fail(EMBER_ENOMEM, "copying a tensor from %s to send "
                             "it: %s", t->storage->device->name,
                             ember_tensor_error());
    }
    return staged;
  }
  /* An empty tensor has no bytes to copy, whatever its strides say. */
  if (ember_tensor_numel(t) == 0 || ember_tensor_is_contiguous(t)) {
    ember_tensor_retain(t);
    return t;
  }
  ember_tensor_t *copy = ember_tensor_copy_detached(t);
  if (copy == NULL) {
    *rc = ember__wire_fail(EMBER_ENOMEM, "copying a tensor to send it: %s",
                     ember_tensor_error());
  }
  return copy;
}

int ember_wire_msg_add_tensor(ember_wire_msg_t *msg, ember_tensor_t *t,
                              uint32_t *index) {
  for (uint32_t i = 0; i < msg->payload_count; i++) {
    if (msg->payloads[i].source == t) {
      *index = i;
      return 0;
    }
  }
  int rc = grow_payloads(msg);
  if (rc < 0) return rc;
  ember_tensor_t *keep = payload_tensor(t, &rc);
  if (keep == NULL) return rc;
  ember_wire_payload_t *p = &msg->payloads[msg->payload_count];
  p->data = ember_tensor_data(keep);
  p->nbytes =
      (uint64_t)ember_tensor_numel(keep) * ember_dtype_size(keep->dtype);
  p->keep = keep;
  p->source = t;
  *index = msg->payload_count++;
  return 0;
}

/* ---- Tensor references in a body ----------------------------------------- */

size_t ember_wire_tensor_ext(const ember_tensor_t *t, uint32_t index,
                             int device,
                             uint8_t out[EMBER_WIRE_TENSOR_EXT_MAX]) {
  out[0] = (uint8_t)t->dtype;
  out[1] = (uint8_t)t->ndim;
  out[2] = t->requires_grad || t->grad_fn != NULL;
  out[3] = device >= 0 && device < 255 ? (uint8_t)(device + 1) : 0;
  put_le(out + 4, index, 4);
  for (int i = 0; i < t->ndim; i++) {
    put_le(out + EMBER_EXT_TENSOR_FIXED + 8 * i, (uint64_t)t->shape[i], 8);
  }
  return EMBER_EXT_TENSOR_FIXED + 8 * (size_t)t->ndim;
}

int ember_wire_parse_tensor_ext(const char *data, uint32_t len,
                                ember_wire_tensor_ref_t *ref) {
  const uint8_t *p = (const uint8_t *)data;
  if (len < EMBER_EXT_TENSOR_FIXED) {
    return ember__wire_fail(EMBER_EINVAL,
                            "tensor reference of %u bytes is too short (at "
                            "least %d)",
                            (unsigned)len, EMBER_EXT_TENSOR_FIXED);
  }
  if (p[0] >= EMBER_DTYPE_COUNT) {
    return ember__wire_fail(EMBER_EINVAL,
                            "tensor reference with unknown dtype %u",
                            (unsigned)p[0]);
  }
  if (p[1] > EMBER_MAX_DIMS) {
    return ember__wire_fail(EMBER_EINVAL,
                            "tensor reference with %u dimensions (at most %d)",
                            (unsigned)p[1], EMBER_MAX_DIMS);
  }
  if (len != EMBER_EXT_TENSOR_FIXED + 8u * p[1]) {
    return ember__wire_fail(EMBER_EINVAL,
                            "tensor reference of %u bytes for %u dimensions "
                            "(expected %u)",
                            (unsigned)len, (unsigned)p[1],
                            (unsigned)(EMBER_EXT_TENSOR_FIXED + 8u * p[1]));
  }
  ref->dtype = (ember_dtype_t)p[0];
  ref->ndim = p[1];
  if (p[3] > EMBER_WIRE_MAX_DEVICE + 1) {
    return ember__wire_fail(EMBER_EINVAL,
                            "tensor reference for device cuda:%u (at most "
                            "cuda:%d)", (unsigned)p[3] - 1,
                            EMBER_WIRE_MAX_DEVICE);
  }
  ref->requires_grad = p[2] != 0;
  ref->device = (int)p[3] - 1;
  ref->index = (uint32_t)get_le(p + 4, 4);
  for (int i = 0; i < ref->ndim; i++) {
    ref->shape[i] = (int64_t)get_le(p + EMBER_EXT_TENSOR_FIXED + 8 * i, 8);
    if (ref->shape[i] < 0) {
      return ember__wire_fail(EMBER_EINVAL,
                              "tensor reference with a negative size (%lld) "
                              "in dimension %d",
                              (long long)ref->shape[i], i + 1);
    }
  }
  return 0;
}

/* ---- Incoming tensors ---------------------------------------------------- */

/* Elements of `shape` times `itemsize` into *bytes, refusing negative sizes
** and overflow. */
static int shape_bytes(const int64_t *shape, int ndim, size_t itemsize,
                       uint64_t *bytes) {
  uint64_t n = itemsize;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0) {
      return ember__wire_fail(EMBER_EINVAL,
                              "received tensor has a negative size (%lld) in "
                              "dimension %d",
                              (long long)shape[i], i + 1);
    }
    uint64_t s = (uint64_t)shape[i];
    if (s != 0 && n > UINT64_MAX / s) {
      return ember__wire_fail(EMBER_EINVAL,
                              "received tensor's shape is too large");
    }
    n *= s;
  }
  *bytes = n;
  return 0;
}

static int check_raw_payload(const ember_tensor_t *raw) {
  if (raw->ndim != 1 || ember_dtype_size(raw->dtype) != 1 ||
      !ember_tensor_is_contiguous(raw) ||
      raw->storage->device != &ember_cpu_device) {
    return ember__wire_fail(EMBER_EINVAL,
                            "a received payload must be a contiguous 1-D "
                            "uint8 CPU tensor");
  }
  return 0;
}

/* A fresh copy, for a payload whose bytes are not aligned for `dtype`. */
static ember_tensor_t *copy_payload(const ember_tensor_t *raw,
                                    ember_dtype_t dtype, const int64_t *shape,
                                    int ndim, uint64_t bytes) {
  ember_tensor_t *t = ember_tensor_new(shape, ndim, dtype, &ember_cpu_device);
  if (t == NULL) {
    ember__wire_fail(EMBER_ENOMEM, "%s", ember_tensor_error());
    return NULL;
  }
  if (bytes > 0) memcpy(ember_tensor_data(t), ember_tensor_data(raw), bytes);
  return t;
}

ember_tensor_t *ember_wire_tensor_from_payload(ember_tensor_t *raw,
                                               ember_dtype_t dtype,
                                               const int64_t *shape,
                                               int ndim) {
  char buf[160];
  uint64_t bytes = 0;
  if ((unsigned)dtype >= EMBER_DTYPE_COUNT) {
    ember__wire_fail(EMBER_EINVAL, "received tensor has unknown dtype %d",
                     (int)dtype);
    return NULL;
  }
  if (ndim < 0 || ndim > EMBER_MAX_DIMS) {
    ember__wire_fail(EMBER_EINVAL,
                     "received tensor has %d dimensions (at most %d)", ndim,
                     EMBER_MAX_DIMS);
    return NULL;
  }
  size_t itemsize = ember_dtype_size(dtype);
  if (check_raw_payload(raw) < 0 ||
      shape_bytes(shape, ndim, itemsize, &bytes) < 0)
    return NULL;
  if (bytes != (uint64_t)raw->shape[0]) {
    ember__wire_fail(EMBER_EINVAL,
                     "a %s tensor of shape %s needs %llu bytes but its "
                     "payload has %lld",
                     ember_dtype_name(dtype),
                     ember_shape_string(shape, ndim, buf, sizeof buf),
                     (unsigned long long)bytes, (long long)raw->shape[0]);
    return NULL;
  }
  /* A payload that starts mid-storage may be misaligned for dtype: views
  ** need an offset in whole elements and aligned loads. */
  uintptr_t address = (uintptr_t)ember_tensor_data(raw);
  if (raw->offset % (int64_t)itemsize != 0 || address % itemsize != 0) {
    return copy_payload(raw, dtype, shape, ndim, bytes);
  }
  int64_t strides[EMBER_MAX_DIMS];
  int64_t step = 1;
  for (int i = ndim - 1; i >= 0; i--) {
    strides[i] = step;
    step *= shape[i] > 0 ? shape[i] : 1;
  }
  ember_tensor_t *t = ember_tensor_view_of(raw, shape, strides, ndim,
                                           raw->offset / (int64_t)itemsize);
  if (t == NULL) {
    ember__wire_fail(EMBER_ENOMEM, "out of memory making a received tensor");
    return NULL;
  }
  t->dtype = dtype;
  return t;
}
