/*
** What crosses threads, under load: many threads posting completions to one
** loop while it runs, tensor storage references dropped on other threads, and
** the large-block cache used from several threads at once. The ThreadSanitizer
** build (EMBER_SANITIZE=thread) runs this to find races; every build checks
** that nothing is lost.
*/
#include <stdint.h>
#include <string.h>
#include <uv.h>

#include "check.h"
#include "future.h"
#include "loop.h"
#include "tensor.h"

#define POSTERS 4
#define POSTS_EACH 2000

typedef struct {
  ember_loop_t *loop;
  ember_future_t *done;
  int completed; /* loop thread only */
  int expected;
} tally_t;

typedef struct {
  tally_t *tally;
  int posted;
} poster_t;

static void count_on_loop(void *arg) {
  tally_t *tally = arg;
  if (++tally->completed == tally->expected)
    ember_future_set_result(tally->done, NULL, NULL);
  ember_loop_outside_work_end(tally->loop);
}

static void post_many(void *arg) {
  poster_t *poster = arg;
  for (int i = 0; i < POSTS_EACH; i++)
    if (ember_loop_post(poster->tally->loop, count_on_loop, poster->tally) == 0)
      poster->posted++;
}

/* Every post from every thread runs exactly once on the loop thread. */
static void test_posts_from_many_threads(void) {
  tally_t tally = {0};
  poster_t posters[POSTERS];
  uv_thread_t threads[POSTERS];
  CHECK_EQ(ember_loop_new(&tally.loop), 0);
  tally.done = ember_future_new();
  tally.expected = POSTERS * POSTS_EACH;
  for (int i = 0; i < tally.expected; i++)
    ember_loop_outside_work_begin(tally.loop);
  for (int i = 0; i < POSTERS; i++) {
    posters[i] = (poster_t){&tally, 0};
    CHECK_EQ(uv_thread_create(&threads[i], post_many, &posters[i]), 0);
  }
  CHECK_EQ(ember_loop_run_until(tally.loop, tally.done), 0);
  for (int i = 0; i < POSTERS; i++) {
    CHECK_EQ(uv_thread_join(&threads[i]), 0);
    CHECK_EQ(posters[i].posted, POSTS_EACH);
  }
  CHECK_EQ(tally.completed, tally.expected);
  ember_future_release(tally.done);
  CHECK_EQ(ember_loop_close(tally.loop), 0);
}

#define HOLDERS 4

typedef struct {
  ember_tensor_t **tensors;
  int count;
  double sum;
} holder_t;

/* Reads this thread's views, then drops them (and their storage references). */
static void read_and_release(void *arg) {
  holder_t *holder = arg;
  for (int i = 0; i < holder->count; i++) {
    const float *data = holder->tensors[i]->storage->data;
    holder->sum += data[0];
    ember_tensor_release(holder->tensors[i]);
  }
}

/* A tensor object belongs to one thread, its storage does not: views made on
** one thread and dropped on others, in any order, free each storage once
** (the ASan and TSan builds check the rest). */
static void test_references_dropped_on_other_threads(void) {
  enum { TENSORS = 256 };
  ember_tensor_t *tensors[TENSORS];
  ember_tensor_t *views[HOLDERS][TENSORS];
  holder_t holders[HOLDERS];
  uv_thread_t threads[HOLDERS];
  int64_t shape[1] = {16};
  for (int i = 0; i < TENSORS; i++) {
    CHECK((tensors[i] = ember_tensor_empty(shape, 1, EMBER_FLOAT32)) != NULL);
    ((float *)tensors[i]->storage->data)[0] = 1.0f;
    for (int h = 0; h < HOLDERS; h++)
      CHECK((views[h][i] = ember_tensor_view_of(tensors[i], shape,
                                                tensors[i]->strides, 1, 0)) !=
            NULL);
  }
  for (int h = 0; h < HOLDERS; h++) {
    holders[h] = (holder_t){views[h], TENSORS, 0.0};
    CHECK_EQ(uv_thread_create(&threads[h], read_and_release, &holders[h]), 0);
  }
  for (int i = 0; i < TENSORS; i++)
    ember_tensor_release(tensors[i]);
  for (int h = 0; h < HOLDERS; h++) {
    CHECK_EQ(uv_thread_join(&threads[h]), 0);
    CHECK_EQ((long long)holders[h].sum, TENSORS);
  }
}

/* Large tensors come from a block cache shared by all threads. */
static void churn_large_blocks(void *arg) {
  int *ok = arg;
  int64_t shape[1] = {(int64_t)(3 << 20)}; /* 12 MiB: above the cache floor */
  for (int i = 0; i < 20; i++) {
    ember_tensor_t *t = ember_tensor_empty(shape, 1, EMBER_FLOAT32);
    if (t == NULL)
      return;
    memset(t->storage->data, i, 64);
    ember_tensor_release(t);
  }
  *ok = 1;
}

static void test_block_cache_from_threads(void) {
  uv_thread_t threads[HOLDERS];
  int ok[HOLDERS] = {0};
  for (int h = 0; h < HOLDERS; h++)
    CHECK_EQ(uv_thread_create(&threads[h], churn_large_blocks, &ok[h]), 0);
  for (int h = 0; h < HOLDERS; h++) {
    CHECK_EQ(uv_thread_join(&threads[h]), 0);
    CHECK_EQ(ok[h], 1);
  }
}

CHECK_MAIN(CHECK_TEST(test_posts_from_many_threads),
           CHECK_TEST(test_references_dropped_on_other_threads),
           CHECK_TEST(test_block_cache_from_threads))
