/*
** The wire format: frames, their limits, and the msgpack body's checks.
**
** A frame is
**
**   header (EMBER_WIRE_HEADER_SIZE bytes, little-endian)
**     magic u32 | version u8 | kind u8 | flags u16 | request id u64 |
**     body length u32 | tensor count u32
**   tensor lengths: tensor count x u64 (bytes of each payload)
**   body: body length bytes of msgpack (one value)
**   payloads: the tensors' bytes, back to back, in order
**
** Everything a frame declares is checked against ember_wire_limits_t before
** anything is allocated for it. A msgpack body is walked once
** (ember_wire_check_body) before msgpack-c unpacks it, because msgpack-c
** allocates from declared counts: after the walk every count is known to fit
** in the bytes present.
**
** Values ember puts in a body use msgpack's own types (nil, bool, int,
** float64, str, array, map) plus these ext types:
**   EMBER_EXT_TENSOR    dtype u8 | ndim u8 | requires_grad u8 | device u8 |
**                       payload index u32 | shape i64 x ndim   (little-endian)
**                       device: 0 for the CPU, 1 + n for cuda:n (where the
**                       receiver puts it, from the sender's device map)
**   EMBER_EXT_FUNCTION  "module:path" (a function reference)
**   EMBER_EXT_CLASS     a class name; the next value in the stream is the
**                       instance's packed state. An instance is sent as a
**                       2-element array [ext CLASS, state], so that arrays
**                       and maps around it keep their counts.
**
** Errors: functions return 0 or a negative EMBER_E* code and leave a message
** for ember_wire_error() (thread-local).
*/
#ifndef EMBER_WIRE_H
#define EMBER_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "tensor.h"

#define EMBER_WIRE_MAGIC 0x52424d45u /* "EMBR" as bytes on the wire */
#define EMBER_WIRE_VERSION 1
#define EMBER_WIRE_HEADER_SIZE 24

/* Frame kinds. Values are part of the wire format: never renumber. */
typedef enum {
  /* Connection set-up (see transport.h). */
  EMBER_MSG_HELLO = 1,
  EMBER_MSG_WELCOME = 2,
  EMBER_MSG_AUTH = 3,
  /* Calls. */
  EMBER_MSG_REQUEST = 10,
  EMBER_MSG_RESPONSE = 11,
  EMBER_MSG_ERROR = 12, /* a response whose body is a RemoteError */
  /* Liveness and leaving. */
  EMBER_MSG_HEARTBEAT = 20,
  EMBER_MSG_GOODBYE = 21,
  /* Remote references: owner/user control messages (see rref.h). */
  EMBER_MSG_RREF_FORK = 30,
  EMBER_MSG_RREF_CONFIRM = 31,
  EMBER_MSG_RREF_DELETE = 32,
  EMBER_MSG_RREF_DELETE_ACK = 33,
  EMBER_MSG_RREF_CHILD_ACCEPT = 34,
  EMBER_MSG_KIND_MAX = 63
} ember_msg_kind_t;

/* Frame flags. */
#define EMBER_FLAG_ASYNC_EXECUTION 0x0001u /* informational only */
/* The body holds instances a class's __pack encoded: their __unpack may have
** effects (an RRef registers its fork), so the receiver decodes the body even
** when nobody asks for it (a reply nobody reads, or one that came late). */
#define EMBER_FLAG_PACKED_CLASSES 0x0002u

typedef enum {
  EMBER_EXT_TENSOR = 1,
  EMBER_EXT_FUNCTION = 2,
  EMBER_EXT_CLASS = 3
} ember_ext_type_t;

#define EMBER_EXT_TENSOR_FIXED 8 /* bytes before the shape */

typedef struct {
  uint8_t version;
  uint8_t kind;
  uint16_t flags;
  uint64_t request_id;
  uint32_t body_len;
  uint32_t tensor_count;
} ember_frame_header_t;

typedef struct {
  uint32_t max_body;         /* bytes of msgpack body */
  uint32_t max_tensors;      /* tensor payloads per frame */
  uint64_t max_tensor_bytes; /* bytes of one payload */
  uint64_t max_payload_bytes;/* bytes of all payloads of one frame */
  uint32_t max_depth;        /* nesting of arrays and maps (<= 64) */
  uint32_t max_string;       /* bytes of one str/bin/ext */
} ember_wire_limits_t;

/* 64 MiB body, 4096 tensors, 16 GiB a tensor and a frame, depth 64, 64 MiB
** strings. */
void ember_wire_default_limits(ember_wire_limits_t *limits);

