/*
** Futures: completion, callback lists and the ready queue.
**
** A completed future whose callbacks must run is put on a thread-local FIFO of
** ready futures (an intrusive list: queueing never allocates, so it cannot
** fail). Whoever completes a future outside any callback drains that queue;
** inside a callback the future only joins the queue. This is what keeps long
** `next` chains off the C stack.
*/
#include "future.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

typedef struct {
  ember_future_cb cb;
  void *arg;
} callback_t;

struct ember_future_s {
  unsigned refs;
  unsigned char state;     /* ember_future_state_t */
  unsigned char queued;    /* on the ready queue (holds a reference) */
  unsigned char abandoned; /* released while pending; callbacks get NULL */
  unsigned char observed;
  int error_code;
  const ember_payload_type_t *type;
  void *data;
  ember_future_t *next_ready;
  /* The first callback is stored inline: most futures have exactly one. */
  callback_t first;
  callback_t *more; /* callbacks 2..count, heap-allocated */
  unsigned count;   /* callbacks added and not yet run */
  unsigned next_to_run;
  unsigned more_cap;
};

static _Thread_local struct {
  ember_future_t *head;
  ember_future_t *tail;
  int draining;
  size_t live;
} ready;

static void drop_message(void *data) { free(data); }

const ember_payload_type_t ember_message_payload = {"message", drop_message};

ember_future_t *ember_future_new(void) {
  ember_future_t *future = calloc(1, sizeof(*future));
  if (future == NULL)
    return NULL;
  future->refs = 1;
  ready.live++;
  return future;
}

void ember_future_retain(ember_future_t *future) { future->refs++; }

static void drop_payload(ember_future_t *future) {
  if (future->type != NULL && future->type->drop != NULL)
    future->type->drop(future->data);
  future->type = NULL;
  future->data = NULL;
}

static void free_future(ember_future_t *future) {
  drop_payload(future);
  free(future->more);
  ready.live--;
  free(future);
}

static callback_t *callback_at(ember_future_t *future, unsigned index) {
  return index == 0 ? &future->first : &future->more[index - 1];
}

/* Runs every callback not yet run, including ones added while running. */
static void run_callbacks(ember_future_t *future) {
  ember_future_t *passed = future->abandoned ? NULL : future;
  while (future->next_to_run < future->count) {
    callback_t callback = *callback_at(future, future->next_to_run++);
    callback.cb(passed, callback.arg);
  }
  future->count = 0;
  future->next_to_run = 0;
}

static void drain(void) {
  ember_future_t *future;
  ready.draining = 1;
  while ((future = ready.head) != NULL) {
    ready.head = future->next_ready;
    if (ready.head == NULL)
      ready.tail = NULL;
    future->next_ready = NULL;
    future->queued = 0;
    run_callbacks(future);
    if (future->abandoned)
      free_future(future);
    else
      ember_future_release(future);
  }
  ready.draining = 0;
}

/* Queues the future's callbacks to run; the queue keeps the future alive. */
static void schedule(ember_future_t *future) {
  if (future->queued || future->count == 0)
    return;
  future->queued = 1;
  if (!future->abandoned)
    future->refs++;
  if (ready.tail != NULL)
    ready.tail->next_ready = future;
  else
    ready.head = future;
  ready.tail = future;
  if (!ready.draining)
    drain();
}

void ember_future_release(ember_future_t *future) {
  if (--future->refs > 0)
    return;
  if (future->state == EMBER_FUTURE_PENDING && future->count > 0) {
    future->abandoned = 1;
    schedule(future);
    return;
  }
  free_future(future);
}

static int complete(ember_future_t *future, ember_future_state_t state,
                    int code, const ember_payload_type_t *type, void *data) {
  if (future->state != EMBER_FUTURE_PENDING)
    return EMBER_ECOMPLETED;
  future->state = (unsigned char)state;
  future->error_code = code;
  future->type = type;
  future->data = data;
  schedule(future);
  return 0;
}

int ember_future_set_result(ember_future_t *future,
                            const ember_payload_type_t *type, void *data) {
  return complete(future, EMBER_FUTURE_DONE, 0, type, data);
}

