/*
** libFuzzer target: the frame decoder (core/frame_reader.c), with the
** default limits (64 MiB bodies, 16 GiB tensors: a header may ask for any of
** that in 24 bytes).
**
** Input: byte 0 = flags | c, then c chunk sizes (one byte each), then the
** stream of frames.
**   c (bits 0-3): how many chunk sizes follow; 0 feeds the stream whole;
**   bit 4: take bytes through ember_frame_reader_direct/advance whenever the
**          reader offers its own memory, as the transport does for big parts;
**   a chunk size byte s: chunks of s bytes (0: 65536), used in turn.
**
** After every call, the reader's own count and the heap must keep the bound
** of frame_reader.h:
**
**   ember_frame_reader_allocated() <= 8 x (bytes of the frame so far) + 64 KiB
**
** (and so <= 8 x (bytes fed) + 64 KiB), and the heap bytes the reader holds
** (ASan's live-heap count, less what was live before it) must agree with it:
** at most the same bound plus the reader struct. Frames are checked as they
** arrive (their size is what their header and lengths table declare) and
** freed. A broken stream must leave the reader broken.
**
** Seeds: spec/fuzz/corpus/frame (streams recorded from real transports by
** make_corpus.c, whole, byte by byte and in mixed chunks).
*/
#include <sanitizer/allocator_interface.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frame_reader.h"
#include "fuzz_common.h"
#include "tensor.h"

#define DIRECT_FLAG 0x10u
#define SLACK ((size_t)EMBER_FRAME_READER_SLACK)
/* The reader struct and its bookkeeping, outside the bound (frame_reader.h
** says under 1 KiB; ASan rounds nothing in its byte count). */
#define READER_SELF 4096

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  fuzz_quiet();
  return 0;
}

typedef struct {
  uint64_t fed;         /* bytes given to the reader */
  uint64_t frame_start; /* where the frame being read began */
  uint64_t frames;
} stream_t;

static int on_frame(void *user, ember_frame_t *frame) {
  stream_t *s = user;
  uint64_t size = EMBER_WIRE_HEADER_SIZE +
                  8 * (uint64_t)frame->header.tensor_count +
                  frame->header.body_len;
  FUZZ_ASSERT(frame->body != NULL, "a frame without its body buffer");
  for (uint32_t i = 0; i < frame->header.tensor_count; i++) {
    ember_tensor_t *t = frame->payloads[i];
    FUZZ_ASSERT(t != NULL && t->dtype == EMBER_UINT8 && t->ndim == 1,
                "payload %u is not a 1-D uint8 tensor", (unsigned)i);
    size += (uint64_t)t->shape[0];
  }
  s->frame_start += size;
  s->frames++;
  ember_frame_free(frame);
  return 0;
}

static void check_bound(const ember_frame_reader_t *r, const stream_t *s,
                        size_t heap_base) {
  size_t allocated = ember_frame_reader_allocated(r);
  /* A frame may end inside the chunk just fed: then frame_start is past the
  ** bytes the reader holds, and the new frame has none yet. */
  uint64_t frame_bytes = s->fed > s->frame_start ? s->fed - s->frame_start : 0;
  FUZZ_ASSERT(allocated <= 8 * frame_bytes + SLACK,
              "the reader holds %zu bytes after %llu bytes of its frame "
              "(%llu fed in all)",
              allocated, (unsigned long long)frame_bytes,
              (unsigned long long)s->fed);
  size_t heap = __sanitizer_get_current_allocated_bytes();
  size_t held = heap > heap_base ? heap - heap_base : 0;
  FUZZ_ASSERT(held <= 8 * frame_bytes + SLACK + READER_SELF,
              "the heap grew by %zu bytes after %llu bytes of the frame "
              "(the reader counts %zu)",
              held, (unsigned long long)frame_bytes, allocated);
}

/* Gives the reader up to n bytes of data; returns how many it took (all of
** them, unless it failed). */
static size_t give(ember_frame_reader_t *r, stream_t *s, const uint8_t *data,
                   size_t n, int direct, int *status) {
  size_t room = 0;
  char *target = direct ? ember_frame_reader_direct(r, &room) : NULL;
  if (target != NULL && room > 0) {
    size_t k = n < room ? n : room;
    memcpy(target, data, k);
    s->fed += k;
    *status = ember_frame_reader_advance(r, k);
    return k;
  }
  s->fed += n;
  *status = ember_frame_reader_feed(r, (const char *)data, n);
  return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  unsigned flags = data[0];
  size_t nsizes = flags & 0x0fu;
  if (size < 1 + nsizes)
    return 0;
  const uint8_t *sizes = data + 1;
  const uint8_t *stream = data + 1 + nsizes;
  size_t len = size - 1 - nsizes;

  ember_wire_limits_t limits;
  ember_wire_default_limits(&limits);
  stream_t s = {0, 0, 0};
  ember_frame_reader_callbacks_t cb = {&s, NULL, on_frame};
  size_t heap_base = __sanitizer_get_current_allocated_bytes();
  ember_frame_reader_t *r = ember_frame_reader_new(&limits, &cb);
  FUZZ_ASSERT(r != NULL, "out of memory");

  size_t at = 0, turn = 0;
  int status = 0;
  while (at < len && status == 0) {
    size_t chunk = len - at;
    if (nsizes > 0) {
      uint8_t c = sizes[turn++ % nsizes];
      size_t want = c == 0 ? 65536 : c;
      chunk = want < chunk ? want : chunk;
    }
    at += give(r, &s, stream + at, chunk, (flags & DIRECT_FLAG) != 0, &status);
    check_bound(r, &s, heap_base);
  }
  if (status != 0) {
    /* Broken for good: the next feed fails the same way. */
    FUZZ_ASSERT(ember_frame_reader_feed(r, "\0", 1) == status,
                "a broken reader took more bytes");
  }
  ember_frame_reader_free(r);
  return 0;
}