const char *ember_wire_error(void);
int ember__wire_fail(int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Writes the 24 header bytes. */
void ember_wire_pack_header(const ember_frame_header_t *header,
                            uint8_t out[EMBER_WIRE_HEADER_SIZE]);

/*
** Reads and checks a header: magic, version, kind, and body length and tensor
** count against the limits. EMBER_EINVAL with a message naming what was wrong
** ("frame body of 3000000000 bytes exceeds the limit of 67108864").
*/
int ember_wire_unpack_header(const uint8_t in[EMBER_WIRE_HEADER_SIZE],
                             const ember_wire_limits_t *limits,
                             ember_frame_header_t *out);

/* Checks the tensor lengths table (count entries of u64) against the limits
** and fills lengths[] (caller-sized). `lengths` may be `in` itself (8-byte
** aligned): each entry is read whole before its slot is written. */
int ember_wire_unpack_lengths(const uint8_t *in, uint32_t count,
                              const ember_wire_limits_t *limits,
                              uint64_t *lengths);

/*
** Walks a msgpack body without allocating: exactly one complete value, no
** trailing bytes, nesting within max_depth, every declared element count no
** larger than the bytes left, every str/bin/ext within max_string. On success
** msgpack_unpack may be used on it safely.
*/
int ember_wire_check_body(const char *body, size_t len,
                          const ember_wire_limits_t *limits);

/* --- Reading msgpack ------------------------------------------------------ */

typedef enum {
  EMBER_WIRE_NIL,
  EMBER_WIRE_BOOL,
  EMBER_WIRE_INT,   /* v.i */
  EMBER_WIRE_UINT,  /* v.u: a positive integer above INT64_MAX */
  EMBER_WIRE_FLOAT, /* v.f (float32 widened) */
  EMBER_WIRE_STR,
  EMBER_WIRE_BIN,
  EMBER_WIRE_ARRAY,
  EMBER_WIRE_MAP,
  EMBER_WIRE_EXT
} ember_wire_token_type_t;

/* One msgpack item's header: a scalar whole, a container's count. */
typedef struct {
  ember_wire_token_type_t type;
  int8_t ext_type;
  uint32_t length;  /* str/bin/ext: bytes; array: elements; map: entries */
  const char *data; /* str/bin/ext: the bytes, inside the body */
  union {
    int boolean;
    int64_t i;
    uint64_t u;
    double f;
  } v;
} ember_wire_token_t;

/*
** Reads the item at body[*pos] and moves *pos past it: past a scalar, a
** str/bin/ext with its bytes, or a container's header only (its elements
** follow). Never reads outside body[0..len); allocates nothing. EMBER_EINVAL
** with a message on truncated input or the unused byte 0xc1.
*/
int ember_wire_read_token(const char *body, size_t len, size_t *pos,
                          ember_wire_token_t *token);

/* "array", "str", ...: a token type's msgpack name, for messages. */
const char *ember_wire_token_name(ember_wire_token_type_t type);

/* --- Outgoing messages ---------------------------------------------------- */

/* A tensor payload to send: `data` stays valid while `keep` is alive. */
typedef struct {
  const void *data;
  uint64_t nbytes;
  ember_tensor_t *keep; /* one reference, released by ember_wire_msg_free */
  const ember_tensor_t *source; /* the tensor added (for dedupe; borrowed) */
} ember_wire_payload_t;

/*
** A message being built: its msgpack body and its tensor payloads. The
** transport takes it whole (ember_transport_send) and frees it once written.
*/
typedef struct {
  char *body;
  size_t body_len;
  size_t body_cap;
  ember_wire_payload_t *payloads;
  uint32_t payload_count;
  uint32_t payload_cap;
  uint16_t flags; /* EMBER_FLAG_* the frame carrying it gets */
  /* While a value is encoded: where the receiver puts a tensor of cuda:n,
  ** device_map[n] (-1: its CPU). NULL: every tensor arrives on the CPU.
  ** Borrowed; CPU tensors always arrive on the CPU. */
  const int8_t *device_map;
} ember_wire_msg_t;

void ember_wire_msg_init(ember_wire_msg_t *msg);
/* Releases the body and every kept tensor; the message may be reused after
** ember_wire_msg_init. */
void ember_wire_msg_free(ember_wire_msg_t *msg);
/* Appends body bytes (msgpack_packer's write callback uses this). */
int ember_wire_msg_write(ember_wire_msg_t *msg, const void *data, size_t len);

/*
** Adds `t` as a payload and sets *index to its position. A CPU tensor that is
** contiguous is sent from its own storage (zero-copy; the tensor is kept
** alive); any other is first copied to a contiguous CPU tensor (a device's
** into its page-locked staging memory). The same tensor added twice gets
** the same index.
*/
int ember_wire_msg_add_tensor(ember_wire_msg_t *msg, ember_tensor_t *t,
                              uint32_t *index);

/* --- Tensor references in a body ------------------------------------------ */

#define EMBER_WIRE_TENSOR_EXT_MAX (EMBER_EXT_TENSOR_FIXED + 8 * EMBER_MAX_DIMS)
/* The highest cuda:n a tensor reference may name (EMBER_MAX_CUDA_DEVICES - 1). */
#define EMBER_WIRE_MAX_DEVICE 15

/* What an EMBER_EXT_TENSOR says. */
typedef struct {
  ember_dtype_t dtype;
  int ndim;
  int requires_grad;
  int device;     /* -1: the CPU; n: cuda:n */
  uint32_t index; /* payload position in the frame */
  int64_t shape[EMBER_MAX_DIMS];
} ember_wire_tensor_ref_t;

/*
** Writes the EMBER_EXT_TENSOR body for `t` sent as payload `index`, to
** arrive on `device` (-1: the CPU, n: cuda:n), and returns its length. requires_grad is set when t requires grad or is the
** result of recorded ops (the receiver gets a leaf that requires grad).
*/
size_t ember_wire_tensor_ext(const ember_tensor_t *t, uint32_t index,
                             int device,
                             uint8_t out[EMBER_WIRE_TENSOR_EXT_MAX]);

/* Reads an EMBER_EXT_TENSOR body; EMBER_EINVAL with a message when its
** length, dtype or ndim is wrong or a size is negative. */
int ember_wire_parse_tensor_ext(const char *data, uint32_t len,
                                ember_wire_tensor_ref_t *ref);

/* --- Incoming tensors ----------------------------------------------------- */

/*
** A received payload becomes a tensor: `raw` is the payload as a 1-D uint8
** tensor (as the transport reads it); the result views the same storage with
** `dtype` and `shape` (no copy). EMBER_EINVAL when the sizes disagree.
*/
ember_tensor_t *ember_wire_tensor_from_payload(ember_tensor_t *raw,
                                               ember_dtype_t dtype,
                                               const int64_t *shape, int ndim);

#endif
