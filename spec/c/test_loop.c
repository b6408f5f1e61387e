/*
** The loop: timers as futures, run-until, deadlock detection, posts from
** other threads, and closing with handles still open.
*/
#include <stdlib.h>

#include "check.h"
#include "error.h"
#include "loop.h"

static void test_timer_completes_future(void) {
  ember_loop_t *loop;
  ember_future_t *timer;
  CHECK_EQ(ember_loop_new(&loop), 0);
  uint64_t start = uv_now(ember_loop_uv(loop));
  CHECK_EQ(ember_loop_timer(loop, 20, &timer), 0);
  CHECK_EQ(ember_future_state(timer), EMBER_FUTURE_PENDING);
  CHECK_EQ(ember_loop_run_until(loop, timer), 0);
  CHECK_EQ(ember_future_state(timer), EMBER_FUTURE_DONE);
  uv_update_time(ember_loop_uv(loop));
  CHECK(uv_now(ember_loop_uv(loop)) - start >= 20);
  ember_future_release(timer);
  CHECK_EQ(ember_loop_close(loop), 0);
  CHECK_EQ(ember_future_live_count(), 0);
}

static void test_run_until_reports_deadlock(void) {
  ember_loop_t *loop;
  ember_future_t *never = ember_future_new();
  CHECK_EQ(ember_loop_new(&loop), 0);
  CHECK_EQ(ember_loop_run_until(loop, never), EMBER_EDEADLOCK);
  ember_future_release(never);
  CHECK_EQ(ember_loop_close(loop), 0);
}

static void chain_cb(ember_future_t *future, void *arg) {
  (void)future;
  ember_future_set_result(arg, NULL, NULL);
}

/* Timers fire in order of deadline; a callback chain from one completes. */
static void test_timers_in_deadline_order(void) {
  ember_loop_t *loop;
  ember_future_t *slow, *fast, *after_fast = ember_future_new();
  CHECK_EQ(ember_loop_new(&loop), 0);
  CHECK_EQ(ember_loop_timer(loop, 30, &slow), 0);
  CHECK_EQ(ember_loop_timer(loop, 1, &fast), 0);
  ember_future_add_callback(fast, chain_cb, after_fast);
  CHECK_EQ(ember_loop_run_until(loop, after_fast), 0);
  CHECK_EQ(ember_future_state(slow), EMBER_FUTURE_PENDING);
  CHECK_EQ(ember_loop_run(loop), 0);
  CHECK_EQ(ember_future_state(slow), EMBER_FUTURE_DONE);
  ember_future_release(slow);
  ember_future_release(fast);
  ember_future_release(after_fast);
  CHECK_EQ(ember_loop_close(loop), 0);
}

static int abandoned;
static void abandoned_cb(ember_future_t *future, void *arg) {
  (void)arg;
  if (future == NULL)
    abandoned++;
}

/* Closing the loop with a timer pending closes it and abandons its future. */
static void test_close_with_pending_timer(void) {
  ember_loop_t *loop;
  ember_future_t *timer;
  CHECK_EQ(ember_loop_new(&loop), 0);
  CHECK_EQ(ember_loop_timer(loop, 60000, &timer), 0);
  ember_future_add_callback(timer, abandoned_cb, NULL);
  ember_future_release(timer);
  abandoned = 0;
  CHECK_EQ(ember_loop_close(loop), 0);
  CHECK_EQ(abandoned, 1);
  CHECK_EQ(ember_future_live_count(), 0);
}

typedef struct {
  ember_loop_t *loop;
  ember_future_t *done;
} poster_t;

static void complete_on_loop(void *arg) {
  poster_t *poster = arg;
  ember_future_set_result(poster->done, NULL, NULL);
  ember_loop_outside_work_end(poster->loop);
}

static void post_from_thread(void *arg) {
  poster_t *poster = arg;
  CHECK_EQ(ember_loop_post(poster->loop, complete_on_loop, poster), 0);
}

