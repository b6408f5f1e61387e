/*
** The caching allocator of caching_allocator.h.
**
** Live blocks are found by address in an open-addressing hash table (linear
** probing, deletion by backward shift); cached blocks sit in an array sorted
** by (size, address), so the smallest block that fits is a binary search
** away. The raw allocator is always called with the lock released: a
** cudaMalloc or cudaFree may take milliseconds, and other threads can use
** the cache meanwhile.
*/
#include "caching_allocator.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define SMALL_LIMIT ((size_t)1 << 20) /* 1 MiB */
#define SMALL_ROUND ((size_t)512)
#define LARGE_ROUND ((size_t)2 << 20) /* 2 MiB */
#define LIVE_MIN_CAP 64

typedef struct {
  void *p; /* NULL: an empty slot of the live table */
  size_t size;
} block_t;

struct ember_caching_allocator_s {
  pthread_mutex_t lock;
  ember_raw_alloc_fn raw_alloc;
  ember_raw_free_fn raw_free;
  void *ctx;
  block_t *live; /* hash table, live_cap slots (a power of two) */
  size_t live_cap, live_count;
  block_t *cached; /* sorted by size, then address */
  size_t cached_count, cached_cap;
  ember_memory_stats_t stats;
};

/* Rounds a request to its block size: 512 bytes up to 1 MiB (1 MiB itself
** is already a multiple of 512 and stays 1 MiB), 2 MiB beyond. 0 when the
** rounded size would not fit in size_t. */
static size_t round_size(size_t n) {
  if (n == 0) n = 1;
  if (n <= SMALL_LIMIT) return (n + SMALL_ROUND - 1) & ~(SMALL_ROUND - 1);
  if (n > SIZE_MAX - LARGE_ROUND) return 0;
  return (n + LARGE_ROUND - 1) & ~(LARGE_ROUND - 1);
}

/* ---- Live blocks: address -> size ---------------------------------------- */

static size_t live_home(const ember_caching_allocator_t *a, const void *p) {
  uint64_t h = (uint64_t)(uintptr_t)p;
  h ^= h >> 33;
  h *= UINT64_C(0xff51afd7ed558ccd);
  h ^= h >> 33;
  return (size_t)h & (a->live_cap - 1);
}

/* The slot holding p, or the empty slot where the probe for p stops. */
static size_t live_probe(const ember_caching_allocator_t *a, const void *p) {
  size_t i = live_home(a, p);
  while (a->live[i].p != NULL && a->live[i].p != p) {
    i = (i + 1) & (a->live_cap - 1);
  }
  return i;
}

/* Doubles the table (or creates it); 0 or -1 when out of memory. */
static int live_grow(ember_caching_allocator_t *a) {
  size_t old_cap = a->live_cap;
  block_t *old = a->live;
  size_t cap = old_cap == 0 ? LIVE_MIN_CAP : old_cap * 2;
  block_t *slots = calloc(cap, sizeof *slots);
  if (slots == NULL) return -1;
  a->live = slots;
  a->live_cap = cap;
  for (size_t i = 0; i < old_cap; i++) {
    if (old[i].p != NULL) a->live[live_probe(a, old[i].p)] = old[i];
  }
  free(old);
  return 0;
}

static int live_insert(ember_caching_allocator_t *a, void *p, size_t size) {
  /* At most half full, so probes stay short and always end. */
  if ((a->live_count + 1) * 2 > a->live_cap && live_grow(a) < 0) return -1;
  size_t i = live_probe(a, p);
  a->live[i].p = p;
  a->live[i].size = size;
  a->live_count++;
  return 0;
}

static size_t live_size(const ember_caching_allocator_t *a, const void *p) {
  if (a->live_count == 0 || p == NULL) return 0;
  size_t i = live_probe(a, p);
  return a->live[i].p == p ? a->live[i].size : 0;
}

/* Removes p and returns its size (0 if it is not live). Backward shift: the
** entries after the hole that may not stay where they are move into it. */
static size_t live_remove(ember_caching_allocator_t *a, const void *p) {
  if (a->live_count == 0 || p == NULL) return 0;
  size_t mask = a->live_cap - 1;
  size_t hole = live_probe(a, p);
  if (a->live[hole].p != p) return 0;
  size_t size = a->live[hole].size;
  for (size_t j = (hole + 1) & mask; a->live[j].p != NULL; j = (j + 1) & mask) {
    size_t home = live_home(a, a->live[j].p);
    /* The entry at j may stay if its home lies cyclically in (hole, j]. */
    int stays = hole <= j ? (hole < home && home <= j)
                          : (hole < home || home <= j);
    if (stays) continue;
    a->live[hole] = a->live[j];
    hole = j;
  }
  a->live[hole].p = NULL;
  a->live[hole].size = 0;
  a->live_count--;
  return size;
}

/* ---- Cached blocks, sorted by (size, address) ------------------------------ */

static int block_before(const block_t *x, size_t size, const void *p) {
  return x->size < size ||
         (x->size == size && (uintptr_t)x->p < (uintptr_t)p);
}

