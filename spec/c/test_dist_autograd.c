/*
** Distributed autograd's C part without RPC: backward from several roots,
** RecvRpcBackward nodes and the outbox, the gradient map, and that a plain
** backward refuses a graph that crosses workers.
*/
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "autograd.h"
#include "check.h"
#include "dist_autograd.h"
#include "error.h"
#include "tensor.h"

#define CHECK_NEAR(a, b)                                                       \
  do {                                                                         \
    double check_x_ = (a), check_y_ = (b);                                     \
    if (!(fabs(check_x_ - check_y_) <= 1e-12 * (1 + fabs(check_y_)))) {        \
      fprintf(stderr, "%s:%d: check failed: %s ~ %s (%.17g vs %.17g)\n",       \
              __FILE__, __LINE__, #a, #b, check_x_, check_y_);                 \
      abort();                                                                 \
    }                                                                          \
  } while (0)

static ember_tensor_t *vector(const double *values, int64_t n, int grad) {
  ember_tensor_t *t = ember_tensor_new(&n, 1, EMBER_FLOAT64, NULL);
  CHECK(t != NULL);
  for (int64_t i = 0; i < n; i++) ember_tensor_set(t, i, values[i]);
  t->requires_grad = grad;
  return t;
}

static ember_tensor_t *mul(ember_tensor_t *a, ember_tensor_t *b) {
  ember_tensor_t *t = ember_tensor_binary(EMBER_OP_MUL, a, b);
  CHECK(t != NULL);
  return t;
}

static ember_tensor_t *sum(ember_tensor_t *a) {
  ember_tensor_t *t = ember_tensor_reduce(EMBER_REDUCE_SUM, a, EMBER_ALL_DIMS,
                                          0, NULL);
  CHECK(t != NULL);
  return t;
}

static void check_values(const ember_tensor_t *t, const double *expected,
                         int64_t n) {
  CHECK(t != NULL);
  CHECK_EQ(ember_tensor_numel(t), n);
  for (int64_t i = 0; i < n; i++) CHECK_NEAR(ember_tensor_get(t, i), expected[i]);
}

/* Roots that share a subgraph, one reached from another, and a leaf root:
** the same gradients as one backward of their sum. */
static void test_backward_many_roots(void) {
  const double vx[3] = {1, 2, 3};
  ember_tensor_t *x = vector(vx, 3, 1);
  ember_tensor_t *y = mul(x, x);            /* y = x^2 */
  ember_tensor_t *a = sum(y);               /* a = sum(x^2) */
  ember_tensor_t *yx = mul(y, x);
  ember_tensor_t *b = sum(yx);              /* b = sum(x^3) */
  ember_tensor_t *c = ember_tensor_binary_scalar(EMBER_OP_MUL, a, 5, 0, 0);
  CHECK(c != NULL);                         /* c = 5a: a is reached from c */
  ember_tensor_t *roots[4] = {a, b, c, x};
  const double ones3[3] = {1, 1, 1};
  ember_tensor_t *gx = vector(ones3, 3, 0);
  const ember_tensor_t *grads[4] = {NULL, NULL, NULL, gx};
  CHECK_EQ(ember_backward_many(roots, grads, 4, 1, NULL), 0);
  /* d/dx (a + b + 5a) + 1 = 12x + 3x^2 + 1 */
  double expected[3];
  for (int i = 0; i < 3; i++) expected[i] = 12 * vx[i] + 3 * vx[i] * vx[i] + 1;
  check_values(x->grad, expected, 3);
  CHECK(ember_grad_enabled());

  /* The same root twice counts twice. */
  ember_tensor_release(x->grad);
  x->grad = NULL;
  ember_tensor_t *twice[2] = {a, a};
  CHECK_EQ(ember_backward_many(twice, NULL, 2, 1, NULL), 0);
  for (int i = 0; i < 3; i++) expected[i] = 4 * vx[i];
  check_values(x->grad, expected, 3);

  /* A bad root names what is wrong, and nothing is left half done. */
  ember_tensor_t *bad[2] = {a, y};
  CHECK(ember_backward_many(bad, NULL, 2, 1, NULL) < 0);
  CHECK(strstr(ember_tensor_error(), "[3]") != NULL);
  check_values(x->grad, expected, 3);

  ember_tensor_release(yx);
  ember_tensor_release(gx);
  ember_tensor_release(c);
  ember_tensor_release(b);
  ember_tensor_release(a);
  ember_tensor_release(y);
  ember_tensor_release(x);
}

/* A received tensor's gradient goes to the outbox with its sender's info;
** leaves' gradients go into the map, not .grad. */
static void test_recv_node_and_map(void) {
  const double vw[2] = {3, 4}, vr[2] = {10, 20};
  ember_tensor_t *w = vector(vw, 2, 1);     /* a local parameter */
  ember_tensor_t *r = vector(vr, 2, 1);     /* as the wire delivers it */
  ember_recv_info_t info = {.worker = 2, .context_id = 77, .send_id = 5};
  CHECK_EQ(ember_dist_attach_recv(r, &info), 0);
  CHECK(r->grad_fn != NULL);
  CHECK(strcmp(r->grad_fn->kind->name, "RecvRpcBackward") == 0);
  ember_recv_info_t back;
  CHECK(ember_dist_recv_info(r->grad_fn, &back));
  CHECK_EQ(back.worker, 2);
  CHECK_EQ(back.context_id, 77);
  CHECK_EQ(back.send_id, 5);
  CHECK(!ember_dist_recv_info(NULL, &back));
  /* A second attach is refused. */
  CHECK(ember_dist_attach_recv(r, &info) < 0);

  ember_tensor_t *wr = mul(w, r), *wrr = mul(wr, r);
  ember_tensor_t *loss = sum(wrr); /* sum(w r^2) */
  ember_grad_map_t *map = ember_grad_map_new();
  ember_grad_outbox_t out = {0};
  CHECK_EQ(ember_dist_backward(map, &loss, NULL, 1, 1, &out), 0);
  CHECK(w->grad == NULL);
  CHECK_EQ(ember_grad_map_count(map), 1);
  const double dw[2] = {100, 400}, dr[2] = {60, 160};
  check_values(ember_grad_map_get(map, w), dw, 2);
  CHECK_EQ(out.count, 1);
  CHECK_EQ(out.items[0].to.worker, 2);
  CHECK_EQ(out.items[0].to.context_id, 77);
  CHECK_EQ(out.items[0].to.send_id, 5);
  check_values(out.items[0].grad, dr, 2);

  /* Again: the map adds, the outbox starts empty. */
  CHECK_EQ(ember_dist_backward(map, &loss, NULL, 1, 1, &out), 0);
  CHECK_EQ(out.count, 1);
  const double dw2[2] = {200, 800};
  check_values(ember_grad_map_get(map, w), dw2, 2);

  /* Iterating gives each entry once. */
  size_t cursor = 0, seen = 0;
  ember_tensor_t *leaf, *grad;
  while (ember_grad_map_next(map, &cursor, &leaf, &grad)) {
    CHECK(leaf == w);
    seen++;
  }
  CHECK_EQ(seen, 1);

  /* Swapped into the leaves and back. */
  ember_grad_map_swap_into_leaves(map);
  check_values(w->grad, dw2, 2);
  CHECK(ember_grad_map_get(map, w) == NULL);
  ember_grad_map_swap_into_leaves(map);
  CHECK(w->grad == NULL);
  check_values(ember_grad_map_get(map, w), dw2, 2);

  /* A plain backward cannot cross workers, and says what to use. */
  CHECK(ember_backward(loss, NULL, 1) < 0);
  CHECK(strstr(ember_tensor_error(), "dist_autograd.backward") != NULL);
  CHECK(w->grad == NULL); /* refused before anything ran */
  CHECK(strstr(ember_tensor_error(), "context 0:77") != NULL);

  ember_grad_outbox_clear(&out);
  ember_grad_map_free(map);
  ember_tensor_release(loss);
  ember_tensor_release(wrr);
  ember_tensor_release(wr);
  ember_tensor_release(r);
  ember_tensor_release(w);
}

/* Sending side: the tensors sent are the roots, with the gradients their
** receivers computed; a leaf sent goes straight into the map. */
static void test_backward_from_sends(void) {
  const double vw[2] = {1, 2}, g[2] = {0.5, -1};
  ember_tensor_t *w = vector(vw, 2, 1);
  ember_tensor_t *sent = mul(w, w); /* w^2, sent to another worker */
  ember_tensor_t *grad = vector(g, 2, 0);
  ember_tensor_t *roots[2] = {sent, w};
  const ember_tensor_t *grads[2] = {grad, grad};
  ember_grad_map_t *map = ember_grad_map_new();
  ember_grad_outbox_t out = {0};
  CHECK_EQ(ember_dist_backward(map, roots, grads, 2, 1, &out), 0);
  CHECK_EQ(out.count, 0);
  const double expected[2] = {0.5 * 2 * 1 + 0.5, -1 * 2 * 2 - 1};
  check_values(ember_grad_map_get(map, w), expected, 2);
  ember_grad_map_free(map);
  ember_tensor_release(grad);
  ember_tensor_release(sent);
  ember_tensor_release(w);
}

int main(void) {
  static const check_test_t tests[] = {
      CHECK_TEST(test_backward_many_roots),
      CHECK_TEST(test_recv_node_and_map),
      CHECK_TEST(test_backward_from_sends),
  };
  return check_run(tests, sizeof tests / sizeof tests[0]);
}
