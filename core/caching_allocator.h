/*
** A caching allocator for device memory: freed blocks are kept, by size,
** and handed out again, so that a tensor op does not pay for a cudaMalloc
** and cudaFree (each of which synchronises the device). Generic over the
** raw allocator, so it is tested in C with malloc.
**
** Reuse is safe without events because every device has one stream: a
** block freed on the host is, in stream order, free after the last kernel
** that used it, and its next user runs after that kernel too.
**
** Sizes are rounded up: to 512 bytes below 1 MiB, to 2 MiB above. A
** request takes the smallest cached block that fits and is at most twice
** its size. When the raw allocator fails, the cache is emptied and the
** request tried once more. Thread-safe (a mutex).
*/
#ifndef EMBER_CACHING_ALLOCATOR_H
#define EMBER_CACHING_ALLOCATOR_H

#include <stddef.h>
#include <stdint.h>

#include "device.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ember_caching_allocator_s ember_caching_allocator_t;

/* raw_alloc returns NULL when out of memory; raw_free gets the size that
** was asked of raw_alloc (the rounded block size), for allocators such as
** munmap that need it; ctx is passed through. The allocator never calls
** them with its lock held. */
typedef void *(*ember_raw_alloc_fn)(size_t nbytes, void *ctx);
typedef void (*ember_raw_free_fn)(void *p, size_t nbytes, void *ctx);

ember_caching_allocator_t *ember_caching_allocator_new(ember_raw_alloc_fn alloc,
                                                       ember_raw_free_fn free,
                                                       void *ctx);
/* Frees the cached blocks; blocks still allocated are leaked (and counted
** in the stats until then). */
void ember_caching_allocator_destroy(ember_caching_allocator_t *a);

/* A block of at least nbytes (not zeroed), or NULL. */
void *ember_caching_alloc(ember_caching_allocator_t *a, size_t nbytes);
/* p came from ember_caching_alloc (NULL is ignored); kept for reuse. */
void ember_caching_free(ember_caching_allocator_t *a, void *p);
/* The size the block p was rounded to (0 if p is not allocated here). */
size_t ember_caching_block_size(ember_caching_allocator_t *a, const void *p);
/* Gives every cached block back to the raw allocator. */
void ember_caching_empty(ember_caching_allocator_t *a);
void ember_caching_stats(ember_caching_allocator_t *a,
                         ember_memory_stats_t *stats);

#ifdef __cplusplus
}
#endif

#endif