static void test_post_from_another_thread(void) {
  poster_t poster;
  uv_thread_t thread;
  CHECK_EQ(ember_loop_new(&poster.loop), 0);
  poster.done = ember_future_new();
  /* Nothing else is on the loop: only the outside work keeps it alive. */
  ember_loop_outside_work_begin(poster.loop);
  CHECK_EQ(uv_thread_create(&thread, post_from_thread, &poster), 0);
  CHECK_EQ(ember_loop_run_until(poster.loop, poster.done), 0);
  CHECK_EQ(uv_thread_join(&thread), 0);
  /* Once it is over, an unfinishable wait is a deadlock again. */
  ember_future_t *never = ember_future_new();
  CHECK_EQ(ember_loop_run_until(poster.loop, never), EMBER_EDEADLOCK);
  ember_future_release(never);
  ember_future_release(poster.done);
  CHECK_EQ(ember_loop_close(poster.loop), 0);
}

/* A callback that blocks on work queued behind it still sees it finish. */
typedef struct {
  ember_loop_t *loop;
  int result;
} nested_t;

static void nested_wait_cb(ember_future_t *future, void *arg) {
  nested_t *nested = arg;
  ember_future_t *b = ember_future_new(), *c = ember_future_new();
  (void)future;
  ember_future_add_callback(b, chain_cb, c);
  ember_future_set_result(b, NULL, NULL); /* queued: we are in a callback */
  CHECK_EQ(ember_future_state(c), EMBER_FUTURE_PENDING);
  nested->result = ember_loop_run_until(nested->loop, c);
  CHECK_EQ(ember_future_state(c), EMBER_FUTURE_DONE);
  ember_future_release(b);
  ember_future_release(c);
}

static void test_nested_run_drains_queued_callbacks(void) {
  nested_t nested = {NULL, -1};
  ember_future_t *a = ember_future_new();
  CHECK_EQ(ember_loop_new(&nested.loop), 0);
  ember_future_add_callback(a, nested_wait_cb, &nested);
  ember_future_set_result(a, NULL, NULL);
  CHECK_EQ(nested.result, 0);
  ember_future_release(a);
  CHECK_EQ(ember_loop_close(nested.loop), 0);
}

/* A timer started after a long time outside the loop still waits its time. */
static void test_timer_after_idle_waits(void) {
  ember_loop_t *loop;
  ember_future_t *timer;
  uint64_t started;
  CHECK(ember_loop_new(&loop) == 0);
  uv_run(ember_loop_uv(loop), UV_RUN_NOWAIT); /* the clock is read now */
  uv_sleep(300);                             /* ... and goes stale */
  started = uv_hrtime();
  CHECK(ember_loop_timer(loop, 100, &timer) == 0);
  CHECK(ember_loop_run_until(loop, timer) == 0);
  CHECK((uv_hrtime() - started) / 1000000 >= 90);
  ember_future_release(timer);
  CHECK(ember_loop_close(loop) == 0);
}

/* Completing a timer's future early cancels the timer. */
static void test_timer_cancelled_by_completion(void) {
  ember_loop_t *loop;
  ember_future_t *timer;
  uint64_t started = uv_hrtime();
  CHECK(ember_loop_new(&loop) == 0);
  CHECK(ember_loop_timer(loop, 5000, &timer) == 0);
  CHECK(ember_future_set_result(timer, NULL, NULL) == 0);
  CHECK(ember_loop_run(loop) == 0); /* nothing keeps it running now */
  CHECK((uv_hrtime() - started) / 1000000 < 1000);
  ember_future_release(timer);
  CHECK(ember_loop_close(loop) == 0);
}

CHECK_MAIN(CHECK_TEST(test_timer_completes_future),
           CHECK_TEST(test_timer_after_idle_waits),
           CHECK_TEST(test_timer_cancelled_by_completion),
           CHECK_TEST(test_run_until_reports_deadlock),
           CHECK_TEST(test_timers_in_deadline_order),
           CHECK_TEST(test_close_with_pending_timer),
           CHECK_TEST(test_post_from_another_thread),
           CHECK_TEST(test_nested_run_drains_queued_callbacks))
