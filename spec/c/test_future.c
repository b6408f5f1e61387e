/*
** Futures: completion rules, callback order, the ready queue, lifetimes.
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "error.h"
#include "future.h"

static int drops;
static void count_drop(void *data) {
  free(data);
  drops++;
}
static const ember_payload_type_t counted = {"counted", count_drop};

typedef struct {
  int order[16];
  int n;
} trace_t;

typedef struct {
  trace_t *trace;
  int tag;
} tagged_t;

static void record_cb(ember_future_t *future, void *arg) {
  tagged_t *tagged = arg;
  CHECK(future != NULL);
  tagged->trace->order[tagged->trace->n++] = tagged->tag;
}

static void test_complete_once(void) {
  ember_future_t *f = ember_future_new();
  CHECK(f != NULL);
  CHECK_EQ(ember_future_state(f), EMBER_FUTURE_PENDING);
  CHECK(ember_future_payload(f, NULL) == NULL);
  CHECK_EQ(ember_future_set_result(f, &counted, malloc(4)), 0);
  CHECK_EQ(ember_future_state(f), EMBER_FUTURE_DONE);
  void *second = malloc(4);
  CHECK_EQ(ember_future_set_result(f, &counted, second), EMBER_ECOMPLETED);
  CHECK_EQ(ember_future_fail(f, EMBER_EFAILED, "no"), EMBER_ECOMPLETED);
  free(second); /* a refused payload stays the caller's */
  drops = 0;
  ember_future_release(f);
  CHECK_EQ(drops, 1);
  CHECK_EQ(ember_future_live_count(), 0);
}

static void test_fail_with_message(void) {
  const ember_payload_type_t *type;
  ember_future_t *f = ember_future_new();
  CHECK_EQ(ember_future_fail(f, EMBER_EPEERLOST, "lost %s", "worker1"), 0);
  CHECK_EQ(ember_future_state(f), EMBER_FUTURE_FAILED);
  CHECK_EQ(ember_future_error_code(f), EMBER_EPEERLOST);
  CHECK(strcmp(ember_future_payload(f, &type), "lost worker1") == 0);
  CHECK(type == &ember_message_payload);
  CHECK(strcmp(ember_err_name(EMBER_EPEERLOST), "EPEERLOST") == 0);
  CHECK(strcmp(ember_err_name(UV_ETIMEDOUT), "ETIMEDOUT") == 0);
  ember_future_release(f);
}

static void test_callbacks_in_order(void) {
  trace_t trace = {{0}, 0};
  tagged_t a = {&trace, 1}, b = {&trace, 2}, c = {&trace, 3}, d = {&trace, 4};
  ember_future_t *f = ember_future_new();
  CHECK_EQ(ember_future_add_callback(f, record_cb, &a), 0);
  CHECK_EQ(ember_future_add_callback(f, record_cb, &b), 0);
  CHECK_EQ(ember_future_add_callback(f, record_cb, &c), 0);
  CHECK_EQ(trace.n, 0);
  ember_future_set_result(f, NULL, NULL);
  CHECK_EQ(trace.n, 3);
  CHECK_EQ(trace.order[0], 1);
  CHECK_EQ(trace.order[1], 2);
  CHECK_EQ(trace.order[2], 3);
  /* Added after completion: runs right away. */
  CHECK_EQ(ember_future_add_callback(f, record_cb, &d), 0);
  CHECK_EQ(trace.n, 4);
  CHECK_EQ(trace.order[3], 4);
  ember_future_release(f);
}

/* A chain where each callback completes the next future: constant stack. */
typedef struct {
  ember_future_t **chain;
  size_t index;
  size_t length;
  size_t *ran;
} link_t;

static void link_cb(ember_future_t *future, void *arg) {
  link_t *link = arg;
  CHECK(future != NULL);
  (*link->ran)++;
  if (link->index + 1 < link->length)
    CHECK_EQ(ember_future_set_result(link->chain[link->index + 1], NULL, NULL),
             0);
}

