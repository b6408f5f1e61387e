/*
** The caching allocator over malloc: rounding, reuse, stats, emptying the
** cache, the retry after a failed raw allocation, threads.
*/
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "caching_allocator.h"
#include "check.h"

#define KIB ((size_t)1024)
#define MIB ((size_t)1024 * 1024)

typedef struct {
  int allocs;      /* successful raw allocations */
  int frees;       /* raw frees */
  int fail_next;   /* raw allocations left to refuse */
  size_t bytes;    /* held from the raw allocator now */
  size_t bad_size; /* raw frees whose size differed from the allocation's */
} raw_t;

/* The size is kept in a header, so raw_free can check the size it gets. */
static void *raw_alloc(size_t nbytes, void *ctx) {
  raw_t *raw = ctx;
  if (raw->fail_next > 0) {
    raw->fail_next--;
    return NULL;
  }
  size_t *p = malloc(nbytes + 16);
  if (p == NULL) return NULL;
  p[0] = nbytes;
  raw->allocs++;
  raw->bytes += nbytes;
  return (char *)p + 16;
}

static void raw_free(void *p, size_t nbytes, void *ctx) {
  raw_t *raw = ctx;
  size_t *base = (size_t *)((char *)p - 16);
  if (base[0] != nbytes) raw->bad_size++;
  raw->frees++;
  raw->bytes -= base[0];
  free(base);
}

static ember_memory_stats_t stats_of(ember_caching_allocator_t *a) {
  ember_memory_stats_t s;
  ember_caching_stats(a, &s);
  return s;
}

static void test_rounding(void) {
  raw_t raw = {0};
  ember_caching_allocator_t *a =
      ember_caching_allocator_new(raw_alloc, raw_free, &raw);
  CHECK(a != NULL);
  static const size_t cases[][2] = {
      {0, 512},          {1, 512},           {512, 512},
      {513, 1024},       {1000, 1024},       {MIB - 1, MIB},
      {MIB, MIB},        {MIB + 1, 2 * MIB}, {2 * MIB, 2 * MIB},
      {3 * MIB, 4 * MIB}, {5 * MIB + 7, 6 * MIB},
  };
  size_t n = sizeof cases / sizeof cases[0];
  void *p[sizeof cases / sizeof cases[0]];
  for (size_t i = 0; i < n; i++) {
    p[i] = ember_caching_alloc(a, cases[i][0]);
    CHECK(p[i] != NULL);
    CHECK_EQ(ember_caching_block_size(a, p[i]), cases[i][1]);
    memset(p[i], 0xab, cases[i][1]); /* the whole block is usable */
  }
  for (size_t i = 0; i < n; i++) ember_caching_free(a, p[i]);
  CHECK_EQ(raw.bad_size, 0);
  ember_caching_allocator_destroy(a);
  CHECK_EQ(raw.frees, raw.allocs);
  CHECK_EQ(raw.bytes, 0);
  CHECK_EQ(raw.bad_size, 0);
}

static void test_reuse_same_size(void) {
  raw_t raw = {0};
  ember_caching_allocator_t *a =
      ember_caching_allocator_new(raw_alloc, raw_free, &raw);
  void *p = ember_caching_alloc(a, 1000);
  CHECK(p != NULL);
  ember_caching_free(a, p);
  CHECK_EQ(ember_caching_block_size(a, p), 0); /* cached, not allocated */
  void *q = ember_caching_alloc(a, 600); /* rounds to 1024 too */
  CHECK(q == p);
  CHECK_EQ(ember_caching_block_size(a, q), 1024);
  CHECK_EQ(raw.allocs, 1);
  CHECK_EQ(stats_of(a).reuses, 1);
  CHECK_EQ(stats_of(a).raw_allocs, 1);
  ember_caching_free(a, q);
  ember_caching_allocator_destroy(a);
  CHECK_EQ(raw.frees, 1);
}

