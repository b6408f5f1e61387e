/*
** The event loop: run-until-future, timers as futures, cross-thread posts.
*/
#include "loop.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

typedef struct post_s {
  ember_loop_fn fn;
  void *arg;
  struct post_s *next;
} post_t;

struct ember_loop_s {
  uv_loop_t uv;
  int running;
  unsigned outside_work; /* work in flight on other threads */
  volatile sig_atomic_t interrupted;
  /* Functions posted from other threads, run on the loop thread. */
  uv_async_t wakeup;
  uv_mutex_t posts_lock;
  post_t *posts_head;
  post_t *posts_tail;
};

typedef struct {
  ember_handle_owner_t owner;
  uv_timer_t handle;
  ember_future_t *future;
  int fired;
} loop_timer_t;

static ember_handle_owner_t wakeup_owner = {NULL};

static void run_posts_cb(uv_async_t *handle) {
  ember_loop_t *loop = handle->loop->data;
  post_t *post;

  uv_mutex_lock(&loop->posts_lock);
  post = loop->posts_head;
  loop->posts_head = loop->posts_tail = NULL;
  uv_mutex_unlock(&loop->posts_lock);
  while (post != NULL) {
    post_t *next = post->next;
    post->fn(post->arg);
    free(post);
    post = next;
  }
}

/*
** A write to a connection the peer has just closed raises SIGPIPE, whose
** default action kills the process; the write's EPIPE is what the transport
** handles (the peer is lost, the others go on). So SIGPIPE is ignored, unless
** the program installed a handler of its own.
*/
static void ignore_broken_pipes(void) {
  struct sigaction current;
  if (sigaction(SIGPIPE, NULL, &current) == 0 &&
      current.sa_handler == SIG_DFL) {
    struct sigaction ignore;
    memset(&ignore, 0, sizeof(ignore));
    ignore.sa_handler = SIG_IGN;
    sigemptyset(&ignore.sa_mask);
    sigaction(SIGPIPE, &ignore, NULL);
  }
}

int ember_loop_new(ember_loop_t **out) {
  ember_loop_t *loop = calloc(1, sizeof(*loop));
  int err;

  *out = NULL;
  ignore_broken_pipes();
  if (loop == NULL)
    return EMBER_ENOMEM;
  if ((err = uv_loop_init(&loop->uv)) != 0)
    goto fail_loop;
  loop->uv.data = loop;
  if ((err = uv_mutex_init(&loop->posts_lock)) != 0)
    goto fail_mutex;
  if ((err = uv_async_init(&loop->uv, &loop->wakeup, run_posts_cb)) != 0)
    goto fail_async;
  loop->wakeup.data = &wakeup_owner;
  /* The wake-up handle alone must not keep the loop running. */
  uv_unref((uv_handle_t *)&loop->wakeup);
  *out = loop;
  return 0;

fail_async:
  uv_mutex_destroy(&loop->posts_lock);
fail_mutex:
  uv_loop_close(&loop->uv);
fail_loop:
  free(loop);
  return err;
}

uv_loop_t *ember_loop_uv(ember_loop_t *loop) { return &loop->uv; }

int ember_loop_running(const ember_loop_t *loop) { return loop->running; }

static void close_forgotten_cb(uv_handle_t *handle, void *arg) {
  ember_handle_owner_t *owner = handle->data;
  (void)arg;
  if (!uv_is_closing(handle))
    uv_close(handle, owner != NULL ? owner->close_cb : NULL);
}

int ember_loop_close(ember_loop_t *loop) {
  int err;

  /* Posts that never ran are dropped with the loop: run them now instead. */
  run_posts_cb(&loop->wakeup);
  uv_walk(&loop->uv, close_forgotten_cb, NULL);
  uv_run(&loop->uv, UV_RUN_DEFAULT);
  err = uv_loop_close(&loop->uv);
  if (err != 0)
    return err;
  uv_mutex_destroy(&loop->posts_lock);
  free(loop);
  return 0;
}