static void test_long_chain_runs_iteratively(void) {
  const size_t length = 200000;
  ember_future_t **chain = calloc(length, sizeof(*chain));
  link_t *links = calloc(length, sizeof(*links));
  size_t ran = 0;
  for (size_t i = 0; i < length; i++) {
    chain[i] = ember_future_new();
    links[i] = (link_t){chain, i, length, &ran};
    CHECK_EQ(ember_future_add_callback(chain[i], link_cb, &links[i]), 0);
  }
  ember_future_set_result(chain[0], NULL, NULL);
  CHECK_EQ(ran, length);
  CHECK_EQ(ember_future_state(chain[length - 1]), EMBER_FUTURE_DONE);
  for (size_t i = 0; i < length; i++)
    ember_future_release(chain[i]);
  CHECK_EQ(ember_future_live_count(), 0);
  free(chain);
  free(links);
}

/* Completion inside a callback queues; it does not nest. */
static int depth, max_depth;
static void nesting_cb(ember_future_t *future, void *arg) {
  ember_future_t *next = arg;
  (void)future;
  depth++;
  if (depth > max_depth)
    max_depth = depth;
  if (next != NULL)
    ember_future_set_result(next, NULL, NULL);
  depth--;
}

static void test_no_nesting(void) {
  ember_future_t *a = ember_future_new(), *b = ember_future_new();
  ember_future_t *c = ember_future_new();
  ember_future_add_callback(a, nesting_cb, b);
  ember_future_add_callback(b, nesting_cb, c);
  ember_future_add_callback(c, nesting_cb, NULL);
  max_depth = 0;
  ember_future_set_result(a, NULL, NULL);
  CHECK_EQ(max_depth, 1);
  CHECK_EQ(ember_future_state(c), EMBER_FUTURE_DONE);
  ember_future_release(a);
  ember_future_release(b);
  ember_future_release(c);
}

static int abandoned_calls;
static void abandoned_cb(ember_future_t *future, void *arg) {
  CHECK(future == NULL);
  free(arg);
  abandoned_calls++;
}

static void test_release_pending_calls_back_with_null(void) {
  ember_future_t *f = ember_future_new();
  abandoned_calls = 0;
  ember_future_add_callback(f, abandoned_cb, malloc(8));
  ember_future_add_callback(f, abandoned_cb, malloc(8));
  ember_future_release(f);
  CHECK_EQ(abandoned_calls, 2);
  CHECK_EQ(ember_future_live_count(), 0);
}

/* A callback may hold the last reference to its own future. */
static void release_self_cb(ember_future_t *future, void *arg) {
  (void)arg;
  ember_future_release(future);
}

static void test_callback_releases_its_future(void) {
  ember_future_t *f = ember_future_new();
  ember_future_add_callback(f, release_self_cb, NULL);
  ember_future_set_result(f, &counted, malloc(4));
  CHECK_EQ(ember_future_live_count(), 0);
}

static void test_many_callbacks_grow(void) {
  trace_t trace = {{0}, 0};
  tagged_t tags[16];
  ember_future_t *f = ember_future_new();
  for (int i = 0; i < 16; i++) {
    tags[i] = (tagged_t){&trace, i};
    CHECK_EQ(ember_future_add_callback(f, record_cb, &tags[i]), 0);
  }
  ember_future_fail(f, EMBER_EFAILED, "x");
  CHECK_EQ(trace.n, 16);
  for (int i = 0; i < 16; i++)
    CHECK_EQ(trace.order[i], i);
  CHECK(ember_future_observed(f));
  ember_future_release(f);
}

CHECK_MAIN(CHECK_TEST(test_complete_once), CHECK_TEST(test_fail_with_message),
           CHECK_TEST(test_callbacks_in_order),
           CHECK_TEST(test_long_chain_runs_iteratively),
           CHECK_TEST(test_no_nesting),
           CHECK_TEST(test_release_pending_calls_back_with_null),
           CHECK_TEST(test_callback_releases_its_future),
           CHECK_TEST(test_many_callbacks_grow))