/* The first position whose block is not before (size, p). */
static size_t cached_lower_bound(const ember_caching_allocator_t *a,
                                 size_t size, const void *p) {
  size_t lo = 0, hi = a->cached_count;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (block_before(&a->cached[mid], size, p)) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

static int cached_insert(ember_caching_allocator_t *a, void *p, size_t size) {
  if (a->cached_count == a->cached_cap) {
    size_t cap = a->cached_cap == 0 ? 16 : a->cached_cap * 2;
    block_t *grown = realloc(a->cached, cap * sizeof *grown);
    if (grown == NULL) return -1;
    a->cached = grown;
    a->cached_cap = cap;
  }
  size_t at = cached_lower_bound(a, size, p);
  memmove(&a->cached[at + 1], &a->cached[at],
          (a->cached_count - at) * sizeof *a->cached);
  a->cached[at].p = p;
  a->cached[at].size = size;
  a->cached_count++;
  return 0;
}

static void cached_remove_at(ember_caching_allocator_t *a, size_t at) {
  memmove(&a->cached[at], &a->cached[at + 1],
          (a->cached_count - at - 1) * sizeof *a->cached);
  a->cached_count--;
}

/* Takes every cached block out (to be freed by the caller, unlocked);
** returns the array (NULL if none) and its length in *count. */
static block_t *cached_detach(ember_caching_allocator_t *a, size_t *count) {
  block_t *blocks = a->cached;
  *count = a->cached_count;
  a->cached = NULL;
  a->cached_count = a->cached_cap = 0;
  a->stats.cached_bytes = 0;
  return blocks;
}

static void release_blocks(ember_caching_allocator_t *a, block_t *blocks,
                           size_t count) {
  for (size_t i = 0; i < count; i++) {
    a->raw_free(blocks[i].p, blocks[i].size, a->ctx);
  }
  free(blocks);
}

/* ---- The allocator ----------------------------------------------------------- */

ember_caching_allocator_t *ember_caching_allocator_new(ember_raw_alloc_fn raw_alloc,
                                                       ember_raw_free_fn raw_free,
                                                       void *ctx) {
  ember_caching_allocator_t *a = calloc(1, sizeof *a);
  if (a == NULL) return NULL;
  if (pthread_mutex_init(&a->lock, NULL) != 0) {
    free(a);
    return NULL;
  }
  a->raw_alloc = raw_alloc;
  a->raw_free = raw_free;
  a->ctx = ctx;
  return a;
}

void ember_caching_allocator_destroy(ember_caching_allocator_t *a) {
  if (a == NULL) return;
  ember_caching_empty(a);
  free(a->live);
  free(a->cached);
  pthread_mutex_destroy(&a->lock);
  free(a);
}

static void count_allocated(ember_caching_allocator_t *a, size_t size) {
  a->stats.allocated_bytes += size;
  if (a->stats.allocated_bytes > a->stats.peak_bytes) {
    a->stats.peak_bytes = a->stats.allocated_bytes;
  }
}

/* A cached block of `size` to reuse (now live), or NULL. Locked. */
static void *take_cached(ember_caching_allocator_t *a, size_t size) {
  size_t at = cached_lower_bound(a, size, NULL);
  if (at == a->cached_count) return NULL;
  block_t b = a->cached[at];
  if (size <= SIZE_MAX / 2 && b.size > 2 * size) {
    return NULL; /* more than twice the request: too wasteful */
  }
  if (live_insert(a, b.p, b.size) < 0) return NULL;
  cached_remove_at(a, at);
  a->stats.cached_bytes -= b.size;
  a->stats.reuses++;
  count_allocated(a, b.size);
  return b.p;
}

/* A fresh block from the raw allocator; when it fails, the cache goes back
** to the raw allocator and the request is tried once more (if that gave
** anything back). Unlocked. */
static void *raw_block(ember_caching_allocator_t *a, size_t size) {
  void *p = a->raw_alloc(size, a->ctx);
  if (p != NULL) return p;
  size_t count;
  pthread_mutex_lock(&a->lock);
  block_t *blocks = cached_detach(a, &count);
  pthread_mutex_unlock(&a->lock);
  release_blocks(a, blocks, count);
  return count > 0 ? a->raw_alloc(size, a->ctx) : NULL;
}

void *ember_caching_alloc(ember_caching_allocator_t *a, size_t nbytes) {
  size_t size = round_size(nbytes);
  if (size == 0) return NULL;
  pthread_mutex_lock(&a->lock);
  void *p = take_cached(a, size);
  pthread_mutex_unlock(&a->lock);
  if (p != NULL) return p;
  p = raw_block(a, size);
  if (p == NULL) return NULL;
  pthread_mutex_lock(&a->lock);
  int rc = live_insert(a, p, size);
  if (rc == 0) {
    a->stats.raw_allocs++;
    count_allocated(a, size);
  }
  pthread_mutex_unlock(&a->lock);
  if (rc < 0) {
    a->raw_free(p, size, a->ctx);
    return NULL;
  }
  return p;
}

void ember_caching_free(ember_caching_allocator_t *a, void *p) {
  if (p == NULL) return;
  pthread_mutex_lock(&a->lock);
  size_t size = live_remove(a, p);
  int kept = 0;
  if (size > 0) {
    a->stats.allocated_bytes -= size;
    kept = cached_insert(a, p, size) == 0;
    if (kept) a->stats.cached_bytes += size;
  }
  pthread_mutex_unlock(&a->lock);
  /* No room to remember it (out of host memory): give it back at once. */
  if (size > 0 && !kept) a->raw_free(p, size, a->ctx);
}

size_t ember_caching_block_size(ember_caching_allocator_t *a, const void *p) {
  pthread_mutex_lock(&a->lock);
  size_t size = live_size(a, p);
  pthread_mutex_unlock(&a->lock);
  return size;
}

void ember_caching_empty(ember_caching_allocator_t *a) {
  size_t count;
  pthread_mutex_lock(&a->lock);
  block_t *blocks = cached_detach(a, &count);
  pthread_mutex_unlock(&a->lock);
  release_blocks(a, blocks, count);
}

void ember_caching_stats(ember_caching_allocator_t *a,
                         ember_memory_stats_t *stats) {
  pthread_mutex_lock(&a->lock);
  *stats = a->stats;
  pthread_mutex_unlock(&a->lock);
}