static void test_reuse_at_most_twice(void) {
  raw_t raw = {0};
  ember_caching_allocator_t *a =
      ember_caching_allocator_new(raw_alloc, raw_free, &raw);
  void *big = ember_caching_alloc(a, 4 * KIB);
  ember_caching_free(a, big);
  /* 1 KiB would waste three quarters of the 4 KiB block: a new one. */
  void *small = ember_caching_alloc(a, KIB);
  CHECK(small != big);
  CHECK_EQ(raw.allocs, 2);
  CHECK_EQ(stats_of(a).reuses, 0);
  /* 2 KiB takes it: exactly twice. */
  void *half = ember_caching_alloc(a, 2 * KIB);
  CHECK(half == big);
  CHECK_EQ(ember_caching_block_size(a, half), 4 * KIB);
  CHECK_EQ(stats_of(a).reuses, 1);
  /* A block smaller than the request is never taken. */
  ember_caching_free(a, small);
  void *more = ember_caching_alloc(a, 2 * KIB);
  CHECK(more != small);
  CHECK_EQ(raw.allocs, 3);
  ember_caching_free(a, half);
  ember_caching_free(a, more);
  ember_caching_allocator_destroy(a);
  CHECK_EQ(raw.frees, 3);
  CHECK_EQ(raw.bytes, 0);
}

static void test_smallest_fit(void) {
  raw_t raw = {0};
  ember_caching_allocator_t *a =
      ember_caching_allocator_new(raw_alloc, raw_free, &raw);
  void *b3 = ember_caching_alloc(a, 3 * KIB);
  void *b2 = ember_caching_alloc(a, 2 * KIB);
  void *b4 = ember_caching_alloc(a, 4 * KIB);
  ember_caching_free(a, b3);
  ember_caching_free(a, b4);
  ember_caching_free(a, b2);
  CHECK(ember_caching_alloc(a, 2 * KIB) == b2);
  CHECK(ember_caching_alloc(a, 2 * KIB) == b3);
  CHECK(ember_caching_alloc(a, 2 * KIB) == b4);
  CHECK_EQ(raw.allocs, 3);
  ember_caching_free(a, b2);
  ember_caching_free(a, b3);
  ember_caching_free(a, b4);
  ember_caching_allocator_destroy(a);
  CHECK_EQ(raw.bytes, 0);
}

static void test_stats(void) {
  raw_t raw = {0};
  ember_caching_allocator_t *a =
      ember_caching_allocator_new(raw_alloc, raw_free, &raw);
  ember_memory_stats_t s = stats_of(a);
  CHECK_EQ(s.allocated_bytes, 0);
  CHECK_EQ(s.cached_bytes, 0);
  CHECK_EQ(s.peak_bytes, 0);
  void *p = ember_caching_alloc(a, 100);     /* 512 */
  void *q = ember_caching_alloc(a, 3 * MIB); /* 4 MiB */
  s = stats_of(a);
  CHECK_EQ(s.allocated_bytes, 512 + 4 * MIB);
  CHECK_EQ(s.peak_bytes, 512 + 4 * MIB);
  CHECK_EQ(s.raw_allocs, 2);
  ember_caching_free(a, q);
  s = stats_of(a);
  CHECK_EQ(s.allocated_bytes, 512);
  CHECK_EQ(s.cached_bytes, 4 * MIB);
  CHECK_EQ(s.peak_bytes, 512 + 4 * MIB);
  q = ember_caching_alloc(a, 4 * MIB);
  s = stats_of(a);
  CHECK_EQ(s.allocated_bytes, 512 + 4 * MIB);
  CHECK_EQ(s.cached_bytes, 0);
  CHECK_EQ(s.reuses, 1);
  CHECK_EQ(s.raw_allocs, 2);
  ember_caching_free(a, p);
  ember_caching_free(a, q);
  s = stats_of(a);
  CHECK_EQ(s.allocated_bytes, 0);
  CHECK_EQ(s.cached_bytes, 512 + 4 * MIB);
  ember_caching_allocator_destroy(a);
  CHECK_EQ(raw.bytes, 0);
}

