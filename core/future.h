/*
** Futures: a value that becomes available later.
**
** A future is pending until it completes exactly once, either done (with a
** result) or failed (with an error code and an error payload). Callbacks run in
** the order they were added, each exactly once.
**
** Callbacks never nest: when a future completes inside a callback, its own
** callbacks are queued and run right after the current one returns. A chain of
** a million futures therefore runs in constant C stack.
**
** Thread: futures are touched only on the loop thread that created them. The
** ready queue is thread-local, so each loop thread has its own.
*/
#ifndef EMBER_FUTURE_H
#define EMBER_FUTURE_H

#include <stddef.h>

typedef struct ember_future_s ember_future_t;

typedef enum {
  EMBER_FUTURE_PENDING = 0,
  EMBER_FUTURE_DONE = 1,
  EMBER_FUTURE_FAILED = 2
} ember_future_state_t;

/*
** What a result or an error carries: `data` of a described type. The type says
** how to drop it; modules compare type pointers to know how to read it.
*/
typedef struct ember_payload_type_s {
  const char *name;
  void (*drop)(void *data); /* may be NULL: nothing to free */
} ember_payload_type_t;

/* A NUL-terminated message, owned by the future (an error from C code). */
extern const ember_payload_type_t ember_message_payload;

/*
** Called exactly once per added callback: with the completed future, or with
** `future` == NULL when the future was released while still pending (so the
** callback can release `arg`). The future is valid only during the call.
*/
typedef void (*ember_future_cb)(ember_future_t *future, void *arg);

/* A new pending future with one reference, owned by the caller; NULL if out
** of memory. */
ember_future_t *ember_future_new(void);

void ember_future_retain(ember_future_t *future);

/* Drops one reference. The last one frees a completed future, or abandons a
** pending one: its callbacks are called with NULL, then it is freed. */
void ember_future_release(ember_future_t *future);

/*
** Completes the future. On success the future owns `data`. Returns
** EMBER_ECOMPLETED (and `data` stays the caller's) if it was already complete.
*/
int ember_future_set_result(ember_future_t *future,
                            const ember_payload_type_t *type, void *data);

/* Fails the future with `code` (< 0) and an error payload, as above. */
int ember_future_set_error(ember_future_t *future, int code,
                           const ember_payload_type_t *type, void *data);

/* Fails the future with `code` and a printf-style message. */
int ember_future_fail(ember_future_t *future, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/*
** Adds a callback. On a completed future it is scheduled at once (and runs
** before this returns, unless called from inside another callback).
** Returns 0 or EMBER_ENOMEM (then the callback will never be called).
*/
int ember_future_add_callback(ember_future_t *future, ember_future_cb cb,
                              void *arg);

ember_future_state_t ember_future_state(const ember_future_t *future);

/* The error code of a failed future; 0 otherwise. */
int ember_future_error_code(const ember_future_t *future);

/*
** The payload of a completed future (result or error), and its type; NULL and
** NULL while pending. Valid while the future is alive; still owned by it.
*/
void *ember_future_payload(const ember_future_t *future,
                           const ember_payload_type_t **type);

/* Swaps the payload of a completed future (the old one is dropped), keeping
** its state: a binding caches what it made of the payload. EMBER_EINVAL while
** pending (then `data` stays the caller's). */
int ember_future_replace_payload(ember_future_t *future,
                                 const ember_payload_type_t *type, void *data);

/* Whether anyone looked at the outcome (read it or added a callback). Lets a
** binding warn about errors that nobody will ever see. */
int ember_future_observed(const ember_future_t *future);
void ember_future_mark_observed(ember_future_t *future);

/* The number of references, for bindings that warn on the last release. */
unsigned ember_future_refs(const ember_future_t *future);

/*
** Nested draining: code that must block inside a callback (a loop run nested in
** a wait) brackets the blocking part so completions there run their callbacks
** at once instead of queueing behind the callback that is blocked. Beginning
** also runs the callbacks queued so far.
*/
int ember_future_begin_nested(void);
void ember_future_end_nested(int saved);

/*
** Futures that complete together when a condition comes true (a queue
** drained, every frame written): a zeroed struct is an empty list.
*/
typedef struct {
  ember_future_t **items;
  size_t count;
} ember_waiters_t;

/* A future completed at once when `now`, else kept in the list until
** ember_waiters_complete. The caller owns the reference; NULL if out of
** memory. */
ember_future_t *ember_waiters_add(ember_waiters_t *w, int now);
/* Completes every future of the list (no payload) and empties it. */
void ember_waiters_complete(ember_waiters_t *w);
/* Releases every future of the list without completing it, and empties it. */
void ember_waiters_drop(ember_waiters_t *w);

/* Live futures on this thread, for leak checks in tests. */
size_t ember_future_live_count(void);

#endif
