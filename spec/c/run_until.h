/*
** Turning a loop in the C tests: for a while, or until a condition holds.
*/
#ifndef EMBER_RUN_UNTIL_H
#define EMBER_RUN_UNTIL_H

#include "check.h"
#include "future.h"
#include "loop.h"

/* Runs the loop for about `ms` milliseconds. */
static inline void run_for(ember_loop_t *loop, uint64_t ms) {
  ember_future_t *timer;
  CHECK(ember_loop_timer(loop, ms, &timer) == 0);
  ember_loop_run_until(loop, timer);
  ember_future_release(timer);
}

/* Runs the loop in 5 ms steps until `cond` holds or ~2 s pass; then checks
** `cond`. */
#define RUN_UNTIL(loop, cond)                                                  \
  do {                                                                         \
    for (int i_ = 0; i_ < 400 && !(cond); i_++)                                \
      run_for((loop), 5);                                                      \
    CHECK(cond);                                                               \
  } while (0)

#endif