static void test_empty_cache(void) {
  raw_t raw = {0};
  ember_caching_allocator_t *a =
      ember_caching_allocator_new(raw_alloc, raw_free, &raw);
  void *p[5];
  for (int i = 0; i < 5; i++) p[i] = ember_caching_alloc(a, (size_t)(i + 1) * KIB);
  for (int i = 0; i < 3; i++) ember_caching_free(a, p[i]);
  CHECK_EQ(raw.frees, 0);
  ember_caching_empty(a);
  CHECK_EQ(raw.frees, 3);
  CHECK_EQ(raw.bad_size, 0);
  ember_memory_stats_t s = stats_of(a);
  CHECK_EQ(s.cached_bytes, 0);
  CHECK_EQ(s.allocated_bytes, 9 * KIB);
  /* The live blocks are untouched and still free into the cache. */
  CHECK_EQ(ember_caching_block_size(a, p[3]), 4 * KIB);
  ember_caching_free(a, p[3]);
  ember_caching_free(a, p[4]);
  CHECK_EQ(stats_of(a).cached_bytes, 9 * KIB);
  ember_caching_empty(a);
  CHECK_EQ(raw.frees, 5);
  ember_caching_empty(a); /* nothing left: a no-op */
  CHECK_EQ(raw.frees, 5);
  /* Allocating after an empty works. */
  void *again = ember_caching_alloc(a, KIB);
  CHECK(again != NULL);
  ember_caching_free(a, again);
  ember_caching_allocator_destroy(a);
  CHECK_EQ(raw.frees, raw.allocs);
  CHECK_EQ(raw.bytes, 0);
}

static void test_retry_after_failure(void) {
  raw_t raw = {0};
  ember_caching_allocator_t *a =
      ember_caching_allocator_new(raw_alloc, raw_free, &raw);
  void *small = ember_caching_alloc(a, KIB);
  ember_caching_free(a, small); /* cached, too small for what follows */
  raw.fail_next = 1;
  void *p = ember_caching_alloc(a, 8 * KIB);
  CHECK(p != NULL); /* the cache was emptied and the request tried again */
  CHECK_EQ(raw.frees, 1);
  ember_memory_stats_t s = stats_of(a);
  CHECK_EQ(s.cached_bytes, 0);
  CHECK_EQ(s.allocated_bytes, 8 * KIB);
  CHECK_EQ(s.raw_allocs, 2);
  /* A raw allocator that keeps failing: NULL, and the stats unchanged. */
  raw.fail_next = 1000;
  CHECK(ember_caching_alloc(a, 16 * KIB) == NULL);
  CHECK_EQ(stats_of(a).allocated_bytes, 8 * KIB);
  CHECK_EQ(stats_of(a).raw_allocs, 2);
  /* With nothing cached there is nothing to retry with: one attempt. */
  CHECK_EQ(raw.fail_next, 999);
  raw.fail_next = 0;
  ember_caching_free(a, p);
  ember_caching_allocator_destroy(a);
  CHECK_EQ(raw.bytes, 0);
}

static void test_null_and_foreign_pointers(void) {
  raw_t raw = {0};
  ember_caching_allocator_t *a =
      ember_caching_allocator_new(raw_alloc, raw_free, &raw);
  ember_caching_free(a, NULL);
  CHECK_EQ(ember_caching_block_size(a, NULL), 0);
  int local;
  CHECK_EQ(ember_caching_block_size(a, &local), 0);
  ember_caching_free(a, &local); /* not ours: ignored */
  ember_memory_stats_t s = stats_of(a);
  CHECK_EQ(s.cached_bytes, 0);
  CHECK_EQ(s.allocated_bytes, 0);
  ember_caching_allocator_destroy(a);
  CHECK_EQ(raw.frees, 0);
}