int ember_future_set_error(ember_future_t *future, int code,
                           const ember_payload_type_t *type, void *data) {
  if (code >= 0)
    code = EMBER_EFAILED;
  return complete(future, EMBER_FUTURE_FAILED, code, type, data);
}

int ember_future_fail(ember_future_t *future, int code, const char *fmt, ...) {
  va_list ap;
  char *message;
  int length, err;

  if (future->state != EMBER_FUTURE_PENDING)
    return EMBER_ECOMPLETED;
  va_start(ap, fmt);
  length = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  message = malloc((size_t)(length < 0 ? 0 : length) + 1);
  if (message == NULL)
    return ember_future_set_error(future, code, NULL, NULL);
  va_start(ap, fmt);
  vsnprintf(message, (size_t)length + 1, fmt, ap);
  va_end(ap);
  err = ember_future_set_error(future, code, &ember_message_payload, message);
  if (err != 0)
    free(message);
  return err;
}

static int grow_callbacks(ember_future_t *future) {
  unsigned cap = future->more_cap ? future->more_cap * 2 : 4;
  callback_t *more = realloc(future->more, cap * sizeof(*more));
  if (more == NULL)
    return EMBER_ENOMEM;
  future->more = more;
  future->more_cap = cap;
  return 0;
}

int ember_future_add_callback(ember_future_t *future, ember_future_cb cb,
                              void *arg) {
  if (future->count > 0 && future->count - 1 >= future->more_cap &&
      grow_callbacks(future) != 0)
    return EMBER_ENOMEM;
  callback_t *slot = callback_at(future, future->count++);
  slot->cb = cb;
  slot->arg = arg;
  future->observed = 1;
  if (future->state != EMBER_FUTURE_PENDING)
    schedule(future);
  return 0;
}

ember_future_state_t ember_future_state(const ember_future_t *future) {
  return (ember_future_state_t)future->state;
}

int ember_future_error_code(const ember_future_t *future) {
  return future->state == EMBER_FUTURE_FAILED ? future->error_code : 0;
}

int ember_future_replace_payload(ember_future_t *future,
                                 const ember_payload_type_t *type, void *data) {
  if (future->state == EMBER_FUTURE_PENDING)
    return EMBER_EINVAL;
  drop_payload(future);
  future->type = type;
  future->data = data;
  return 0;
}

void *ember_future_payload(const ember_future_t *future,
                           const ember_payload_type_t **type) {
  if (type != NULL)
    *type = future->type;
  return future->data;
}

int ember_future_observed(const ember_future_t *future) {
  return future->observed;
}

void ember_future_mark_observed(ember_future_t *future) {
  future->observed = 1;
}

unsigned ember_future_refs(const ember_future_t *future) {
  return future->refs;
}

int ember_future_begin_nested(void) {
  int saved = ready.draining;
  ready.draining = 0;
  /* What the blocked callback's caller queued may be what we wait for. */
  if (ready.head != NULL)
    drain();
  return saved;
}

void ember_future_end_nested(int saved) { ready.draining = saved; }

size_t ember_future_live_count(void) { return ready.live; }

/* --- Lists of waiters ------------------------------------------------------- */

ember_future_t *ember_waiters_add(ember_waiters_t *w, int now) {
  ember_future_t *future = ember_future_new();
  ember_future_t **grown;
  if (future == NULL)
    return NULL;
  if (now) {
    ember_future_set_result(future, NULL, NULL);
    return future;
  }
  grown = realloc(w->items, (w->count + 1) * sizeof(*grown));
  if (grown == NULL) {
    ember_future_release(future);
    return NULL;
  }
  w->items = grown;
  ember_future_retain(future);
  grown[w->count++] = future;
  return future;
}

/* Empties the list first: a completed future's callback may add waiters. */
static void waiters_finish(ember_waiters_t *w, int complete) {
  ember_future_t **items = w->items;
  size_t n = w->count;
  w->items = NULL;
  w->count = 0;
  for (size_t i = 0; i < n; i++) {
    if (complete)
      ember_future_set_result(items[i], NULL, NULL);
    ember_future_release(items[i]);
  }
  free(items);
}

void ember_waiters_complete(ember_waiters_t *w) { waiters_finish(w, 1); }

void ember_waiters_drop(ember_waiters_t *w) { waiters_finish(w, 0); }
