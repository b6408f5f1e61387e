/*
** The process's event loop: a libuv loop plus what ember needs around it.
**
** Thread: everything here runs on the loop thread, except ember_loop_post,
** which any thread may call to run a function on the loop thread.
*/
#ifndef EMBER_LOOP_H
#define EMBER_LOOP_H

#include <stdint.h>
#include <uv.h>

#include "future.h"

typedef struct ember_loop_s ember_loop_t;

/*
** Every handle opened on an ember loop has `data` pointing at one of these, so
** that closing the loop can close a forgotten handle with its owner's close
** callback (which frees the owner).
*/
typedef struct {
  uv_close_cb close_cb;
} ember_handle_owner_t;

/* A new loop, owned by the caller (free it with ember_loop_close). */
int ember_loop_new(ember_loop_t **out);

/*
** Closes every handle still open, runs the loop until their close callbacks
** have run and frees the loop. Returns 0, or UV_EBUSY if something kept the
** libuv loop from closing (a bug: a handle leaked by its owner).
*/
int ember_loop_close(ember_loop_t *loop);

uv_loop_t *ember_loop_uv(ember_loop_t *loop);

/* Non-zero while ember_loop_run or ember_loop_run_until is on the stack. */
int ember_loop_running(const ember_loop_t *loop);

/*
** Runs the loop until `future` completes. Returns 0 then; EMBER_EDEADLOCK if
** the loop ran out of work first; UV_EINTR if ember_loop_interrupt was called;
** EMBER_EBUSY if the loop is already running (libuv's loop is not reentrant).
*/
int ember_loop_run_until(ember_loop_t *loop, ember_future_t *future);

/*
** Makes a running ember_loop_run_until return UV_EINTR soon. Safe to call from
** a signal handler (it only sets a flag and wakes the loop).
*/
void ember_loop_interrupt(ember_loop_t *loop);

/* Runs the loop until it has no active handles or requests left. */
int ember_loop_run(ember_loop_t *loop);

/*
** A future that completes (with no payload) after `ms` milliseconds. The
** caller owns the returned reference. The pending timer keeps the loop alive.
** Completing the future early (set_result) cancels the timer.
*/
int ember_loop_timer(ember_loop_t *loop, uint64_t ms, ember_future_t **out);

/*
** Work handed to another thread (a CUDA stream, a helper thread) that will
** come back through ember_loop_post: between begin and end the loop stays
** alive, so a wait on its result is not taken for a deadlock. Loop thread only.
*/
void ember_loop_outside_work_begin(ember_loop_t *loop);
void ember_loop_outside_work_end(ember_loop_t *loop);

/*
** Runs fn(arg) on the loop thread soon. Safe from any thread; the call wakes
** the loop (uv_async). Returns 0 or EMBER_ENOMEM.
*/
typedef void (*ember_loop_fn)(void *arg);
int ember_loop_post(ember_loop_t *loop, ember_loop_fn fn, void *arg);

#endif
