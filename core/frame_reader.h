/*
** The frame reader: turns a byte stream into complete frames (see wire.h for
** the layout), checking everything a frame declares against the limits and
** allocating no faster than bytes arrive. Pure C (no libuv, no Lua), so it can
** be fed from a socket, a test or a fuzzer alike.
**
** Bytes come in two ways:
**   - ember_frame_reader_feed copies them from the caller's buffer;
**   - ember_frame_reader_direct gives out the frame's own memory (the body,
**     or a tensor payload's final storage) so the caller can read into it
**     with no copy, then ember_frame_reader_advance says how much it wrote.
** Either may be used for any part; the transport reads big parts directly and
** the rest through its staging buffer.
**
** The allocation bound. A header may declare a 64 MiB body or a 16 GiB tensor
** in 24 bytes. The reader never allocates from declarations alone: at every
** moment
**
**     ember_frame_reader_allocated(r) <= 8 x (bytes of the current frame
**                                             received so far) + 64 KiB
**
** where "allocated" counts everything the reader holds for the frame: the
** lengths table, the body buffer, the payload pointer array, the buffer of
** small payloads, the early bytes of a big payload, and each big payload's
** storage (rounded as tensor.c allocates it) with its tensor and storage
** objects. Buffers grow geometrically as bytes arrive, capped at their
** declared size. A payload of EMBER_FRAME_READER_SMALL_PAYLOAD bytes or more
** (a "big" one) gets its final storage as soon as the bound allows it; until
** then its first bytes wait in a growing buffer that is copied into the
** storage once it is allocated (for a payload much bigger than the 64 KiB
** allowance, about 1/7 of it: ember_frame_reader_staged_bytes counts those
** copies). Smaller payloads are gathered in one buffer and become tensors
** when the frame is complete.
**
** Outside the bound: the reader struct itself (under 1 KiB), the caller's
** own buffers (the transport's 64 KiB staging buffer per connection is NOT
** counted), and the tensors of small payloads, made only when the whole frame
** has arrived and handed over with it at once (about 300 bytes each with
** their storage, at most max_tensors of them: ~1.2 MiB with the defaults).
** A tensor object costs more than the 8 bytes its length takes on the wire
** can pay for, so no reader that hands out one tensor per payload could keep
** the bound for a frame of thousands of empty payloads.
**
** Errors: feed and advance return 0, or a negative code with a message for
** ember_frame_reader_error ("frame body of 3000000000 bytes exceeds the limit
** of 67108864"): EMBER_EINVAL for a frame that breaks the format or the
** limits, EMBER_ENOMEM when memory ran out, or the code a callback stopped
** the reader with. After EMBER_EINVAL or EMBER_ENOMEM the reader is broken:
** every later call returns the same code.
**
** Thread: one thread at a time; callbacks run on the caller's thread, inside
** feed and advance.
*/
#ifndef EMBER_FRAME_READER_H
#define EMBER_FRAME_READER_H

#include <stddef.h>
#include <stdint.h>

#include "wire.h"

/* Payloads of at least this many bytes are read into their own storage as
** they arrive; smaller ones are gathered and copied out at the end. */
#define EMBER_FRAME_READER_SMALL_PAYLOAD 4096

/* The slack of the allocation bound. */
#define EMBER_FRAME_READER_SLACK (64 * 1024)

/* A complete incoming frame. The callee takes ownership of `body` (free) and of
** every tensor in `payloads` (release each, then free the array). `body` has
** header.body_len bytes plus one spare byte; `payloads` has
** header.tensor_count 1-D uint8 CPU tensors (NULL when the count is 0). */
typedef struct {
  ember_frame_header_t header;
  char *body;
  ember_tensor_t **payloads;
} ember_frame_t;

/* Frees what the frame holds and clears it (safe on a cleared frame). */
void ember_frame_free(ember_frame_t *frame);

typedef struct {
  void *user;
  /*
  ** Optional (may be NULL): a header passed the limits; nothing is allocated
  ** for its frame yet. Return 0 to read the frame, or a negative code to
  ** refuse it: feed/advance stop and return that code (the reader is then
  ** left between frames; the caller is expected to drop the stream).
  */
  int (*on_header)(void *user, const ember_frame_header_t *header);
  /*
  ** A complete frame: the callee owns it (ember_frame_free). Return 0 to go
  ** on reading, or a negative code to stop (the connection closed): feed and
  ** advance return that code at once. The reader is between frames then, and
  ** may be fed again.
  */
  int (*on_frame)(void *user, ember_frame_t *frame);
} ember_frame_reader_callbacks_t;

typedef struct ember_frame_reader_s ember_frame_reader_t;

/* A reader expecting a header. `limits` and `cb` are copied. The caller owns
** the result (ember_frame_reader_free); NULL if out of memory. */
ember_frame_reader_t *ember_frame_reader_new(
    const ember_wire_limits_t *limits,
    const ember_frame_reader_callbacks_t *cb);

/* Frees the reader and the partial frame it holds (NULL is fine). */
void ember_frame_reader_free(ember_frame_reader_t *r);

/* Limits for the frames whose header has not arrived yet (the transport
** switches from its handshake limits once a connection is ready). */
void ember_frame_reader_set_limits(ember_frame_reader_t *r,
                                   const ember_wire_limits_t *limits);

/* Reads `len` bytes (copied). 0 or a negative code (see above). */
int ember_frame_reader_feed(ember_frame_reader_t *r, const char *data,
                            size_t len);

/*
** Where the next bytes of the current part can be written directly, and in
** *room how many (at most what the part still lacks and what the bound allows
** now). NULL with *room 0 when the reader wants its bytes through feed (a
** header or the lengths table, or a broken reader). The pointer is valid
** until the next call on the reader; write at most *room bytes, then call
** ember_frame_reader_advance with how many were written.
*/
char *ember_frame_reader_direct(ember_frame_reader_t *r, size_t *room);

/* `n` bytes (at most the last *room) were written where direct pointed.
** 0 or a negative code, as feed. */
int ember_frame_reader_advance(ember_frame_reader_t *r, size_t n);

/* Why the last call failed (a static "no error" if it did not). */
const char *ember_frame_reader_error(const ember_frame_reader_t *r);

/* Bytes the reader holds now for the frame being read (see the bound). */
size_t ember_frame_reader_allocated(const ember_frame_reader_t *r);

/* Bytes copied so far from early-bytes buffers into big payloads' storage. */
uint64_t ember_frame_reader_staged_bytes(const ember_frame_reader_t *r);

#endif