/*
** Runs the loop with ember's rule on top: completions inside it drain their
** callbacks at once, even when this run is nested in a callback (see
** ember_future_begin_nested). With `until` NULL it runs until idle.
*/
static int run(ember_loop_t *loop, ember_future_t *until) {
  int saved, err = 0;
  if (loop->running)
    return EMBER_EBUSY;
  saved = ember_future_begin_nested();
  loop->interrupted = 0;
  loop->running = 1;
  if (until == NULL) {
    uv_run(&loop->uv, UV_RUN_DEFAULT);
  } else {
    while (ember_future_state(until) == EMBER_FUTURE_PENDING) {
      if (!uv_run(&loop->uv, UV_RUN_ONCE) &&
          ember_future_state(until) == EMBER_FUTURE_PENDING) {
        err = EMBER_EDEADLOCK;
        break;
      }
      if (loop->interrupted) {
        err = UV_EINTR;
        break;
      }
    }
  }
  loop->running = 0;
  ember_future_end_nested(saved);
  return err;
}

int ember_loop_run_until(ember_loop_t *loop, ember_future_t *future) {
  return run(loop, future);
}

int ember_loop_run(ember_loop_t *loop) { return run(loop, NULL); }

void ember_loop_interrupt(ember_loop_t *loop) {
  loop->interrupted = 1;
  uv_async_send(&loop->wakeup);
}

void ember_loop_outside_work_begin(ember_loop_t *loop) {
  if (loop->outside_work++ == 0)
    uv_ref((uv_handle_t *)&loop->wakeup);
}

void ember_loop_outside_work_end(ember_loop_t *loop) {
  if (--loop->outside_work == 0)
    uv_unref((uv_handle_t *)&loop->wakeup);
}

static void timer_close_cb(uv_handle_t *handle) {
  loop_timer_t *timer = handle->data;
  /* A timer closed before it fired (the loop is closing) abandons its
  ** future; one that others still hold fails instead, so that its callback
  ** (timer_future_cb) runs now, while `timer` is still alive. */
  timer->fired = 1;
  if (ember_future_state(timer->future) == EMBER_FUTURE_PENDING &&
      ember_future_refs(timer->future) > 1) {
    ember_future_fail(timer->future, UV_ECANCELED,
                      "the loop closed before the timer fired");
    ember_future_mark_observed(timer->future); /* nobody is left to care */
  }
  ember_future_release(timer->future);
  free(timer);
}

static void timer_fire_cb(uv_timer_t *handle) {
  loop_timer_t *timer = handle->data;
  timer->fired = 1;
  ember_future_set_result(timer->future, NULL, NULL);
  uv_close((uv_handle_t *)handle, timer_close_cb);
}

/* Someone completed the timer's future first: that cancels the timer, so it
** no longer keeps the loop running. */
static void timer_future_cb(ember_future_t *future, void *arg) {
  loop_timer_t *timer = arg;
  if (future != NULL && !timer->fired &&
      !uv_is_closing((uv_handle_t *)&timer->handle)) {
    timer->fired = 1;
    uv_close((uv_handle_t *)&timer->handle, timer_close_cb);
  }
}

int ember_loop_timer(ember_loop_t *loop, uint64_t ms, ember_future_t **out) {
  loop_timer_t *timer = calloc(1, sizeof(*timer));
  int err;

  *out = NULL;
  if (timer == NULL || (timer->future = ember_future_new()) == NULL) {
    free(timer);
    return EMBER_ENOMEM;
  }
  timer->owner.close_cb = timer_close_cb;
  uv_timer_init(&loop->uv, &timer->handle);
  timer->handle.data = timer;
  /* Code that ran outside the loop for a while finds its clock stale: a
  ** timer started from it would fire early. */
  uv_update_time(&loop->uv);
  if ((err = uv_timer_start(&timer->handle, timer_fire_cb, ms, 0)) != 0) {
    uv_close((uv_handle_t *)&timer->handle, timer_close_cb);
    return err;
  }
  if ((err = ember_future_add_callback(timer->future, timer_future_cb,
                                       timer)) != 0) {
    uv_close((uv_handle_t *)&timer->handle, timer_close_cb);
    return err;
  }
  ember_future_retain(timer->future);
  *out = timer->future;
  return 0;
}

int ember_loop_post(ember_loop_t *loop, ember_loop_fn fn, void *arg) {
  post_t *post = malloc(sizeof(*post));
  if (post == NULL)
    return EMBER_ENOMEM;
  post->fn = fn;
  post->arg = arg;
  post->next = NULL;
  uv_mutex_lock(&loop->posts_lock);
  if (loop->posts_tail != NULL)
    loop->posts_tail->next = post;
  else
    loop->posts_head = post;
  loop->posts_tail = post;
  uv_mutex_unlock(&loop->posts_lock);
  return uv_async_send(&loop->wakeup);
}