/* Many live blocks at once: the table grows and deletions keep every
** remaining block findable. */
static void test_many_blocks(void) {
  enum { N = 3000 };
  raw_t raw = {0};
  ember_caching_allocator_t *a =
      ember_caching_allocator_new(raw_alloc, raw_free, &raw);
  static void *p[N];
  static size_t size[N];
  uint64_t seed = 42;
  for (int i = 0; i < N; i++) {
    seed = seed * 6364136223846793005u + 1442695040888963407u;
    size[i] = (size_t)(seed >> 40) % (64 * KIB) + 1;
    p[i] = ember_caching_alloc(a, size[i]);
    CHECK(p[i] != NULL);
  }
  for (int i = 0; i < N; i += 3) ember_caching_free(a, p[i]);
  for (int i = 0; i < N; i++) {
    size_t want = i % 3 == 0 ? 0 : (size[i] + 511) / 512 * 512;
    CHECK_EQ(ember_caching_block_size(a, p[i]), want);
  }
  for (int i = 0; i < N; i++) {
    if (i % 3 != 0) ember_caching_free(a, p[i]);
  }
  ember_memory_stats_t s = stats_of(a);
  CHECK_EQ(s.allocated_bytes, 0);
  CHECK_EQ(s.cached_bytes, raw.bytes);
  ember_caching_allocator_destroy(a);
  CHECK_EQ(raw.bytes, 0);
  CHECK_EQ(raw.frees, raw.allocs);
}

/* Threads allocating and freeing at once; the raw allocator is malloc,
** which is thread-safe, and the counters are not looked at until the end. */
typedef struct {
  ember_caching_allocator_t *a;
  int seed;
} worker_t;

static void *worker(void *arg) {
  worker_t *w = arg;
  void *held[8] = {0};
  for (int i = 0; i < 2000; i++) {
    int slot = (i * 7 + w->seed) % 8;
    ember_caching_free(w->a, held[slot]);
    size_t n = (size_t)((i * 131 + w->seed * 17) % 40 + 1) * 512;
    held[slot] = ember_caching_alloc(w->a, n);
    if (held[slot] == NULL) return (void *)1;
    memset(held[slot], w->seed, n);
    size_t block = ember_caching_block_size(w->a, held[slot]);
    if (block < n || block > 2 * n) return (void *)1;
  }
  for (int i = 0; i < 8; i++) ember_caching_free(w->a, held[i]);
  return NULL;
}

static void *thread_raw_alloc(size_t nbytes, void *ctx) {
  (void)ctx;
  return malloc(nbytes);
}

static void thread_raw_free(void *p, size_t nbytes, void *ctx) {
  (void)nbytes;
  (void)ctx;
  free(p);
}

static void test_threads(void) {
  ember_caching_allocator_t *a =
      ember_caching_allocator_new(thread_raw_alloc, thread_raw_free, NULL);
  pthread_t threads[4];
  worker_t workers[4];
  for (int i = 0; i < 4; i++) {
    workers[i].a = a;
    workers[i].seed = i + 1;
    CHECK_EQ(pthread_create(&threads[i], NULL, worker, &workers[i]), 0);
  }
  for (int i = 0; i < 4; i++) {
    void *result;
    CHECK_EQ(pthread_join(threads[i], &result), 0);
    CHECK(result == NULL);
  }
  ember_memory_stats_t s = stats_of(a);
  CHECK_EQ(s.allocated_bytes, 0);
  CHECK(s.reuses > 0);
  ember_caching_allocator_destroy(a);
}

CHECK_MAIN(CHECK_TEST(test_rounding), CHECK_TEST(test_reuse_same_size),
           CHECK_TEST(test_reuse_at_most_twice), CHECK_TEST(test_smallest_fit),
           CHECK_TEST(test_stats), CHECK_TEST(test_empty_cache),
           CHECK_TEST(test_retry_after_failure),
           CHECK_TEST(test_null_and_foreign_pointers),
           CHECK_TEST(test_many_blocks), CHECK_TEST(test_threads))
